"""Data movement without arithmetic: reshape, broadcast_to, transpose, concat, slice, one_hot."""
from __future__ import annotations

import builtins
import math

import numpy as np
import sympy as sp

from graphc.ir import GraphcError, OpDef, ShapeError, apply, as_node, format_shape, register, \
    user_line
from graphc.ops.common import a_dtype, broadcast_shapes, norm_axes, promote

__all__ = ["reshape", "broadcast_to", "transpose", "concat", "slice", "one_hot"]


def same_sym(x, *rest, **attrs):
    """Moving the elements of a scalar formula leaves it as it is; a matrix has no form here."""
    return None if isinstance(x, sp.MatrixExpr) else x


# reshape ------------------------------------------------------------------------------

def runtime_shape(like_shape, keepdims_of):
    """A target shape taken from `like` at run time, with reduced axes set to 1."""
    return tuple(1 if i in keepdims_of else d for i, d in enumerate(like_shape))


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def an_int(v, what: str) -> int:
    """An attribute that must be an int (bools, floats and strings are refused)."""
    if not is_int(v):
        raise ShapeError(f"{what} must be an int, got {str(v)[:40]}")
    return int(v)


def check_size(shape, dtype) -> None:
    """A shape with more bytes than NumPy can index is refused when the node is built."""
    if math.prod(d for d in shape if isinstance(d, int)) * np.dtype(dtype).itemsize > 1 << 62:
        raise ShapeError(f"shape {format_shape(shape)} holds more than 2**62 bytes")


def target_dims(shape) -> tuple[int, ...]:
    """The user's target shape as ints; None is read as -1 (the one inferred dim)."""
    if not isinstance(shape, (tuple, list)) or not all(d is None or is_int(d) for d in shape):
        raise ShapeError(f"target shape {str(shape)[:80]} must be a tuple of ints")
    dims = tuple(-1 if d is None else int(d) for d in shape)
    if any(d < -1 for d in dims):
        raise ShapeError(f"target shape {dims} has a negative dimension other than -1")
    if dims.count(-1) > 1:
        raise ShapeError(f"target shape {dims} has more than one -1")
    return dims


def like_target(x, like, shape, keepdims_of):
    """reshape(x, like): like's shape with the axes in keepdims_of set to 1."""
    keep = () if keepdims_of is None else keepdims_of
    if shape is not None or not isinstance(keep, (tuple, list)) \
            or not all(is_int(a) and 0 <= a < like.ndim for a in keep):
        raise ShapeError(f"reshape to a node takes keepdims_of (axes of {like.ndim}) and no "
                         f"shape, got shape={str(shape)[:40]} keepdims_of={str(keep)[:40]}")
    target = runtime_shape(like.shape, tuple(int(a) for a in keep))
    if all(isinstance(d, int) for d in x.shape + target) \
            and math.prod(x.shape) != math.prod(target):
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} into {format_shape(target)}")
    return target, x.dtype, {} if keepdims_of is None else {"keepdims_of": keepdims_of}


def reshape_infer(x, like=None, *, shape=None, keepdims_of=None):
    if like is not None:     # shape of `like` (with reduced axes kept as 1) at run time
        return like_target(x, like, shape, keepdims_of)
    if keepdims_of is not None:
        raise ShapeError("keepdims_of needs a node to take the shape from")
    shape = target_dims(shape)
    if any(not isinstance(d, int) for d in x.shape):
        known = math.prod(d for d in x.shape if isinstance(d, int))
        if -1 not in shape and known and math.prod(shape) % known:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} (a multiple of {known} "
                             f"elements) into {format_shape(shape)}")
        unknown = [d for d in x.shape if not isinstance(d, int)]
        # the -1 is x's one unknown dim when the known sizes match: it keeps its name
        same = len(unknown) == 1 and known == math.prod(d for d in shape if d != -1)
        free = unknown[0] if same else None
        return tuple(free if d == -1 else d for d in shape), x.dtype, {"shape": shape}
    size = math.prod(x.shape)           # Python ints: no int64 overflow
    rest = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if rest == 0 or size % rest:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} ({size} elements) "
                             f"into {format_shape(shape)}")
        shape = tuple(size // rest if d == -1 else d for d in shape)
    elif rest != size:
        raise ShapeError(f"cannot reshape {format_shape(x.shape)} ({size} elements) "
                         f"into {format_shape(shape)}")
    return shape, x.dtype, {"shape": shape}


def reshape_kernel(x, like=None, *, shape=None, keepdims_of=None):
    if like is not None:
        shape = runtime_shape(like.shape, keepdims_of or ())
    return np.reshape(x, shape)


register(OpDef(
    "reshape", reshape_infer, reshape_kernel,
    lambda g, out, x, like=None, **attrs: (apply("reshape", g, x), None), same_sym,
    glue=True, shape_only=(1,)))


# broadcast_to -------------------------------------------------------------------------

def broadcast_infer(x, like=None, *, shape=None):
    if like is not None and shape is not None:
        raise ShapeError("broadcast_to a node's shape takes no shape attribute")
    target = like.shape if like is not None else shape
    if like is None and not (isinstance(target, (tuple, list))
                             and all(is_int(d) and d >= 0 for d in target)):
        raise ShapeError(f"target shape {str(target)[:80]} must be a tuple of ints >= 0; for a "
                         "size known only at run time pass a node of that shape: "
                         "broadcast_to(x, like)")
    target = tuple(target)
    check_size(target, x.dtype)
    try:
        fits = len(target) >= x.ndim and broadcast_shapes(x.shape, target) == tuple(target)
    except ShapeError:
        fits = False
    if not fits:
        raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(target)}")
    return tuple(target), x.dtype


