"""Elementwise ops with NumPy broadcasting: arithmetic, functions, comparisons, where, cast."""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import OpDef, ShapeError, apply, register
from graphc.ops.common import a_dtype, elementwise, need_float, promote
from graphc.ops.forms import sigmoid as sigmoid_form


def where0(cond, g):
    """g where cond holds, else 0 (routes a gradient)."""
    return apply("where", cond, g, 0.0)


def to_bool(*xs):
    promote(*xs)
    return np.dtype(bool)


def sigmoid_kernel(x):
    """1 / (1 + e^-x), accurate to a few ulps everywhere: for x < 0, e^-x is large and the
    sum adds 1 to it exactly enough (the tanh form's 1 + tanh(x/2) cancelled: 0 from -17 on
    in float32). e^-x overflows to inf only where the result is below the smallest normal
    number (0 there, as PyTorch; the callers ignore NumPy's overflow flag)."""
    return 1 / (1 + np.exp(-x))


elementwise("add", np.add, lambda g, out, a, b: (g, g), lambda a, b: a + b)
elementwise("sub", np.subtract, lambda g, out, a, b: (g, -g), lambda a, b: a - b)
elementwise("mul", np.multiply, lambda g, out, a, b: (g * b, g * a), lambda a, b: a * b)
elementwise("div", np.divide, lambda g, out, a, b: (g / b, -g * out / b), lambda a, b: a / b,
            dtype_rule=need_float)
elementwise("neg", np.negative, lambda g, out, x: (-g,), lambda x: -x)
def pow_vjp(g, out, a, b):
    """b a^(b-1), 0 where b = 0 (a^0 is 1: 0 * 0^-1 would be NaN at a = 0, as PyTorch masks);
    out log a where a > 0, else 0."""
    base = a if a.dtype.kind == "f" else apply("cast", a, dtype=g.dtype.name)  # log(int) too
    return (apply("where", apply("equal", b, 0), 0.0, g * b * apply("pow", a, b - 1)),
            where0(apply("greater", a, 0), g * out * apply("log", apply("abs", base))))


elementwise("pow", np.power, pow_vjp, lambda a, b: a ** b)
elementwise("exp", np.exp, lambda g, out, x: (g * out,), sp.exp, dtype_rule=need_float,
            positive=True)
elementwise("log", np.log, lambda g, out, x: (g / x,), sp.log, dtype_rule=need_float)
elementwise("log1p", np.log1p, lambda g, out, x: (g / (1 + x),), lambda x: sp.log(1 + x),
            dtype_rule=need_float)
elementwise("expm1", np.expm1, lambda g, out, x: (g * (out + 1),), lambda x: sp.exp(x) - 1,
            dtype_rule=need_float)
elementwise("square", np.square, lambda g, out, x: (g * 2 * x,), lambda x: x ** 2)
elementwise("sqrt", np.sqrt, lambda g, out, x: (g * 0.5 / out,), sp.sqrt, dtype_rule=need_float)
elementwise("abs", np.abs, lambda g, out, x: (g * apply("sign", x),), sp.Abs)
elementwise("sign", np.sign, lambda g, out, x: (None,), sp.sign)
elementwise("tanh", np.tanh, lambda g, out, x: (g * (1 - out * out),), sp.tanh,
            dtype_rule=need_float)
elementwise("sigmoid", sigmoid_kernel, lambda g, out, x: (g * out * (1 - out),),
            sigmoid_form, dtype_rule=need_float, positive=True)
elementwise("relu", lambda x: np.maximum(x, x.dtype.type(0)),
            lambda g, out, x: (where0(apply("greater", x, 0), g),),   # relu'(0) = 0
            lambda x: sp.Max(x, 0))
elementwise("softplus", lambda x: np.logaddexp(0, x),
            lambda g, out, x: (g * apply("sigmoid", x),),
            lambda x: sp.log(1 + sp.exp(x)), dtype_rule=need_float, positive=True)
