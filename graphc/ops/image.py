"""Ops ONNX models need beyond the core families: cumulative sums and products, sorting
(for top-k), and scattering values into a tensor (the adjoint of gathering)."""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError, OpDef, ShapeError, apply, constant, register
from graphc.ops.common import norm_axes
from graphc.ops.indexing import take

__all__ = ["cumsum", "cumprod", "argsort", "scatter_elements", "scatter_nd", "gather_nd"]


def one_axis(x, axis) -> int:
    (axis,) = norm_axes(int(axis), max(x.ndim, 1))
    return axis


# cumulative sum and product -----------------------------------------------------------

def cum_infer(x, *, axis, reverse=False):
    return x.shape, x.dtype, {"axis": one_axis(x, axis), "reverse": bool(reverse)}


def cum_kernel(fn):
    def kernel(x, *, axis, reverse):
        # float16 accumulates in float32, as sum does (in float16, 0.1 summed 8192 times in a
        # row is 1.8 % off)
        acc = np.float32 if x.dtype == np.float16 else x.dtype
        if x.ndim == 0:                # NumPy's would be (1,); the rule's (PyTorch's) is ()
            return x.copy()
        if reverse:
            out = np.flip(fn(np.flip(x, axis), axis=axis, dtype=acc), axis)
        else:
            out = fn(x, axis=axis, dtype=acc)
        return out.astype(x.dtype, copy=False)
    return kernel


def cumprod_vjp(g, out, x, *, axis, reverse):
    """d out_j / d x_i (j at or after i) is out_j / x_i where x_i != 0, and at a zero the
    running product with that zero set to 1 (PyTorch's zero path). Each form holds near x
    (a mask is a constant to autodiff), so the gradient's gradient is exact too; from the
    third zero on, the derivative is 0 to second order (two other zeros in every product)."""
    def later(t):                     # sum over j at or after i
        return apply("cumsum", t, axis=axis, reverse=not reverse)

    def at_zero(k):                   # the k-th zero along the axis, and its derivative
        mask = apply("logical_and", zero, apply("equal", seen, k))
        ones = apply("cumprod", apply("where", mask, 1.0, x), axis=axis, reverse=reverse)
        return mask, later(g * ones)
    zero = apply("equal", x, 0)
    seen = apply("cumsum", apply("cast", zero, dtype="int64"), axis=axis, reverse=reverse)
    (first, d1), (second, d2) = at_zero(1), at_zero(2)
    nonzero = later(g * out) / apply("where", zero, 1.0, x)
    return (apply("where", zero, apply("where", first, d1, apply("where", second, d2, 0.0)),
                  nonzero),)


# cumsum: running sums along an axis (from the end when reverse); its adjoint runs the other way
register(OpDef("cumsum", cum_infer, cum_kernel(np.cumsum),
               lambda g, out, x, *, axis, reverse: (
                   apply("cumsum", g, axis=axis, reverse=not reverse),)))
register(OpDef("cumprod", cum_infer, cum_kernel(np.cumprod), cumprod_vjp))


# argsort ------------------------------------------------------------------------------

def argsort_infer(x, *, axis=-1, descending=False):
    return x.shape, np.dtype(np.int64), {"axis": one_axis(x, axis),
                                         "descending": bool(descending)}


def argsort_kernel(x, *, axis, descending):
    """Stable: equal values keep their order (ascending or descending alike)."""
    if x.ndim == 0:
        return np.zeros((), np.int64)
    if not descending:
        return np.argsort(x, axis=axis, kind="stable").astype(np.int64)
    flipped = np.argsort(np.flip(x, axis), axis=axis, kind="stable")
    return (x.shape[axis] - 1 - np.flip(flipped, axis)).astype(np.int64)


register(OpDef("argsort", argsort_infer, argsort_kernel,
               lambda g, out, x, **attrs: (None,)))     # integer positions: no gradient


# scatter ------------------------------------------------------------------------------

REDUCTIONS = ("none", "add", "mul", "max", "min")
UFUNCS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def need_indices(indices):
    if indices.dtype.kind not in "iu":
        raise ShapeError(f"indices must be integers, got {indices.dtype.name}")


def scatter_elements_infer(data, indices, updates, *, axis=0, reduction="none"):
    need_indices(indices)
    if reduction not in REDUCTIONS:
        raise ShapeError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if indices.ndim != data.ndim or updates.shape != indices.shape:
        raise ShapeError("indices and updates must have one shape, of data's rank")
    return data.shape, data.dtype, {"axis": one_axis(data, axis), "reduction": reduction}


def full_index(indices, axis):
    """The NumPy advanced index that puts indices along `axis` and counts along the others."""
    grids = np.indices(indices.shape, sparse=True)
    return tuple(indices if i == axis else g for i, g in enumerate(grids))


