"""Reductions over axes (axis=None|int|tuple, keepdims), the run-time `size` of axes, matmul."""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import OpDef, ShapeError, apply, constant, format_shape, register
from graphc.ops.common import broadcast_shapes, keep_flag, norm_axes, promote

__all__ = ["sum", "mean", "max", "size", "argmax_mask", "matmul"]


def scalar_sym(x, *rest, **attrs):
    """A reduction of a scalar formula is the formula itself; of a matrix it has no form here."""
    return None if isinstance(x, sp.MatrixExpr) else x


# reductions ---------------------------------------------------------------------------

def reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def reduce_infer(x, *, axis=None, keepdims=False):
    axes = norm_axes(axis, x.ndim)
    dtype = np.dtype(np.int64) if x.dtype == bool else x.dtype   # sum of bools counts
    keepdims = keep_flag(keepdims)
    return reduced_shape(x.shape, axes, keepdims), dtype, {"axis": axes, "keepdims": keepdims}


def expand_back(g, x, axis, keepdims):
    """g of a reduction's output shape, reshaped so it broadcasts against x (reduced axes 1)."""
    if keepdims:
        return g
    return apply("reshape", g, x, keepdims_of=axis)


def sum_kernel(x, *, axis, keepdims):
    if x.dtype == np.float16:           # float32 accumulation: in float16 5000 x 0.1 is 256
        return np.sum(x, axis=axis, keepdims=keepdims, dtype=np.float32).astype(np.float16)
    dtype = np.int64 if x.dtype == bool else x.dtype    # NumPy would widen int32 to int64
    return np.sum(x, axis=axis, keepdims=keepdims, dtype=dtype)


register(OpDef(
    "sum", reduce_infer, sum_kernel,
    lambda g, out, x, *, axis, keepdims: (
        apply("broadcast_to", expand_back(g, x, axis, keepdims), x),),
    scalar_sym))


def max_infer(x, *, axis=None, keepdims=False):
    shape, _, attrs = reduce_infer(x, axis=axis, keepdims=keepdims)
    return shape, x.dtype, attrs


# max: exactly one winner per reduced group (the first maximum in C order) gets g
register(OpDef(
    "max", max_infer,
    lambda x, *, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
    lambda g, out, x, *, axis, keepdims: (
        expand_back(g, x, axis, keepdims) * apply("argmax_mask", x, axis=axis),),
    scalar_sym))


def mask_infer(x, *, axis=None):
    dtype = x.dtype if x.dtype.kind == "f" else np.dtype(np.float32)
    return x.shape, dtype, {"axis": norm_axes(axis, x.ndim)}


def argmax_mask_kernel(x, *, axis):
    """1.0 at the first maximum (C order over the reduced axes) of each group, else 0.0."""
    keep = [i for i in range(x.ndim) if i not in axis]
    moved = np.transpose(x, keep + list(axis))
    group = int(np.prod([x.shape[a] for a in axis]))
    flat = moved.reshape(moved.shape[:len(keep)] + (group,))
    dtype = x.dtype if x.dtype.kind == "f" else np.float32
    mask = np.zeros(flat.shape, dtype)
    np.put_along_axis(mask, np.argmax(flat, axis=-1)[..., None], 1, axis=-1)
    return np.transpose(mask.reshape(moved.shape), np.argsort(keep + list(axis)))


register(OpDef("argmax_mask", mask_infer, argmax_mask_kernel,
               lambda g, out, x, *, axis: (None,)))     # piecewise constant: zero gradient


def size_infer(x, *, axis=None, dtype="float32"):
    return (), np.dtype(dtype), {"axis": norm_axes(axis, x.ndim), "dtype": np.dtype(dtype).name}


def size_kernel(x, *, axis, dtype):
    return np.asarray(np.prod([x.shape[a] for a in axis]), dtype=dtype)


# size(x): the number of elements over `axis` at run time; reads only x's shape, so a
# constant-folding pass may replace it by a constant when those dims are static
register(OpDef("size", size_infer, size_kernel, lambda g, out, x, *, axis, dtype: (None,),
               lambda x, *, axis, dtype: sp.Integer(1) if not axis else None, shape_only=(0,)))


