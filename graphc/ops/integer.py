"""Rounding, remainders, integer division, bitwise and logical ops, NaN/Inf tests.

These are piecewise constant or defined on integers: their gradients are zero (None), except
the remainders, whose VJPs follow from a - b * q with the quotient q held constant.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import ShapeError, apply
from graphc.ops.common import elementwise, promote

__all__ = ["floor", "ceil", "round", "trunc", "mod", "fmod", "floor_divide", "trunc_divide",
           "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "left_shift",
           "right_shift", "logical_and", "logical_or", "logical_xor", "isnan", "isinf"]


def need_int(*xs):
    dtype = promote(*xs)
    if dtype.kind not in "biu":
        raise ShapeError(f"needs integer or bool inputs, got {dtype.name}")
    return dtype


def need_bool(*xs):
    if any(x.dtype != bool for x in xs):
        raise ShapeError(f"needs bool inputs, got {', '.join(x.dtype.name for x in xs)}")
    return np.dtype(bool)


def float_to_bool(x):
    if x.dtype.kind != "f":
        raise ShapeError(f"needs a floating-point input, got {x.dtype.name}")
    return np.dtype(bool)


def trunc_divide_kernel(a, b):
    """Integer division rounding toward zero (C, ONNX), not toward -inf as NumPy's //."""
    q = np.floor_divide(a, b)
    if q.dtype.kind == "i":
        q = q + ((np.remainder(a, b) != 0) & ((a < 0) ^ (b < 0))).astype(q.dtype)
    elif q.dtype.kind == "f":
        q = np.trunc(np.divide(a, b))
    return q


def quotient_vjp(rounding):
    """d(a - b * q)/da = 1, d/db = -q, q = rounding(a / b) held constant."""
    def vjp(g, out, a, b):
        q = apply(rounding, apply("div", a, b)) if a.dtype.kind == "f" else None
        return g, (None if q is None else -g * q)
    return vjp


def quotient_dtype(a, b):
    """The kernel's: NumPy's floor_divide loop (bool // bool is int8), for integers or floats."""
    if promote(a, b).kind != "f":
        need_int(a, b)
    return np.floor_divide.resolve_dtypes((a.dtype, b.dtype, None))[-1]


zero = (lambda g, out, *xs: (None,) * len(xs))
elementwise("floor", np.floor, zero, sp.floor)
elementwise("ceil", np.ceil, zero, sp.ceiling)
elementwise("round", np.rint, zero)            # halves to even, as NumPy and ONNX
elementwise("trunc", np.trunc, zero)
elementwise("mod", np.mod, quotient_vjp("floor"), sp.Mod)        # sign of b, as Python
elementwise("fmod", np.fmod, quotient_vjp("trunc"))               # sign of a, as C
elementwise("floor_divide", np.floor_divide, zero, lambda a, b: sp.floor(a / b),   # a // b
            dtype_rule=quotient_dtype)
elementwise("trunc_divide", trunc_divide_kernel, zero, dtype_rule=quotient_dtype)
elementwise("bitwise_and", np.bitwise_and, zero, dtype_rule=need_int)
elementwise("bitwise_or", np.bitwise_or, zero, dtype_rule=need_int)
elementwise("bitwise_xor", np.bitwise_xor, zero, dtype_rule=need_int)
elementwise("bitwise_not", np.invert, zero, dtype_rule=need_int)
elementwise("left_shift", np.left_shift, zero, dtype_rule=need_int)
elementwise("right_shift", np.right_shift, zero, dtype_rule=need_int)
elementwise("logical_and", np.logical_and, zero, sp.And, dtype_rule=need_bool)
elementwise("logical_or", np.logical_or, zero, sp.Or, dtype_rule=need_bool)
elementwise("logical_xor", np.logical_xor, zero, sp.Xor, dtype_rule=need_bool)
elementwise("isnan", np.isnan, zero, dtype_rule=float_to_bool)
elementwise("isinf", np.isinf, zero, dtype_rule=float_to_bool)


# the public builders ------------------------------------------------------------------

def floor(x): return apply("floor", x)
def ceil(x): return apply("ceil", x)
def round(x): return apply("round", x)        # noqa: A001  (NumPy's name)
def trunc(x): return apply("trunc", x)
def mod(a, b): return apply("mod", a, b)
def fmod(a, b): return apply("fmod", a, b)
def floor_divide(a, b): return apply("floor_divide", a, b)
def trunc_divide(a, b): return apply("trunc_divide", a, b)
def bitwise_and(a, b): return apply("bitwise_and", a, b)
def bitwise_or(a, b): return apply("bitwise_or", a, b)
def bitwise_xor(a, b): return apply("bitwise_xor", a, b)
def bitwise_not(x): return apply("bitwise_not", x)
def left_shift(a, b): return apply("left_shift", a, b)
def right_shift(a, b): return apply("right_shift", a, b)
def logical_and(a, b): return apply("logical_and", a, b)
def logical_or(a, b): return apply("logical_or", a, b)
def logical_xor(a, b): return apply("logical_xor", a, b)
def isnan(x): return apply("isnan", x)
def isinf(x): return apply("isinf", x)

