"""Shared pieces of op declarations: broadcasting, dtype rules, axis normalisation."""
from __future__ import annotations

import inspect

import numpy as np

from graphc.ir import Node, OpDef, Shape, ShapeError, format_shape, register


_BROADCASTS: dict[tuple, Shape] = {}    # shapes -> their broadcast (a graph asks few pairs)


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting, where None or a name stands for a batch dim of unknown size."""
    if shapes and all(s == shapes[0] for s in shapes):   # the common case: nothing to do
        return tuple(shapes[0])
    try:
        out = _BROADCASTS.get(shapes)
    except TypeError:                   # a shape given as a list
        return _broadcast(shapes)
    if out is None:
        out = _broadcast(shapes)
        if len(_BROADCASTS) > 4096:
            _BROADCASTS.clear()
        _BROADCASTS[shapes] = out
    return out


def _broadcast(shapes: tuple) -> Shape:
    ndim = max(len(s) for s in shapes)
    out = []
    for dims in zip(*[(1,) * (ndim - len(s)) + tuple(s) for s in shapes]):
        if all(d == dims[0] for d in dims):
            out.append(dims[0])
            continue
        sized = {d for d in dims if isinstance(d, int) and d != 1}
        free = {d for d in dims if not isinstance(d, int)}
        if len(sized) > 1:
            raise ShapeError("shapes " + " and ".join(format_shape(s) for s in shapes)
                             + " do not broadcast")
        if sized:
            out.append(sized.pop())
        elif free:
            out.append(free.pop() if len(free) == 1 else None)
        else:
            out.append(1)
    return tuple(out)


def promote(*nodes: Node) -> np.dtype:
    return np.result_type(*[n.dtype for n in nodes])


def need_float(*nodes: Node) -> np.dtype:
    dtype = promote(*nodes)
    if dtype.kind != "f":
        raise ShapeError(f"needs floating-point inputs, got {dtype.name} "
                         "(use gc.cast(x, 'float32'))")
    return dtype


def a_dtype(dtype) -> np.dtype:
    """A dtype attribute (cast, one_hot) as NumPy's dtype: bool, integer or float."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ShapeError(f"unknown dtype {str(dtype)[:40]}") from None
    if dt.kind not in "biuf":
        raise ShapeError(f"dtype must be a bool, integer or float type, got {dt.name}")
    return dt


def keep_flag(keepdims) -> bool:
    """keepdims as a bool: `x.sum(0, 1)` (meant as axes 0 and 1) kept axis 0 silently as
    keepdims=1, and keepdims="no" was True."""
    if isinstance(keepdims, (bool, np.bool_)):
        return bool(keepdims)
    raise ShapeError(f"keepdims must be True or False, got {keepdims!r} (several axes are "
                     f"one tuple: x.sum((0, 1)))")


def norm_axes(axis, ndim: int) -> tuple[int, ...]:
    """axis=None|int|tuple -> sorted tuple of non-negative axes, checked against ndim."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if not isinstance(axes, (tuple, list)) or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        raise ShapeError(f"axis must be None, an int or a tuple of ints, got {str(axis)[:40]}")
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"axis {axis} repeats an axis")
    return tuple(sorted(out))


def elementwise(name, kernel, vjp=None, sym=None, dtype_rule=promote, **facts) -> OpDef:
    """Declare a broadcasting elementwise op: shape is the broadcast of the inputs' shapes;
    `facts` are further OpDef fields (positive=True, ...)."""
    arity = getattr(kernel, "nin", None) or len(inspect.signature(kernel).parameters)

    dtypes: dict[tuple, np.dtype] = {}   # input dtypes -> result (dtype rules read no more)

    def infer(*xs, **attrs):
        if len(xs) != arity:
            raise ShapeError(f"takes {arity} input(s), got {len(xs)}")
        key = tuple([x.dtype for x in xs])
        dtype = dtypes.get(key)
        if dtype is None:
            dtype = dtype_rule(*xs)            # checks the inputs; a ufunc's own loop
            if isinstance(kernel, np.ufunc):   # then says the result (bool ** bool, bool
                try:                           # << bool: int8)
                    dtype = kernel.resolve_dtypes(key + (None,))[-1]
                except TypeError as e:
                    raise ShapeError(str(e)) from None
            dtypes[key] = dtype
        return broadcast_shapes(*[x.shape for x in xs]), dtype
    return register(OpDef(name, infer, kernel, vjp, sym, elementwise=True, **facts))