def broadcast_kernel(x, like=None, *, shape=None):
    return np.broadcast_to(x, like.shape if like is not None else shape)


register(OpDef(
    "broadcast_to", broadcast_infer, broadcast_kernel,
    lambda g, out, x, like=None, **attrs: (g, None),    # autodiff sums g back to x's shape
    same_sym, glue=True, shape_only=(1,)))


# transpose ----------------------------------------------------------------------------

def transpose_infer(x, *, axes=None):
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    given = tuple(an_int(a, "axes") for a in axes) if isinstance(axes, (tuple, list)) \
        else (an_int(axes, "axes"),)
    axes = tuple(a % x.ndim if -x.ndim <= a < x.ndim else -1 for a in given)
    if sorted(axes) != list(range(x.ndim)):
        raise ShapeError(f"axes {given} are not a permutation of the {x.ndim} axes")
    return tuple(x.shape[a] for a in axes), x.dtype, {"axes": axes}


register(OpDef(
    "transpose", transpose_infer, lambda x, *, axes: np.transpose(x, axes),
    lambda g, out, x, *, axes: (apply("transpose", g, axes=tuple(np.argsort(axes).tolist())),),
    lambda x, *, axes: x.T if isinstance(x, sp.MatrixExpr) else x))


# concat and the slices its gradient is made of ----------------------------------------

def concat_infer(*xs, axis=0):
    if not xs:
        raise ShapeError("needs at least one input")
    ndim = xs[0].ndim
    if ndim == 0 or any(x.ndim != ndim for x in xs):
        raise ShapeError(f"inputs must have the same rank >= 1, got ranks "
                         f"{[x.ndim for x in xs]}")
    (axis,) = norm_axes(an_int(axis, "axis"), ndim)
    shape = []
    for i, dims in enumerate(zip(*[x.shape for x in xs])):
        sized = [d for d in dims if isinstance(d, int)]
        if i == axis:
            shape.append(sum(sized) if len(sized) == len(dims) else None)
        elif len(set(sized)) > 1:
            raise ShapeError(f"dimension {i} differs between inputs: {sized}")
        else:
            shape.append(sized[0] if sized else dims[0])
    return tuple(shape), promote(*xs), {"axis": axis}


def concat_bounds(sizes) -> list[tuple[int, int | None]]:
    """(start, stop) of each part along the axis; at most one size may be unknown (None)."""
    unknown = [i for i, s in enumerate(sizes) if not isinstance(s, int)]
    if len(unknown) > 1:
        raise GraphcError("concat: the gradient needs the sizes along the axis; at most one "
                          f"input may have an unknown size, got sizes {sizes}")
    cut = unknown[0] if unknown else len(sizes)
    bounds, pos = [], 0
    for s in sizes[:cut]:                   # before the unknown part: counted from the start
        bounds.append((pos, pos + s))
        pos += s
    tail = [(-sum(sizes[i:]), -sum(sizes[i + 1:]) or None)
            for i in range(cut + 1, len(sizes))]     # after it: counted from the end
    if unknown:
        bounds.append((pos, tail[0][0] if tail else None))
    return bounds + tail


def concat_vjp(g, out, *xs, axis):
    sizes = [x.shape[axis] for x in xs]
    if sum(not isinstance(s, int) for s in sizes) > 1:      # bounds known only at run time
        return tuple(apply("concat_part", g, *xs, axis=axis, index=i) for i in range(len(xs)))
    bounds = concat_bounds(sizes)
    return tuple(apply("slice", g, axis=axis, start=a, stop=b) for a, b in bounds)


register(OpDef("concat", concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis),
               concat_vjp))


# concat_part(g, *xs): the part of g where xs[index] lies in concat(xs), found at run time
def concat_part_infer(g, *xs, axis, index):
    index, axis = an_int(index, "index"), an_int(axis, "axis")
    if not 0 <= index < len(xs):
        raise ShapeError(f"index {index} is out of range for {len(xs)} parts")
    (axis,) = norm_axes(axis, g.ndim)
    return xs[index].shape, g.dtype, {"axis": axis, "index": index}


def concat_part_kernel(g, *xs, axis, index):
    start = sum(x.shape[axis] for x in xs[:index])
    return g[slice_index(axis, start, start + xs[index].shape[axis])]


def concat_part_vjp(gg, out, g, *xs, axis, index):
    zero = as_node(0, like=gg)
    parts = [gg if i == index else apply("broadcast_to", zero, x) for i, x in enumerate(xs)]
    return (apply("concat", *parts, axis=axis),) + (None,) * len(xs)


