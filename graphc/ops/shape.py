"""Ops that move data without arithmetic: reshape, broadcast_to, transpose, concat, one_hot."""
from __future__ import annotations

import numpy as np

from graphc.ir import OpDef, ShapeError, apply, format_shape, register
from graphc.ops.common import broadcast_shapes

__all__ = ["reshape", "broadcast_to"]


def runtime_shape(like_shape, keepdims_of):
    """A target shape taken from `like` at run time, with reduced axes set to 1."""
    return tuple(1 if i in keepdims_of else d for i, d in enumerate(like_shape))


def reshape_infer(x, like=None, *, shape=None, keepdims_of=None):
    if like is not None:     # shape of `like` (with reduced axes kept as 1) at run time
        target = runtime_shape(like.shape, keepdims_of or ())
        return target, x.dtype
    shape = tuple(int(d) for d in shape)
    known = [d for d in x.shape if not isinstance(d, int)]
    if shape.count(-1) > 1:
        raise ShapeError(f"target shape {shape} has more than one -1")
    if not known:
        size = int(np.prod(x.shape))
        rest = int(np.prod([d for d in shape if d != -1]))
        if -1 in shape:
            if rest == 0 or size % rest:
                raise ShapeError(f"cannot reshape {size} elements into {shape}")
            shape = tuple(size // rest if d == -1 else d for d in shape)
        elif rest != size:
            raise ShapeError(f"cannot reshape {format_shape(x.shape)} ({size} elements) "
                             f"into {format_shape(shape)}")
        return shape, x.dtype, {"shape": shape}
    return tuple(None if d == -1 else d for d in shape), x.dtype, {"shape": shape}


def reshape_kernel(x, like=None, *, shape=None, keepdims_of=None):
    if like is not None:
        shape = runtime_shape(like.shape, keepdims_of or ())
    return np.reshape(x, shape)


register(OpDef(
    "reshape", reshape_infer, reshape_kernel,
    lambda g, out, x, like=None, **attrs: (apply("reshape", g, x), None)))


def broadcast_infer(x, like=None, *, shape=None):
    target = like.shape if like is not None else tuple(shape)
    if len(target) < x.ndim or broadcast_shapes(x.shape, target) != tuple(target):
        raise ShapeError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(target)}")
    return tuple(target), x.dtype


def broadcast_kernel(x, like=None, *, shape=None):
    return np.broadcast_to(x, like.shape if like is not None else shape)


register(OpDef(
    "broadcast_to", broadcast_infer, broadcast_kernel,
    lambda g, out, x, like=None, **attrs: (g, None)))   # autodiff sums g back to x's shape


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
