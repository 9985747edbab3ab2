"""The trigonometric and hyperbolic functions beyond sin and cos, with their VJPs."""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import apply
from graphc.ops.common import elementwise, need_float

__all__ = ["tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "arcsinh", "arccosh", "arctanh"]


def sqrt(x):
    return apply("sqrt", x)


elementwise("tan", np.tan, lambda g, out, x: (g * (1 + out * out),), sp.tan,
            dtype_rule=need_float)
elementwise("arcsin", np.arcsin, lambda g, out, x: (g / sqrt(1 - x * x),), sp.asin,
            dtype_rule=need_float)
elementwise("arccos", np.arccos, lambda g, out, x: (-g / sqrt(1 - x * x),), sp.acos,
            dtype_rule=need_float)
elementwise("arctan", np.arctan, lambda g, out, x: (g / (1 + x * x),), sp.atan,
            dtype_rule=need_float)
elementwise("sinh", np.sinh, lambda g, out, x: (g * apply("cosh", x),), sp.sinh,
            dtype_rule=need_float)
elementwise("cosh", np.cosh, lambda g, out, x: (g * apply("sinh", x),), sp.cosh,
            dtype_rule=need_float)
elementwise("arcsinh", np.arcsinh, lambda g, out, x: (g / sqrt(x * x + 1),), sp.asinh,
            dtype_rule=need_float)
elementwise("arccosh", np.arccosh, lambda g, out, x: (g / sqrt(x * x - 1),), sp.acosh,
            dtype_rule=need_float)
elementwise("arctanh", np.arctanh, lambda g, out, x: (g / (1 - x * x),), sp.atanh,
            dtype_rule=need_float)


def tan(x): return apply("tan", x)
def arcsin(x): return apply("arcsin", x)
def arccos(x): return apply("arccos", x)
def arctan(x): return apply("arctan", x)
def sinh(x): return apply("sinh", x)
def cosh(x): return apply("cosh", x)
def arcsinh(x): return apply("arcsinh", x)
def arccosh(x): return apply("arccosh", x)
def arctanh(x): return apply("arctanh", x)
