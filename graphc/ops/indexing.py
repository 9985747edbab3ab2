"""Gathering by integer indices (take, take_along_axis) and their adjoints, the scatter-adds.

An embedding lookup is `take(E, ids)`: one gather instead of a one-hot matmul. Its gradient
adds each row of g into the row its index names, so repeated indices accumulate.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError, Node, OpDef, ShapeError, apply, format_shape, register, \
    user_line
from graphc.ops.common import norm_axes
from graphc.ops.layout import expand_dims

__all__ = ["take", "take_along_axis"]


def need_int(indices):
    if indices.dtype.kind not in "iu":
        raise ShapeError(f"indices must be integers, got {indices.dtype.name} "
                         "(cast them with gc.cast(ids, 'int64'))")


def one_axis(axis, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"axis must be one int, got {axis!r}")
    return norm_axes(int(axis), ndim)[0]


def check_bounds(indices: np.ndarray, size: int, what: str, wrap: bool = True):
    """Out-of-range indices are a run-time error (NumPy's wrap-around for negatives stays,
    unless wrap=False: an embedding's id -1 is an error in PyTorch and Keras, not the last
    row)."""
    low = -size if wrap else 0
    if indices.size and (indices.min() < low or indices.max() >= size):
        bad = indices[(indices < low) | (indices >= size)].ravel()[0]
        within = "" if wrap else f" (0 to {size - 1})"
        raise IndexError(f"{what}: index {bad} is out of bounds for size {size}{within}")


# take(x, indices, axis): x's axis replaced by the indices' shape (np.take) --------------

def take_infer(x, indices, *, axis=0, wrap=True):
    need_int(indices)
    if x.ndim == 0:
        raise ShapeError("cannot take from a scalar")
    axis = one_axis(axis, x.ndim)
    attrs = {"axis": axis} if wrap else {"axis": axis, "wrap": False}   # listings unchanged
    return x.shape[:axis] + indices.shape + x.shape[axis + 1:], x.dtype, attrs


def take_kernel(x, indices, *, axis, wrap=True):
    check_bounds(indices, x.shape[axis], "take", wrap)
    return np.take(x, indices, axis=axis)


def take_vjp(g, out, x, indices, *, axis, wrap=True):
    return apply("scatter_add", g, indices, x, axis=axis), None


# scatter_add(g, indices, like, axis): zeros of like's shape, g's slices added at indices
def scatter_infer(g, indices, like, *, axis):
    need_int(indices)
    axis = one_axis(axis, like.ndim)
    want = like.shape[:axis] + indices.shape + like.shape[axis + 1:]
    if len(want) != g.ndim or any(isinstance(a, int) and isinstance(b, int) and a != b
                                  for a, b in zip(want, g.shape)):
        raise ShapeError(f"g {format_shape(g.shape)} must have shape {format_shape(want)}")
    return like.shape, g.dtype, {"axis": axis}


def scatter_kernel(g, indices, like, *, axis):
    check_bounds(indices, like.shape[axis], "scatter_add")
    out = np.zeros(like.shape, g.dtype)
    moved = np.moveaxis(out, axis, 0)                        # a view: writes land in out
    flat = g.reshape(g.shape[:axis] + (indices.size,) + g.shape[axis + indices.ndim:])
    gm = np.moveaxis(flat, axis, 0)
    np.add.at(moved, indices.reshape(-1), gm)                # repeated indices accumulate
    return out


register(OpDef("take", take_infer, take_kernel, take_vjp))
register(OpDef(
    "scatter_add", scatter_infer, scatter_kernel,
    lambda gg, out, g, indices, like, *, axis: (apply("take", gg, indices, axis=axis),
                                                None, None)))


# take_along_axis(x, indices, axis): np.take_along_axis, indices broadcast against x -----

def along_infer(x, indices, *, axis):
    need_int(indices)
    if x.ndim == 0 or indices.ndim != x.ndim:
        raise ShapeError(f"indices need the rank of x ({x.ndim}), got rank {indices.ndim}")
    axis = one_axis(axis, x.ndim)
    shape = []
    for i, (a, b) in enumerate(zip(x.shape, indices.shape)):
        if i == axis:
            shape.append(b)
        elif isinstance(a, int) and isinstance(b, int) and 1 not in (a, b) and a != b:
            raise ShapeError(f"dimension {i} of the indices ({b}) does not broadcast "
                             f"against x's ({a})")
        else:
            shape.append(b if a == 1 else a)
    return tuple(shape), x.dtype, {"axis": axis}


def along_kernel(x, indices, *, axis):
    check_bounds(indices, x.shape[axis], "take_along_axis")
    return np.take_along_axis(x, indices, axis=axis)


def full_index(indices, axis, shape):
    """The advanced index (one array per axis) that take_along_axis reads through."""
    idx = []
    for i, n in enumerate(shape):
        if i == axis:
            idx.append(np.where(indices < 0, indices + n, indices))
        else:
            view = [1] * len(shape)
            view[i] = n
            idx.append(np.arange(n).reshape(view))
    out_shape = tuple(indices.shape[i] if i == axis else n for i, n in enumerate(shape))
    return tuple(np.broadcast_to(a, out_shape) for a in idx)


def scatter_along_kernel(g, indices, like, *, axis):
    check_bounds(indices, like.shape[axis], "scatter_add_along_axis")
    out = np.zeros(like.shape, g.dtype)
    np.add.at(out, full_index(indices, axis, g.shape[:axis] + (like.shape[axis],)
                              + g.shape[axis + 1:]), g)
    return out


def scatter_along_infer(g, indices, like, *, axis):
    need_int(indices)
    return like.shape, g.dtype, {"axis": one_axis(axis, like.ndim)}


register(OpDef(
    "take_along_axis", along_infer, along_kernel,
    lambda g, out, x, indices, *, axis: (
        apply("scatter_add_along_axis", g, indices, x, axis=axis), None)))
register(OpDef(
    "scatter_add_along_axis", scatter_along_infer, scatter_along_kernel,
    lambda gg, out, g, indices, like, *, axis: (
        apply("take_along_axis", gg, indices, axis=axis), None, None)))


# the public builders ------------------------------------------------------------------

def take(x, indices, axis: int = 0, wrap: bool = True):
    """Elements of x at integer `indices` (any shape) along `axis`, as np.take; an embedding
    lookup is take(E, ids). The gradient scatter-adds: repeated indices accumulate.
    wrap=False makes a negative index an error instead of counting from the end."""
    if wrap:
        return apply("take", x, indices, axis=axis)
    return apply("take", x, indices, axis=axis, wrap=False)


def take_along_axis(x, indices, axis: int):
    """np.take_along_axis: pick along `axis` with indices of x's rank (e.g. from argmax)."""
    return apply("take_along_axis", x, indices, axis=axis)


