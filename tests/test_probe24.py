"""probe24: what the last probes left open (x * 0 and x - x folded to zeros in floats, a float
attn_mask row of -inf, check_numerics blaming a step for the user's NaN constant) and the bugs
a hostile probe of values found (gradients through loops reading W and values made from W, a
GEMM step's product overwritten in its own fused step), one test each, failing before its fix;
gradient penalties through the nn layers; Winograd at 1 BLAS thread against im2col at 2. The
random generators: tests/test_probe24_models.py, tests/test_probe24_random.py.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import evaluate
from tests.helpers import load_module, numeric_grad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# gradients of gradients ------------------------------------------------------------------

def test_gradient_of_a_gradient_through_a_scan_reading_w_and_its_transpose():
    """tanh(x_t @ W + h) over one step: the first gradient's loop reads W and W.T (made
    outside it, from W); d/dW of |dL/dx|^2 counted the W.T part twice (the loop's VJP
    differentiated W's input with respect to W too, then W.T's part was added again):
    1.2417 for 0.5096, in eval and compiled. Now the loop's VJP takes partial derivatives."""
    x = gc.placeholder((1, 1, 1), "float64", "x")
    w = gc.variable(np.array([[0.5]]), name="W")
    h_last, _ = gc.scan(lambda h, xt: (gc.tanh(xt @ w + h),) * 2,
                        gc.constant(np.zeros((1, 1))), x)
    gx = gc.grad(gc.sum(h_last), [x])[0]
    g = gc.grad(gc.sum(gx * gx), [w])[0]
    t = np.tanh(0.4)
    want = 2 * (1 - t * t) * 0.5 * ((1 - t * t) - 0.5 * 2 * t * (1 - t * t) * 0.8)
    a = np.full((1, 1, 1), 0.8)
    for got in (g.eval({x: a}), gc.function([x], g)(a), gc.function([x], g, optimize=False)(a)):
        np.testing.assert_allclose(got, [[want]], rtol=1e-13)


def test_gradient_through_a_scan_reading_w_and_a_value_made_from_w_outside_it():
    """The same mechanism at first order: a body reading w and w * w (computed before the
    loop) gave d/dw as 1.4066 for 0.7517 (the unrolled loop's), counting w * w's part twice."""
    a = np.array([[0.1, 0.2], [0.3, -0.4], [0.5, 0.6]])
    x = gc.placeholder((3, 2), "float64", "x")
    w = gc.variable(np.array([0.5, -0.3]), name="w")
    w2 = w * w
    h, _ = gc.scan(lambda h, xt: (gc.tanh(h * w + xt * w2),) * 2, gc.constant(np.zeros(2)), x)
    unrolled = gc.constant(np.zeros(2))
    for t in range(3):
        unrolled = gc.tanh(unrolled * w + x[t] * w2)
    outs = gc.grad(gc.sum(h), [w]) + gc.grad(gc.sum(unrolled), [w])
    got, want = evaluate(outs, {x: a})
    np.testing.assert_allclose(want, [0.75174652, -0.48726838], rtol=1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-13)
    for optimize in (True, False):
        got, _ = gc.function([x], outs, optimize=optimize)(a)
        np.testing.assert_allclose(got, want, rtol=1e-13)