# matmul -------------------------------------------------------------------------------

def matmul_infer(a, b):
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError("matmul needs operands of rank >= 1 (use mul for scalars)")
    ka, kb = a.shape[-1], b.shape[-2 if b.ndim > 1 else 0]
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ShapeError(f"inner dimensions do not match: {format_shape(a.shape)} has {ka} "
                         f"columns, {format_shape(b.shape)} has {kb} rows")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ShapeError:
        raise ShapeError(f"batch dimensions {format_shape(a.shape[:-2])} and "
                         f"{format_shape(b.shape[:-2])} do not broadcast") from None
    rows = a.shape[-2:-1]          # () for a vector
    cols = b.shape[-1:] if b.ndim > 1 else ()
    return batch + rows + cols, promote(a, b)


def swap_last(x):
    """x with its last two axes exchanged (the batched transpose)."""
    axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return apply("transpose", x, axes=axes)


def matmul_vjp(g, out, a, b):
    """Batch dims broadcast in the forward pass are summed back centrally by autodiff."""
    if a.ndim == 1 and b.ndim == 1:                       # () = (k,) . (k,)
        return g * b, g * a
    if b.ndim == 1:                                       # (..., n) = (..., n, k) @ (k,)
        gcol = apply("reshape", g, a, keepdims_of=(a.ndim - 1,))          # (..., n, 1)
        return gcol * b, apply("matmul", swap_last(gcol), a)              # (..., 1, k)
    if a.ndim == 1:                                       # (..., m) = (k,) @ (..., k, m)
        grow = apply("reshape", g, b, keepdims_of=(b.ndim - 2,))          # (..., 1, m)
        acol = apply("reshape", a, shape=(-1, 1))                         # (k, 1)
        return apply("matmul", grow, swap_last(b)), acol * grow
    return apply("matmul", g, swap_last(b)), apply("matmul", swap_last(a), g)


register(OpDef("matmul", matmul_infer, np.matmul, matmul_vjp, lambda a, b: a * b))


# the public builders ------------------------------------------------------------------

def sum(x, axis=None, keepdims: bool = False):   # noqa: A001  (NumPy's name)
    """Sum over `axis` (None: all axes)."""
    return apply("sum", x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims: bool = False):   # noqa: A001
    """Largest element over `axis`; the gradient goes to the first maximum only."""
    return apply("max", x, axis=axis, keepdims=keepdims)


def argmax_mask(x, axis=None):
    """A float mask of x's shape: 1 at the first maximum of each group over `axis`."""
    return apply("argmax_mask", x, axis=axis)


def size(x, axis=None, dtype="float32"):
    """The number of elements of x over `axis` at run time, as a scalar of `dtype`."""
    return apply("size", x, axis=axis, dtype=np.dtype(dtype).name)


def mean(x, axis=None, keepdims: bool = False):
    """sum / count; integer and bool inputs are averaged as float32.

    The count is a constant when the reduced dims are static, else a run-time `size` node.
    """
    total = apply("sum", x, axis=axis, keepdims=keepdims)
    x, axes = total.inputs[0], total.attrs["axis"]
    if total.dtype == np.float16:   # as NumPy, through float32: a count over 65504 is inf
        return apply("cast", mean(apply("cast", x, dtype="float32"), axis, keepdims),
                     dtype="float16")
    if total.dtype.kind != "f":     # summed as float32: a sum in int8 or uint8 wraps around
        total = apply("sum", apply("cast", x, dtype="float32"), axis=axes, keepdims=keepdims)
    dims = [x.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        count = constant(np.asarray(np.prod(dims), dtype=total.dtype))
    else:
        count = apply("size", x, axis=axes, dtype=total.dtype.name)
    return apply("div", total, count)


def matmul(a, b):
    """Matrix product with NumPy's rules: batched N-D, broadcast batch dims, 1-D vectors."""
    return apply("matmul", a, b)