# indexing a node: x[...] ---------------------------------------------------------------

def is_index_array(i) -> bool:
    """An integer (or bool) array or node used as an index (not a Python int or slice)."""
    if isinstance(i, Node):
        return True
    return isinstance(i, (np.ndarray, list)) and np.asarray(i).dtype.kind in "iub"


def getitem(x: Node, index) -> Node:
    """Integers, slices with step 1, `...` and None (a new axis), as NumPy; an integer
    node or array (after full slices `:`) gathers along its axis: E[ids] is take(E, ids)."""
    index = index if isinstance(index, tuple) else (index,)
    k = next((k for k, i in enumerate(index) if is_index_array(i)), None)
    if k is not None:
        return take_at(x, index, k)
    if sum(i is Ellipsis for i in index) > 1:
        raise GraphcError(f"an index can only have one ellipsis (...)\n  at {user_line()}")
    if any(i is Ellipsis for i in index):
        e = next(k for k, i in enumerate(index) if i is Ellipsis)
        fill = x.ndim - (len(index) - 1 - sum(i is None for i in index))
        index = index[:e] + (slice(None),) * max(fill, 0) + index[e + 1:]
    new_axes = [k for k, i in enumerate(index) if i is None]
    out = basic_index(x, tuple(i for i in index if i is not None))
    if new_axes:
        kept = [k for k, i in enumerate(index) if i is not None
                and not isinstance(i, (int, np.integer))]
        at = [sum(1 for j in kept if j < k) + n for n, k in enumerate(new_axes)]
        out = expand_dims(out, tuple(at))
    return out


def take_at(x: Node, index: tuple, k: int) -> Node:
    i = index[k]
    if (i.dtype if isinstance(i, Node) else np.asarray(i).dtype) == bool:
        raise GraphcError("boolean mask indexing has a data-dependent shape, which a static "
                          "graph cannot have; use gc.where(mask, x, 0) (or a masked sum) "
                          f"instead\n  at {user_line()}")
    if len(index) != k + 1 or any(not (isinstance(j, slice) and j == slice(None))
                                  for j in index[:k]):
        raise GraphcError("an integer array index works alone after full slices "
                          "(E[ids], x[:, ids]); combine gc.take and slicing for more"
                          f"\n  at {user_line()}")
    return apply("take", x, i, axis=k)


def basic_index(x: Node, index: tuple) -> Node:
    if len(index) > x.ndim:
        raise GraphcError(f"too many indices ({len(index)}) for shape "
                          f"{format_shape(x.shape)}\n  at {user_line()}")
    out, drop = x, []
    for axis, i in enumerate(index):
        if isinstance(i, (int, np.integer)):
            out = apply("slice", out, axis=axis, start=int(i),
                        stop=None if i == -1 else int(i) + 1)
            drop.append(axis)
        elif isinstance(i, slice) and i.step in (None, 1):
            if (i.start, i.stop) != (None, None):
                out = apply("slice", out, axis=axis, start=i.start or 0, stop=i.stop)
        else:
            raise GraphcError(f"unsupported index {i!r}: graphc nodes take integers, "
                              "slices with step 1, ..., None and integer index arrays "
                              f"(gc.flip reverses an axis)\n  at {user_line()}")
    if drop:
        shape = tuple(d for k, d in enumerate(out.shape) if k not in drop)
        if sum(not isinstance(d, int) for d in shape) <= 1:
            out = apply("reshape", out, shape=tuple(d if isinstance(d, int) else -1
                                                   for d in shape))
        else:
            out = apply("sum", out, axis=tuple(drop))   # drops the size-1 axes
    return out