def test_an_attention_decoder_loop_reading_encoder_states_made_from_its_weight():
    """A realistic case of it: each step attends over encoder states tanh(x @ W) computed
    before the loop and also reads W and h0 (its own init): dL/dW was off by 3.2 (first
    order), the gradient of |dL/dx|^2 by 15.9; now equal to the unrolled loop's."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((3, 2, 3), "float64", "x")
    h0 = gc.placeholder((2, 3), "float64", "h0")
    w = gc.variable(rng.standard_normal((3, 3)) * 0.5, name="W")
    enc = gc.tanh(gc.transpose(x, (1, 0, 2)) @ w)                      # (B, T, D)

    def step(h, xt):
        a = gc.softmax(gc.sum(enc * gc.expand_dims(h, 1), axis=-1), axis=-1)
        hn = gc.tanh(xt @ w + gc.sum(enc * gc.expand_dims(a, -1), axis=1) + h0 * 0.1)
        return hn, hn

    def derived(h_last, ys):
        first = gc.grad(gc.sum(h_last * h_last) + gc.sum(ys), [w, x, h0])
        return first + gc.grad(gc.sum(first[1] * first[1]), [w, h0])
    h, rows = h0, []
    for t in range(3):
        h, y = step(h, x[t])
        rows.append(y)
    outs, want_outs = derived(*gc.scan(step, h0, x)), derived(h, gc.stack(rows))
    feeds = {x: rng.standard_normal((3, 2, 3)), h0: rng.standard_normal((2, 3))}
    want = evaluate(want_outs, feeds)
    for got in (evaluate(outs, feeds), gc.function([x, h0], outs)(*feeds.values())):
        for g, w_ in zip(got, want):
            np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-12)


LAYERS = {
    "dense_gelu": (lambda: nn.Dense(3, "gelu", seed=0), (2, 4), {}),
    "dense_elu": (lambda: nn.Dense(3, "elu", seed=0), (2, 4), {}),
    "dense_softplus": (lambda: nn.Dense(3, gc.softplus, seed=0), (2, 4), {}),
    "layernorm": (lambda: nn.LayerNorm(), (2, 4), {}),
    "batchnorm": (lambda: nn.BatchNorm(), (4, 3), {"training": True}),
    "attention": (lambda: nn.MultiHeadAttention(2, causal=True, seed=0), (2, 3, 4), {}),
    "conv": (lambda: nn.Conv2D(2, 3, stride=2, padding=1, activation="tanh", seed=0),
             (2, 2, 5, 5), {}),
    "conv_pool": (lambda: nn.Sequential([nn.Conv2D(2, 3, padding=1, activation="tanh"),
                                         nn.MaxPool2D(2)], seed=0), (1, 2, 5, 6), {}),
    "gru": (lambda: nn.GRU(3, return_sequences=True, seed=0), (2, 3, 2), {}),
    "lstm": (lambda: nn.LSTM(3, seed=0), (2, 3, 2), {}),
    "rnn": (lambda: nn.SimpleRNN(3, seed=0), (2, 3, 2), {}),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradient_penalty_through_nn_layers_matches_finite_differences(name):
    """A gradient penalty (WGAN-GP's |d out / d x|^2) plus the output's square: its
    gradients with respect to x and every weight, compiled and evaluated, against central
    differences of the compiled penalty in float64 (the recurrent layers failed: above)."""
    make, shape, kw = LAYERS[name]
    rng = np.random.default_rng(0)
    layer = make()
    x = gc.placeholder(shape, "float64", "x")
    out = layer(x, **kw)
    r = gc.constant(rng.standard_normal(out.shape))
    gx = gc.grad(gc.sum(out * r), [x])[0]
    penalty = gc.sum(gx * gx) + 0.1 * gc.sum(out * out)
    params = [p for p in layer.params if not p.name.endswith("b_k")]   # 0 but for rounding
    grads = gc.grad(penalty, [x] + params)
    a = rng.standard_normal(shape)
    cost = gc.function([x], penalty, optimize=False)
    want = [numeric_grad(lambda _: float(cost(a)), arr) for arr in [a] + [p.value for p in params]]
    for got in (gc.function([x], grads)(a), evaluate(grads, {x: a})):
        for k, (g, w) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-9 + 1e-6 * np.abs(w).max(),
                                       err_msg=f"{name} gradient {k}")


# Winograd (1 BLAS thread) against im2col (2) -----------------------------------------------

CONV_THREADS = r'''
import sys
import numpy as np, graphc as gc
from graphc.ir import evaluate
from graphc.runtime import blas
rng = np.random.default_rng(0)
got = {}
for k, (c, h, w_, p, dt) in enumerate([(32, 24, 22, 1, "float32"), (24, 27, 25, 0, "float64"),
                                        (24, 20, 21, 2, "float32")]):
    x = gc.placeholder((None, c, h, w_), dt, "x")
    w1 = gc.variable((rng.normal(size=(c, c, 3, 3)) * 0.1).astype(dt), name="w1")
    w2 = gc.variable((rng.normal(size=(c, c, 3, 3)) * 0.1).astype(dt), name="w2")
    y = gc.conv2d(gc.tanh(gc.conv2d(x, w1, padding=p)), w2, padding=(1, 0))
    outs = [y] + gc.grad(gc.sum(y * y), [x, w1, w2])
    f = gc.function([x], outs)
    for n in (16, 3, 16):
        a = rng.normal(size=(n, c, h, w_)).astype(dt)
        res = f(a)
        if n == 3:
            for g, r in zip(res, evaluate(outs, {x: a})):
                tol = 1e-9 if dt == "float64" else 1e-4
                np.testing.assert_allclose(g, r, rtol=0, atol=tol * np.abs(r).max())
        got.update({f"{k}_{n}_{j}": v for j, v in enumerate(res)})
    got[f"{k}_winograd"] = np.array(f.source.count("winograd_"))
np.savez(sys.argv[1], **got)
print(blas.threads())
'''


def test_winograd_at_one_blas_thread_equals_im2col_at_two(tmp_path):
    """The same conv stacks (forward, input and weight gradients; 16-32 channels, odd maps,
    padding 0-2 and (1, 0), batches 16, 3, 16 through one Function) in two processes: at 1
    BLAS thread the lowering picks Winograd, at 2 im2col; both equal eval and each other."""
    results = []
    for threads in (1, 2):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), PYTHONPATH=ROOT)
        path = tmp_path / f"t{threads}.npz"
        out = subprocess.run([sys.executable, "-c", CONV_THREADS, str(path)], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0 and out.stdout.strip() == str(threads), out.stderr[-2000:]
        results.append(dict(np.load(path)))
    one, two = results
    assert all(one[f"{k}_winograd"] for k in range(3)) and not any(
        two[f"{k}_winograd"] for k in range(3))
    for key, a in one.items():
        if "winograd" not in key:
            tol = 1e-9 if a.dtype == np.float64 else 2e-4
            np.testing.assert_allclose(a, two[key], rtol=0, atol=tol * np.abs(two[key]).max(),
                                       err_msg=key)


# a GEMM step that cannot write over c ------------------------------------------------------

def test_a_scaled_sum_with_a_product_into_a_new_buffer_keeps_the_product(monkeypatch):
    """k * c - x @ W (and k * c - sum(g, 0)) as one BLAS step when c may not be overwritten
    (c read later, or the result an output): the product went into the result's buffer, the
    fused body then wrote k * c there first and subtracted it from itself: 0 (a momentum
    velocity as an output, a scaled residual). Now the product has a scratch buffer."""
    from graphc.runtime import blas
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 24), "float64", "x")
    w = gc.variable(rng.standard_normal((24, 24)), name="W")
    v = gc.variable(rng.standard_normal(24), name="v")
    h = gc.tanh(x)
    g = x @ w
    velocity = 0.9 * v - 0.1 * gc.sum(g * h, axis=0)
    outs = [0.5 * h - x @ w, h * 2, 0.25 * w + gc.transpose(x) @ g, velocity,
            0.5 * v - gc.sum(h, axis=0)]
    start = v.value.copy()
    for work in (blas.MIN_WORK, 0):          # at 0 every product pays as a BLAS step
        monkeypatch.setattr(blas, "MIN_WORK", work)
        for n in (32, 5, 32):
            a = rng.standard_normal((n, 24))
            v.value = start.copy()
            want = evaluate(outs, {x: a})
            for updates in ([], [(v, velocity)]):
                v.value = start.copy()
                got = gc.function([x], outs, updates=updates)(a)
                for k, (g_, w_) in enumerate(zip(got, want)):
                    np.testing.assert_allclose(g_, w_, rtol=1e-12, atol=1e-12,
                                               err_msg=f"MIN_WORK {work} batch {n} out {k}")
            np.testing.assert_allclose(v.value, want[3], rtol=1e-12, atol=1e-12)
