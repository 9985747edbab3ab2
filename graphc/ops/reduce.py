"""Reductions over axes (axis=None|int|tuple, keepdims) and matmul."""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import OpDef, apply, register
from graphc.ops.common import norm_axes

__all__ = ["sum"]


def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def reduce_infer(x, *, axis=None, keepdims=False):
    axes = norm_axes(axis, x.ndim)
    return reduced_shape(x.shape, axes, keepdims), x.dtype, {"axis": axes, "keepdims": keepdims}


def expand_back(g, x, axis, keepdims):
    """g of a reduction's output shape, broadcast back to x's shape."""
    if not keepdims:
        g = apply("reshape", g, x, keepdims_of=axis)
    return apply("broadcast_to", g, x)


register(OpDef(
    "sum", reduce_infer, lambda x, *, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
    lambda g, out, x, *, axis, keepdims: (expand_back(g, x, axis, keepdims),),
    lambda x, *, axis, keepdims: sp.Add(x)))


def sum(x, axis=None, keepdims: bool = False):   # noqa: A001  (NumPy's name)
    return apply("sum", x, axis=axis, keepdims=keepdims)
