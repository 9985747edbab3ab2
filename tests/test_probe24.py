"""probe24: what the last probes left open (x * 0 and x - x folded to zeros in floats, a float
attn_mask row of -inf, check_numerics blaming a step for the user's NaN constant) and a
hostile probe of the values of models people write (nn end to end, optimizers, gradients of
gradients) and of the rewrites meeting each other (GEMM accumulation into variables, updates
that alias, conv at 1 and 2 BLAS threads); one test per bug found, each failing before its fix.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import evaluate


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def same(got, want):
    """Equal values, NaN where NaN, and the same sign of every zero."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


# x * 0 and x - x: zeros in integers only -------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_zero_products_and_self_differences_keep_nan_inf_and_the_sign_of_zero(dtype,
                                                                              tmp_path):
    """x * 0 for x = inf or NaN is NaN and for x < 0 is -0.0; x - x for inf is NaN. The
    optimizer folded both to zeros (compiled 0 where eval gave NaN): now only in integers."""
    x = gc.placeholder((None,), dtype, "x")
    k = gc.placeholder((None,), "int32", "k")
    zero = gc.constant(np.zeros(5, dtype))
    outs = [x * 0.0, 0.0 * x, x - x, x * zero, gc.exp(x) * 0.0 + x, gc.sum(x * 0.0),
            gc.grad(gc.sum(x * 0.0), [x])[0], k * 0, k - k]
    a = np.array([np.inf, -np.inf, np.nan, -2.0, 3.0], dtype)
    kv = np.array([1, -2, 3, 4, 5], np.int32)
    with np.errstate(all="ignore"):
        want = evaluate(outs, {x: a, k: kv})
        assert np.isnan(want[0][:3]).all() and np.signbit(want[0][3])
        f = gc.function([x, k], outs)
        runs = [f(a, kv), gc.function([x, k], outs, optimize=False)(a, kv)]
        runs.append(load_module(f.export(tmp_path / f"z{dtype}.py"), f"z{dtype}").run(a, kv))
    for got in runs:
        for g, w in zip(got, want):
            same(g, w)
    assert "sub(" not in gc.function([k], k - k).source     # still folded in integers


# a float attn_mask of -inf --------------------------------------------------------------

def test_a_float_attn_mask_row_of_minus_inf_attends_uniformly_like_a_bool_one():
    """A float mask whose whole row is -inf gave NaN for that query and NaN gradients to every
    weight (PyTorch's MultiheadAttention too: softmax of all -inf; its SDPA path gives 0). A
    -inf is now a True of a bool mask: the row attends uniformly, as graphc's bool masks do,
    values and gradients equal the bool mask's; partly masked rows are as PyTorch's."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 4, 6), "float64", "x")
    m = rng.standard_normal((4, 4))
    m[1] = -np.inf
    m[2, :3] = -np.inf
    as_bool = np.isneginf(m)
    mha = nn.MultiHeadAttention(2, seed=1)
    out = mha(x, attn_mask=m)
    a = rng.standard_normal((3, 4, 6))
    # -1e300 swallows any score (float64): a row of it is uniform, exp of it 0 elsewhere
    want = evaluate([mha(x, attn_mask=np.where(as_bool, -1e300, m))], {x: a})[0]
    assert np.isfinite(want).all()
    fed = gc.placeholder((4, 4), "float64", "m")                  # a fed mask: at run time
    for got in (out.eval({x: a}), gc.function([x], out)(a),
                gc.function([x, fed], mha(x, attn_mask=fed))(a, m)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    pure = np.where(as_bool, -np.inf, 0.0)
    pair = [mha(x, attn_mask=pure), mha(x, attn_mask=as_bool)]
    grads = [gc.grad(gc.sum(o * o), mha.params) for o in pair]
    for run in (lambda o: evaluate(o, {x: a}), lambda o: gc.function([x], o)(a)):
        got, want = run([pair[0]] + grads[0]), run([pair[1]] + grads[1])
        for g, w in zip(got, want):
            assert np.isfinite(g).all()
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)


# check_numerics names a constant holding NaN --------------------------------------------

def test_check_numerics_names_the_constant_that_holds_nan(tmp_path):
    x = gc.placeholder((3,), "float64", "x")
    c = gc.constant(np.array([1.0, np.nan, 2.0]))
    for optimize in (True, False):                 # fused (the constant in the body) or not
        f = gc.function([x], gc.exp(x) * c, check_numerics=True, optimize=optimize)
        with pytest.raises(gc.GraphcError, match=r"produced NaN: .*\n  reading a constant "
                                                 r"\(3,\) float64 that holds NaN \(built at "
                                                 r"test_probe24.py:\d+\)\n  at test_probe24"):
            f(np.ones(3))
    mod = load_module(f.export(tmp_path / "nan_const.py"), "nan_const")
    with pytest.raises(Exception, match="reading a constant .* holds NaN"):
        mod.run(np.ones(3))
    g = gc.function([x], gc.maximum(x, gc.constant(-np.inf)) * 2, check_numerics=True)
    np.testing.assert_array_equal(g(np.ones(3)), 2 * np.ones(3))   # an inf that is fine
    with pytest.raises(gc.GraphcError, match="produced Inf"):
        g(np.full(3, 1e308))