register(OpDef("concat_part", concat_part_infer, concat_part_kernel, concat_part_vjp))


def slice_size(dim, start, stop):
    """Length of [start:stop] along a dim of size `dim` (None: unknown until run time)."""
    if isinstance(dim, int):
        s, e = (b + dim if b is not None and b < 0 else b for b in (start, stop))
        e = dim if e is None else e
        if not 0 <= s <= e <= dim:
            raise ShapeError(f"slice [{start}:{stop}] is out of bounds for size {dim}")
        return e - s
    if start >= 0 and stop is not None and stop >= 0:
        return max(stop - start, 0)
    if start < 0 and (stop is None or stop < 0):
        return max((stop or 0) - start, 0)
    return None


def slice_infer(x, like=None, *, axis, start, stop=None):
    if x.ndim == 0:
        raise ShapeError("cannot slice a scalar")
    (axis,) = norm_axes(an_int(axis, "axis"), x.ndim)
    start, stop = an_int(start, "start"), None if stop is None else an_int(stop, "stop")
    attrs = {"axis": axis, "start": start, "stop": stop}
    if like is not None:                   # unslice: x goes back into like's shape
        if like.ndim != x.ndim:
            raise ShapeError(f"ranks differ: {x.ndim} vs {like.ndim}")
        n, m = slice_size(like.shape[axis], start, stop), x.shape[axis]
        if isinstance(n, int) and isinstance(m, int) and n != m:
            raise ShapeError(f"slice [{start}:{stop}] has size {n}, the input has {m}")
        return like.shape, x.dtype, attrs
    n = slice_size(x.shape[axis], start, stop)
    return x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype, attrs


def slice_index(axis, start, stop):
    return (builtins.slice(None),) * axis + (builtins.slice(start, stop),)


def slice_kernel(x, *, axis, start, stop):
    try:                                         # strict: no silent clipping at run time
        slice_size(x.shape[axis], start, stop)
    except ShapeError as e:
        raise ValueError(str(e)) from None       # the interpreter adds the op and the line
    return x[slice_index(axis, start, stop)]


def unslice_kernel(x, like, *, axis, start, stop):
    out = np.zeros(like.shape, x.dtype)
    out[slice_index(axis, start, stop)] = x
    return out


# slice(x)[start:stop] along axis; unslice is its adjoint: zeros of like's shape, x placed back
register(OpDef(
    "slice", slice_infer, slice_kernel,
    lambda g, out, x, **attrs: (apply("unslice", g, x, **attrs),)))
register(OpDef(
    "unslice", slice_infer, unslice_kernel,
    lambda g, out, x, like, **attrs: (apply("slice", g, **attrs), None)))


# one_hot ------------------------------------------------------------------------------

def one_hot_infer(labels, *, depth, dtype="float32"):
    if labels.dtype.kind not in "iu":
        raise ShapeError(f"labels must be integers, got {labels.dtype.name}")
    depth = an_int(depth, "depth")
    if depth < 1:
        raise ShapeError(f"depth must be >= 1, got {depth}")
    dtype = a_dtype(dtype)
    check_size(labels.shape + (depth,), dtype)
    return labels.shape + (depth,), dtype, {"depth": depth, "dtype": dtype.name}


# labels outside [0, depth) give a row of zeros (as in TensorFlow)
register(OpDef(
    "one_hot", one_hot_infer,
    lambda labels, *, depth, dtype: (labels[..., None] == np.arange(depth)).astype(dtype),
    lambda g, out, labels, **attrs: (None,)))


# the public builders ------------------------------------------------------------------

def reshape(x, shape):
    """Reshape to `shape` (a tuple, one entry may be -1) or to the shape of node `shape`."""
    if hasattr(shape, "op"):
        return apply("reshape", x, shape)
    return apply("reshape", x, shape=tuple(shape))


def broadcast_to(x, shape):
    """Broadcast to `shape` (a tuple) or to the shape of node `shape` at run time."""
    if hasattr(shape, "op"):
        return apply("broadcast_to", x, shape)
    return apply("broadcast_to", x, shape=tuple(shape))


def transpose(x, axes=None):
    """Permute the axes (default: reverse them, as NumPy)."""
    return apply("transpose", x) if axes is None else apply("transpose", x, axes=tuple(axes))


def concat(xs, axis: int = 0):
    """Join nodes along an existing axis."""
    xs = list(xs)
    if not xs:
        raise GraphcError(f"concat needs at least one input\n  at {user_line()}")
    return apply("concat", *xs, axis=axis)


def slice(x, axis: int, start: int, stop: int | None = None):   # noqa: A001
    """x[start:stop] along `axis`, Python's negative indices allowed; out of bounds is an error."""
    return apply("slice", x, axis=axis, start=start, stop=stop)


def one_hot(labels, depth: int, dtype="float32"):
    """labels (...,) integers -> (..., depth); a label outside [0, depth) gives a zero row."""
    return apply("one_hot", labels, depth=depth, dtype=np.dtype(dtype).name)