elementwise("maximum", np.maximum,   # ties: the first input wins
            lambda g, out, a, b: (where0(apply("greater_equal", a, b), g),
                                  where0(apply("less", a, b), g)), sp.Max)
elementwise("minimum", np.minimum,
            lambda g, out, a, b: (where0(apply("less_equal", a, b), g),
                                  where0(apply("greater", a, b), g)), sp.Min)
elementwise("greater", np.greater, lambda g, out, a, b: (None, None),
            lambda a, b: sp.Gt(a, b), dtype_rule=to_bool)
elementwise("greater_equal", np.greater_equal, lambda g, out, a, b: (None, None),
            lambda a, b: sp.Ge(a, b), dtype_rule=to_bool)
elementwise("less", np.less, lambda g, out, a, b: (None, None),
            lambda a, b: sp.Lt(a, b), dtype_rule=to_bool)
elementwise("less_equal", np.less_equal, lambda g, out, a, b: (None, None),
            lambda a, b: sp.Le(a, b), dtype_rule=to_bool)
elementwise("equal", np.equal, lambda g, out, a, b: (None, None),
            lambda a, b: sp.Eq(a, b), dtype_rule=to_bool)


def where_dtype(c, a, b):
    if c.dtype != bool:
        raise ShapeError(f"the condition must be bool, got {c.dtype.name}")
    return promote(a, b)


elementwise("where", np.where,
            lambda g, out, c, a, b: (None, where0(c, g), where0(apply("logical_not", c), g)),
            lambda c, a, b: sp.Piecewise((a, c), (b, True)), dtype_rule=where_dtype)
elementwise("logical_not", np.logical_not, lambda g, out, x: (None,), sp.Not,
            dtype_rule=to_bool)


def cast_infer(x, *, dtype):
    return x.shape, a_dtype(dtype)


register(OpDef(
    "cast", cast_infer, lambda x, *, dtype: x.astype(dtype),
    lambda g, out, x, *, dtype: (apply("cast", g, dtype=x.dtype.name),),
    lambda x, *, dtype: x, elementwise=True, glue=True))


# the public builders ------------------------------------------------------------------

__all__ = ["add", "sub", "mul", "div", "neg", "pow", "exp", "log", "log1p", "expm1", "square",
           "sqrt", "abs", "sign", "tanh",
           "sigmoid", "relu", "softplus", "maximum", "minimum", "greater", "greater_equal",
           "less", "less_equal", "equal", "logical_not", "where", "cast"]


def add(a, b): return apply("add", a, b)
def sub(a, b): return apply("sub", a, b)
def mul(a, b): return apply("mul", a, b)
def div(a, b): return apply("div", a, b)
def neg(x): return apply("neg", x)
def pow(a, b): return apply("pow", a, b)   # noqa: A001  (NumPy's name)
def exp(x): return apply("exp", x)
def log(x): return apply("log", x)
def log1p(x): return apply("log1p", x)
def expm1(x): return apply("expm1", x)
def square(x): return apply("square", x)
def sqrt(x): return apply("sqrt", x)
def abs(x): return apply("abs", x)         # noqa: A001
def sign(x): return apply("sign", x)
def tanh(x): return apply("tanh", x)
def sigmoid(x): return apply("sigmoid", x)
def relu(x): return apply("relu", x)
def softplus(x): return apply("softplus", x)
def maximum(a, b): return apply("maximum", a, b)
def minimum(a, b): return apply("minimum", a, b)
def greater(a, b): return apply("greater", a, b)
def greater_equal(a, b): return apply("greater_equal", a, b)
def less(a, b): return apply("less", a, b)
def less_equal(a, b): return apply("less_equal", a, b)
def equal(a, b): return apply("equal", a, b)
def logical_not(x): return apply("logical_not", x)
def where(cond, a, b): return apply("where", cond, a, b)
def cast(x, dtype):
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        pass                          # cast_infer names it, with the user's line
    return apply("cast", x, dtype=dtype)
