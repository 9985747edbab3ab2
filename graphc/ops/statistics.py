"""More reductions: min, prod, logsumexp (primitives), argmax/argmin (integer, no gradient),
and var/std as sugar over sum and mean (two passes: mean first, then squared deviations, which
keeps the precision that E[x^2] - E[x]^2 loses)."""
from __future__ import annotations

import numpy as np

from graphc.ir import OpDef, ShapeError, apply, constant, register
from graphc.ops.common import keep_flag, need_float, norm_axes
from graphc.ops.reduce import expand_back, max_infer, mean, reduced_shape, scalar_sym

__all__ = ["min", "prod", "logsumexp", "argmax", "argmin", "var", "std"]


# min: the gradient goes to the first minimum of each group, as max's does to the first maximum
register(OpDef(
    "min", max_infer,
    lambda x, *, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims),
    lambda g, out, x, *, axis, keepdims: (
        expand_back(g, x, axis, keepdims) * apply("argmax_mask", -x, axis=axis),),
    scalar_sym))


def prod_kernel(x, *, axis, keepdims):
    dtype = np.int64 if x.dtype == bool else x.dtype
    return np.prod(x, axis=axis, keepdims=keepdims, dtype=dtype)


def prod_vjp(g, out, x, *, axis, keepdims):
    """d out / d x_i = the product of the others: out / x_i where x_i != 0; at a zero, the
    product of the nonzero ones times the other zeros (one other at most: with two, 0 to
    second order). Each form holds near x (a mask is a constant to autodiff), so the gradient's
    gradient is exact too (out / x alone would give 0/0; a constant 0 would lose it)."""
    zero = apply("equal", x, 0)
    safe = apply("where", zero, 1.0, x)                      # x with its zeros set to 1
    nonzero = apply("prod", safe, axis=axis, keepdims=True)  # product of the nonzero ones
    zeros = apply("sum", apply("cast", zero, dtype="int64"), axis=axis, keepdims=True)
    other = apply("sum", apply("where", zero, x, 0.0), axis=axis, keepdims=True) - x
    at_zero = apply("where", apply("equal", zeros, 1), nonzero,
                    apply("where", apply("equal", zeros, 2), nonzero * other, 0.0))
    others = apply("where", zero, at_zero, expand_back(out, x, axis, keepdims) / safe)
    return (expand_back(g, x, axis, keepdims) * others,)


def prod_infer(x, *, axis=None, keepdims=False):
    shape, _, attrs = max_infer(x, axis=axis, keepdims=keepdims)
    return shape, np.dtype(np.int64) if x.dtype == bool else x.dtype, attrs


register(OpDef("prod", prod_infer, prod_kernel, prod_vjp, scalar_sym))


# logsumexp: log(sum(exp(x))) computed stably; its gradient is the softmax over the axes
def lse_infer(x, *, axis=None, keepdims=False):
    need_float(x)
    return max_infer(x, axis=axis, keepdims=keepdims)


def lse_kernel(x, *, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)  # empty: log(0) = -inf too
    m = np.where(np.isfinite(m), m, 0)                       # all -inf: log(0) = -inf
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


register(OpDef(
    "logsumexp", lse_infer, lse_kernel,
    lambda g, out, x, *, axis, keepdims: (
        expand_back(g, x, axis, keepdims)
        * apply("exp", x - expand_back(out, x, axis, keepdims)),),
    scalar_sym))


# argmax / argmin: int64 positions of the first extreme (flat index when axis is None)
def arg_infer(x, *, axis=None, keepdims=False):
    if axis is not None and not isinstance(axis, (int, np.integer)):
        raise ShapeError(f"axis must be None or one int, got {axis!r} (as in NumPy)")
    if x.ndim == 0:
        raise ShapeError("needs an input of rank >= 1")
    axes = norm_axes(axis, x.ndim)
    keepdims = keep_flag(keepdims)
    return reduced_shape(x.shape, axes, keepdims), np.dtype(np.int64), {
        "axis": None if axis is None else axes[0], "keepdims": keepdims}


for _name, _fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    register(OpDef(
        _name, arg_infer,
        lambda x, *, axis, keepdims, _fn=_fn: np.asarray(
            _fn(x, axis=axis, keepdims=keepdims), dtype=np.int64),
        lambda g, out, x, **attrs: (None,)))


# the public builders ------------------------------------------------------------------

def min(x, axis=None, keepdims: bool = False):   # noqa: A001  (NumPy's name)
    """Smallest element over `axis`; the gradient goes to the first minimum only."""
    return apply("min", x, axis=axis, keepdims=keepdims)


def prod(x, axis=None, keepdims: bool = False):
    """Product over `axis`; its gradient is exact where x has zeros."""
    return apply("prod", x, axis=axis, keepdims=keepdims)


def logsumexp(x, axis=None, keepdims: bool = False):
    """log(sum(exp(x))) over `axis`, computed stably (no overflow for large x)."""
    return apply("logsumexp", x, axis=axis, keepdims=keepdims)


def argmax(x, axis: int | None = None, keepdims: bool = False):
    """int64 index of the first maximum along `axis` (of the flattened x when None)."""
    return apply("argmax", x, axis=axis, keepdims=keepdims)


def argmin(x, axis: int | None = None, keepdims: bool = False):
    """int64 index of the first minimum along `axis` (of the flattened x when None)."""
    return apply("argmin", x, axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims: bool = False, ddof: int = 0):
    """Variance over `axis`: mean of squared deviations from the mean; ddof=1 for the
    unbiased estimate (ddof=0 by default, as NumPy; PyTorch's default is 1)."""
    if getattr(x, "dtype", None) == np.float16:   # through float32, as mean (count > 65504)
        return apply("cast", var(apply("cast", x, dtype="float32"), axis, keepdims, ddof),
                     dtype="float16")
    dev = x - mean(x, axis=axis, keepdims=True)
    sq = dev * dev
    if ddof == 0:
        return mean(sq, axis=axis, keepdims=keepdims)
    total = apply("sum", sq, axis=axis, keepdims=keepdims)
    dims = [sq.shape[a] for a in total.attrs["axis"]]
    if all(isinstance(d, int) for d in dims):
        count = constant(np.asarray(int(np.prod(dims)) - ddof, dtype=total.dtype))
    else:
        count = apply("size", sq, axis=total.attrs["axis"], dtype=total.dtype.name) - ddof
    return total / count


def std(x, axis=None, keepdims: bool = False, ddof: int = 0):
    """Standard deviation: sqrt(var(x, axis, keepdims, ddof))."""
    return apply("sqrt", var(x, axis=axis, keepdims=keepdims, ddof=ddof))