def check_bounds(indices, size, what):
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise ValueError(f"{what}: index out of range for size {size}")


def scatter_elements_kernel(data, indices, updates, *, axis, reduction):
    check_bounds(indices, data.shape[axis], "scatter_elements")
    out = data.copy()
    index = full_index(np.where(indices < 0, indices + data.shape[axis], indices), axis)
    if reduction == "none":
        out[index] = updates
    else:
        UFUNCS[reduction].at(out, index, updates)
    return out


def scatter_vjp(gather):
    """reduction none: g flows to data where nothing was written, to updates where it was;
    add: to both unchanged. mul/max/min have no gradient here (said, not silently zero)."""
    def vjp(g, out, data, indices, updates, **attrs):
        if attrs["reduction"] not in ("none", "add"):
            raise GraphcError(f"no gradient for scatter with reduction={attrs['reduction']!r}")
        g_updates = gather(g, indices, attrs)
        if attrs["reduction"] == "add":
            return g, None, g_updates
        zeros = apply("broadcast_to", constant(np.zeros((), g.dtype)), updates)
        return apply(out.op, g, indices, zeros, **attrs), None, g_updates
    return vjp


register(OpDef("scatter_elements", scatter_elements_infer, scatter_elements_kernel,
               scatter_vjp(lambda g, idx, attrs: apply("take_along_axis", g, idx,
                                                       axis=attrs["axis"]))))


def scatter_nd_infer(data, indices, updates, *, reduction="none"):
    need_indices(indices)
    if reduction not in REDUCTIONS:
        raise ShapeError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    k = indices.shape[-1] if indices.ndim else None
    if not isinstance(k, int) or k > data.ndim:
        raise ShapeError(f"the last axis of indices must be a static size <= {data.ndim}")
    if not all(isinstance(d, int) for d in data.shape[:k]):
        raise ShapeError(f"the indexed dims of data {data.shape[:k]} must be static")
    want = indices.shape[:-1] + data.shape[k:]
    if len(updates.shape) != len(want):
        raise ShapeError(f"updates must have shape {want}, got {updates.shape}")
    return data.shape, data.dtype, {"reduction": reduction}


def scatter_nd_kernel(data, indices, updates, *, reduction):
    out = data.copy()
    k = indices.shape[-1]
    for i in range(k):
        check_bounds(indices[..., i], data.shape[i], "scatter_nd")
    index = tuple(np.moveaxis(indices % np.array(data.shape[:k]), -1, 0))
    if reduction == "none":
        out[index] = updates
    else:
        UFUNCS[reduction].at(out, index, updates)
    return out


register(OpDef("scatter_nd", scatter_nd_infer, scatter_nd_kernel,
               scatter_vjp(lambda g, idx, attrs: gather_nd(g, idx))))


# the public builders ------------------------------------------------------------------

def cumsum(x, axis: int, reverse: bool = False):
    """Running sums along `axis` (from the end when reverse)."""
    return apply("cumsum", x, axis=axis, reverse=reverse)


def cumprod(x, axis: int, reverse: bool = False):
    """Running products along `axis` (gradients exact with zeros too, to second order)."""
    return apply("cumprod", x, axis=axis, reverse=reverse)


def argsort(x, axis: int = -1, descending: bool = False):
    """Positions that sort x along `axis`, stable (ties keep their order)."""
    return apply("argsort", x, axis=axis, descending=descending)


def scatter_elements(data, indices, updates, axis: int = 0, reduction: str = "none"):
    """data with updates written (or combined by `reduction`) at indices along `axis`."""
    return apply("scatter_elements", data, indices, updates, axis=axis, reduction=reduction)


def scatter_nd(data, indices, updates, reduction: str = "none"):
    """data with updates written at the index tuples in indices' last axis."""
    return apply("scatter_nd", data, indices, updates, reduction=reduction)


def gather_nd(data, indices):
    """data[tuple(indices[..., i])]: a take on data flattened over the indexed axes."""
    k = indices.shape[-1]
    dims = data.shape[:k]
    if not isinstance(k, int) or not all(isinstance(d, int) for d in dims):
        raise GraphcError(f"gather_nd needs static indexed dims, got {data.shape}")
    strides = np.cumprod((1,) + tuple(dims[::-1]))[:-1][::-1].astype(np.int64)
    wrapped = apply("mod", apply("cast", indices, dtype="int64"),
                    constant(np.array(dims, np.int64)))      # negative indices count from the end
    flat = apply("matmul", wrapped, constant(strides))
    table = apply("reshape", data, shape=(int(np.prod(dims)),) + tuple(data.shape[k:]))
    return take(table, flat, axis=0)
