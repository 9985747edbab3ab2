"""Op table rows for erf, sin, cos and the activation sugar (gelu, silu, leaky_relu, elu),
clip, reciprocal and rsqrt."""
import math

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import OPS
from tests.helpers import Row, ops_in, verify_grad

rng = np.random.default_rng(4)
erf = np.vectorize(math.erf)


def f64(*shape, lo=-3.0, hi=3.0):
    return rng.uniform(lo, hi, size=shape)


def away(*shape):
    """Values away from 0 and from the clip bounds used below (kinks are not straddled)."""
    v = rng.permutation(np.arange(1, int(np.prod(shape)) + 1)) * 0.37 + 0.05
    return (v * rng.choice([-1, 1], size=v.size)).reshape(shape)


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


ROWS = [
    Row("erf", gc.erf, [f64(3, 4)], erf),
    Row("sin", gc.sin, [f64(3, 4)], np.sin),
    Row("cos", gc.cos, [f64(3, 4)], np.cos),
    Row("gelu", gc.gelu, [f64(3, 4)], lambda x: x * 0.5 * (1 + erf(x / np.sqrt(2))),
        ops=("erf", "mul", "add")),
    Row("gelu", lambda x: gc.gelu(x, approximate="tanh"), [f64(3, 4)], gelu_tanh,
        ops=("tanh", "mul", "add")),
    Row("silu", gc.silu, [f64(3, 4)], lambda x: x / (1 + np.exp(-x)), ops=("sigmoid", "mul")),
    Row("leaky_relu", gc.leaky_relu, [away(3, 4)], lambda x: np.where(x > 0, x, 0.01 * x),
        ops=("where", "greater")),
    Row("leaky_relu", lambda x: gc.leaky_relu(x, negative_slope=0.2), [away(3, 4)],
        lambda x: np.where(x > 0, x, 0.2 * x), ops=("where",)),
    Row("elu", gc.elu, [away(3, 4)], lambda x: np.where(x > 0, x, np.exp(x) - 1),
        ops=("where", "exp", "minimum")),
    Row("elu", lambda x: gc.elu(x, alpha=0.5), [away(3, 4)],
        lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1)), ops=("where",)),
    Row("clip", lambda x: gc.clip(x, -1.0, 1.0), [away(3, 4)], lambda x: np.clip(x, -1, 1),
        ops=("maximum", "minimum")),
    Row("clip", lambda x: x.clip(hi=0.5), [away(3, 4)], lambda x: np.minimum(x, 0.5)),
    Row("clip", lambda x, lo: gc.clip(x, lo), [away(3, 4), away(4)], np.maximum),
    Row("reciprocal", gc.reciprocal, [away(3, 4)], lambda x: 1 / x, ops=("div",)),
    Row("rsqrt", gc.rsqrt, [f64(3, 4, lo=0.5, hi=3.0)], lambda x: 1 / np.sqrt(x),
        ops=("div", "sqrt")),
]


@pytest.mark.parametrize("name", ["erf", "sin", "cos"])
def test_sympy_forms_agree_with_kernels(name):
    x = sp.Symbol("x")
    fn = sp.lambdify(x, OPS[name].sym(x), "math")
    for v in (-1.3, 0.2, 2.5):
        np.testing.assert_allclose(fn(v), OPS[name].kernel(np.array(v)), rtol=1e-12)


def test_erf_without_scipy_falls_back_to_the_standard_library(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_scipy(name, *args, **kw):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_scipy)
    x = np.array([-1.0, 0.3, 2.0], np.float32)
    out = OPS["erf"].kernel(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, erf(x), rtol=1e-6)


def test_elu_has_no_nan_gradient_where_exp_overflows():
    x = gc.placeholder((2,), dtype="float32")
    g = gc.grad(gc.sum(gc.elu(x)), x).eval({x: np.array([1000.0, -2.0], np.float32)})
    np.testing.assert_allclose(g, [1.0, np.exp(-2.0)], rtol=1e-6)


def test_gelu_and_activations_are_sugar_and_second_order_works():
    x = gc.placeholder((3,), dtype="float64")
    assert ops_in(gc.gelu(x)) >= {"erf"} and "gelu" not in OPS
    for act in (gc.gelu, gc.silu, lambda v: gc.gelu(v, approximate="tanh"), gc.erf):
        verify_grad(lambda v: gc.grad(gc.sum(act(v)), v), [f64(5)])


def test_bad_gelu_approximation_names_the_choices():
    x = gc.placeholder((3,))
    with pytest.raises(gc.GraphcError, match=r"(?s)'none' or 'tanh', got 'exact'.*"
                                             r"test_ops_activations.py"):
        gc.gelu(x, approximate="exact")
