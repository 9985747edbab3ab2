"""More elementwise functions: erf, sin, cos (primitives) and the activations of today's
models as sugar over primitives (gelu, silu, leaky_relu, elu), plus clip, reciprocal, rsqrt.

Sugar needs no gradient code: its gradient is the chain of its primitives' VJPs.
"""
from __future__ import annotations

import math

import numpy as np
import sympy as sp

from graphc.ir import GraphcError, apply, as_node, user_line
from graphc.ops.common import elementwise, need_float

__all__ = ["erf", "sin", "cos", "gelu", "silu", "leaky_relu", "elu", "clip", "reciprocal",
           "rsqrt"]

_vector_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf_kernel(x):
    """scipy's erf when it is installed (fast), else the standard library's, per element."""
    try:
        from scipy.special import erf as fast
    except ImportError:
        return _vector_erf(x).astype(x.dtype)
    return fast(x).astype(x.dtype, copy=False)


TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)

elementwise("erf", erf_kernel,
            lambda g, out, x: (g * TWO_OVER_SQRT_PI * apply("exp", -(x * x)),),
            sp.erf, dtype_rule=need_float)
elementwise("sin", np.sin, lambda g, out, x: (g * apply("cos", x),), sp.sin,
            dtype_rule=need_float)
elementwise("cos", np.cos, lambda g, out, x: (-g * apply("sin", x),), sp.cos,
            dtype_rule=need_float)


# the public builders ------------------------------------------------------------------

def erf(x): return apply("erf", x)
def sin(x): return apply("sin", x)
def cos(x): return apply("cos", x)


def gelu(x, approximate: str = "none"):
    """x * Phi(x) with Phi the normal CDF (PyTorch's spelling: approximate="none" is exact,
    "tanh" the tanh approximation of the original BERT/GPT-2 code)."""
    if approximate == "none":
        return x * 0.5 * (1.0 + apply("erf", x * (1.0 / math.sqrt(2.0))))
    if approximate == "tanh":      # tanh is +-1 from |x| = 10 on: the clip changes no
        t = clip(x, -10.0, 10.0)    # value, and keeps x^3 finite (float16: from 41 on)
        inner = math.sqrt(2.0 / math.pi) * (t + 0.044715 * (t * t * t))
        return 0.5 * x * (1.0 + apply("tanh", inner))
    raise GraphcError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}\n"
                      f"  at {user_line()}")


def silu(x):
    """x * sigmoid(x) (also called swish)."""
    return x * apply("sigmoid", x)


def leaky_relu(x, negative_slope: float = 0.01):
    """x where x > 0, else negative_slope * x (the slope is taken at 0, as PyTorch)."""
    return apply("where", apply("greater", x, 0), x, x * number(negative_slope,
                                                                "leaky_relu: negative_slope"))


def elu(x, alpha: float = 1.0):
    """x where x > 0, else alpha * (exp(x) - 1); exp only sees x <= 0, so no inf*0 = nan."""
    neg = apply("minimum", x, 0)
    return apply("where", apply("greater", x, 0), x,
                 number(alpha, "elu: alpha") * (apply("exp", neg) - 1.0))


def number(v, what: str) -> float:
    """A Python number (float('a') was a bare ValueError, float(node) a TypeError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise GraphcError(f"{what} must be a number, got {v!r}\n  at {user_line()}")
    return float(v)


def clip(x, lo=None, hi=None):
    """x limited to [lo, hi] (either may be None); inside and on the bounds the gradient is 1."""
    if lo is None and hi is None:
        raise GraphcError(f"clip: give lo, hi or both\n  at {user_line()}")
    out = as_node(x)
    if lo is not None:
        out = apply("maximum", out, lo)
    if hi is not None:
        out = apply("minimum", out, hi)
    return out


def reciprocal(x):
    """1 / x."""
    return apply("div", 1.0, x)


def rsqrt(x):
    """1 / sqrt(x)."""
    return apply("div", 1.0, apply("sqrt", x))
