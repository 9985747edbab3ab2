"""probe23: a hostile probe of what landed on 2026-11-27 evening (shared softplus/sigmoid parts,
a fused body reading a broadcast of one element, the conv lowering at 2 BLAS threads, as_node's
scalar cache, the newest nn masks and states); one test per bug found, each failing before its
fix, and random graphs over the new parts (compiled vs unoptimized vs evaluated).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.ir import evaluate
from tests.helpers import load_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# as_node: a Python int past int64 beside a float node ---------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_python_int_past_int64_beside_a_float_is_that_float(dtype):
    """2**70 * x is what NumPy gives (was a raw TypeError from np.isfinite of an object array);
    2**70 as a float constant too; past the float's range it is a GraphcError naming the line."""
    x = gc.placeholder((2,), dtype, "x")
    for _ in range(2):                         # the second conversion comes from the cache
        y = x * 2 ** 70
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(gc.function([x], y)(np.array([1, -0.5], dtype)),
                                      np.array([1, -0.5], dtype) * np.array(2 ** 70, dtype))
    assert gc.constant(2 ** 70, dtype).data == np.array(2 ** 70, dtype)
    np.testing.assert_array_equal(gc.constant([2 ** 70, 1], dtype).data,
                                  np.array([2 ** 70, 1], dtype))
    with pytest.raises(gc.GraphcError, match=r"does not fit .*\n.*test_probe23.py:\d+"):
        gc.constant(2 ** 200, "float32")


# dims known only at run time do not broadcast against each other ------------------------

def test_an_unknown_dim_fed_1_against_a_larger_one_is_refused_everywhere():
    """x (None, 3) fed (1, 3) times y (None, 3) fed (4, 3): eval broadcast it (and x's
    gradient came back (4, 3)); the optimizer took x's shape for the product's, so compiled
    broadcast_to(c, z) and size(z) were (1, 3) and 3 against eval's (4, 3) and 12. Now a
    GraphcError naming the op, the shapes and the line, in eval, compiled and unoptimized;
    equal batches and a dim declared 1 broadcast as before (gradient summed to (1, 3))."""
    x = gc.placeholder((None, 3), "float64", "x")
    y = gc.placeholder((None, 3), "float64", "y")
    z = gc.exp(x) * y
    outs = [gc.broadcast_to(gc.constant(np.ones(3)), z), gc.size(z),
            gc.grad(gc.sum(z * 2), [x])[0]]
    a, b = np.full((1, 3), 0.5), np.ones((4, 3))
    runs = [lambda: evaluate(outs, {x: a, y: b}), lambda: gc.function([x, y], outs)(a, b),
            lambda: gc.function([x, y], outs, optimize=False)(a, b)]
    for run in runs:
        with pytest.raises(gc.GraphcError, match=r"mul\(\(1, 3\), \(4, 3\)\): the input "
                                                 r"declared \(\?, 3\) is 1 along axis 0(.|\n)*"
                                                 r"test_probe23.py:\d+"):
            run()
    f = gc.function([x, y], outs)
    for got, want in zip(f(b * 0.5, b), evaluate(outs, {x: b * 0.5, y: b})):
        np.testing.assert_allclose(got, want, rtol=1e-14)
    w = gc.placeholder((1, 3), "float64", "w")
    g = gc.grad(gc.sum(gc.exp(w) * y), [w])[0]
    for got in (g.eval({w: a, y: b}), gc.function([w, y], g)(a, b)):
        np.testing.assert_allclose(got, 4 * np.exp(a), rtol=1e-14)



def test_an_rnn_initial_state_declared_unknown_fed_for_one_example_is_refused():
    """h0 declared (None, 4) fed (1, 4) for a batch of 2: eval gave h0's gradient as (2, 4),
    compiled failed inside the loop (scan: all input arrays must have the same shape, as the
    optimizer dropped the broadcast_to it took for a no-op). Now refused at the broadcast,
    naming the line; declared (1, 4) it broadcasts and its gradient is (1, 4)."""
    from graphc import nn
    x = gc.placeholder((None, None, 3), "float64", "x")
    rng = np.random.default_rng(0)
    a, h = rng.standard_normal((2, 3, 3)), rng.standard_normal((1, 4))
    for shape in ((None, 4), (1, 4)):
        h0 = gc.placeholder(shape, "float64", "h0")
        rnn = nn.GRU(4, return_sequences=True, return_state=True, seed=0)
        outs = list(rnn(x, initial_state=h0))
        outs += gc.grad(gc.sum(outs[0]), [h0])
        runs = [lambda: evaluate(outs, {x: a, h0: h}),
                lambda: gc.function([x, h0], outs)(a, h),
                lambda: gc.function([x, h0], outs, optimize=False)(a, h)]
        if shape[0] is None:
            for run in runs:
                with pytest.raises(gc.GraphcError, match=r"\([12], 4\), \([12], 4\)\): the input "
                                                         r"declared \(\?, 4\) is 1(.|\n)*"
                                                         r"test_probe23.py:\d+"):
                    run()
            continue
        want = runs[0]()
        assert want[-1].shape == (1, 4)
        for got in (runs[1](), runs[2]()):
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-13)

# random graphs over the shared softplus/sigmoid parts and one-element broadcasts ----------

def random_pair_graph(seed: int):
    """Elementwise graphs mixing softplus/sigmoid pairs of one z with broadcasts of one
    element (a 0-d, (1,) or (1, 1) feed, an int variable, a keepdims sum, a bool feed) as
    fused inputs, where-masks and multiply-by-mask forms; z's gradient of a product."""
    rng = np.random.default_rng(seed)
    dt = ("float32", "float64")[seed % 2]
    x = gc.placeholder((None, 3), dt, "x")
    s = gc.placeholder(((), (1,), (1, 1))[seed % 3], dt, "s")
    k = gc.placeholder((), "bool", "k")
    vi = gc.variable(np.array([3], np.int32), name="vi")

    def ones(n):
        return gc.broadcast_to(n, x)
    pool = [x, ones(s), gc.cast(ones(vi), dt), ones(gc.sum(x * x, keepdims=True)),
            gc.where(ones(gc.reshape(k, (1, 1))), x, -x), x * gc.cast(ones(k), dt),
            gc.exp(ones(s)) + x]
    makers = [lambda a, b: gc.softplus(a) * gc.sigmoid(a), lambda a, b: a * b,
              lambda a, b: gc.where(a > b, a, b * 2),
              lambda a, b: gc.maximum(a, b) - gc.minimum(b, ones(s)),
              lambda a, b: a * gc.cast(b > 0, dt), lambda a, b: gc.tanh(a) + ones(s) * b,
              lambda a, b: gc.relu(a - b), lambda a, b: gc.softplus(a) + gc.sigmoid(b),
              lambda a, b: gc.cast(gc.cast(a, "int32"), dt) + b]
    for _ in range(rng.integers(3, 8)):
        a, b = (pool[rng.integers(len(pool))] for _ in range(2))
        pool.append(makers[rng.integers(len(makers))](a, b if b is not a else x))
    outs = pool[-2:] + [gc.grad(gc.sum(pool[-1] * pool[-2]), [x, s])[1]]
    return rng, dt, (x, s, k), outs


@pytest.mark.parametrize("seed", range(int(os.environ.get("GRAPHC_PROBE23", "0")) or 6))
def test_random_pairs_and_one_element_broadcasts_agree_everywhere(seed, tmp_path):
    rng, dt, (x, s, k), outs = random_pair_graph(seed)
    fa, fb = gc.function([x, s, k], outs), gc.function([x, s, k], outs, optimize=False)
    tol = 1e-9 if dt == "float64" else 3e-4
    mod = None
    for n in (4, 1, 0, 4):
        feeds = ((rng.standard_normal((n, 3)) * 3).astype(dt),
                 rng.standard_normal(s.shape).astype(dt), np.array(rng.random() < 0.5))
        with np.errstate(all="ignore"):
            want = evaluate(outs, dict(zip((x, s, k), feeds)))
            runs = [fa(*feeds), fb(*feeds)]
            if mod is None:           # the export runs the shapes of its Function's calls
                mod = load_module(fa.export(tmp_path / f"pairs{seed}.py"), f"pairs{seed}")
            if n == 4:
                runs.append(mod.run(*feeds))
        for got in runs:
            for g, w in zip(got, want):
                assert g.shape == w.shape and g.dtype == w.dtype
                np.testing.assert_allclose(g, w, rtol=tol, atol=10 * tol)


# softplus/sigmoid of one z at the edges of the floats ---------------------------------------

EDGES = [np.inf, -np.inf, np.nan, -0.0, 0.0, 1e-40, -1e-40, 3e38, -3e38, 88.7, -88.7, 20, -20,
         1e-310, 710, -746]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(), (1,), (0,), (2, 0, 3), (1, 1), (None, 2)])
def test_shared_softplus_sigmoid_at_special_values_match_eval(dtype, shape):
    """±inf, NaN, -0.0, denormals, huge z; z a feed of every shape and a variable; first and
    second derivatives: compiled (with the shared parts) and unoptimized equal eval."""
    x = gc.placeholder(shape, dtype, "x")
    w = gc.variable(np.array([0.3, -2.0, np.inf], dtype), name="w")
    outs = [gc.softplus(x), gc.sigmoid(x), gc.softplus(w) * gc.sigmoid(w),
            gc.sigmoid(x * 2) + gc.softplus(x * 2)]
    g1 = gc.grad(gc.sum(outs[0] * outs[1]), [x])[0]
    outs += [g1, gc.grad(gc.sum(g1 * g1), [x])[0]]
    size = tuple(2 if d is None else d for d in shape)
    with np.errstate(all="ignore"):
        a = np.resize(np.array(EDGES), int(np.prod(size))).reshape(size).astype(dtype)
        want = evaluate(outs, {x: a})
        runs = [gc.function([x], outs)(a), gc.function([x], outs, optimize=False)(a)]
    for got in runs:
        for g, r in zip(got, want):
            assert g.dtype == r.dtype and g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-6 if dtype == "float32" else 1e-13, atol=0)


def test_shared_pairs_inside_a_scan_body_and_its_gradient():
    xs = gc.placeholder((None, None, 3), "float64", "xs")
    w = gc.variable(np.eye(3) * 0.7, name="W")

    def body(h, x):
        z = h @ w + x
        hn = gc.sigmoid(z) * gc.softplus(z) - gc.softplus(-z) * gc.sigmoid(-z)
        return hn, gc.sigmoid(hn) + gc.softplus(hn)
    h_last, hs = gc.scan(body, gc.constant(np.zeros((2, 3))), xs)
    loss = gc.sum(hs) + gc.sum(h_last * h_last)
    outs = [h_last, hs] + gc.grad(loss, [w, xs])
    f, fb = gc.function([xs], outs), gc.function([xs], outs, optimize=False)
    rng = np.random.default_rng(1)
    for t in (4, 0, 3):
        a = rng.standard_normal((t, 2, 3)) * 5
        if t == 4:
            a[0, 0] = [np.inf, -np.inf, np.nan]
        with np.errstate(all="ignore"):
            want = evaluate(outs, {xs: a})
            for got in (f(a), fb(a)):
                for g, r in zip(got, want):
                    np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12)
    a = rng.standard_normal((3, 2, 3))
    fl = gc.function([xs], loss)
    num = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        up, down = a.copy(), a.copy()
        up[i] += 1e-6
        down[i] -= 1e-6
        num[i] = (fl(up) - fl(down)) / 2e-6
    np.testing.assert_allclose(f(a)[3], num, rtol=1e-6, atol=1e-7)


# the conv lowering at 2 BLAS threads ----------------------------------------------------

CONV2 = r'''
import numpy as np, graphc as gc
from graphc.ir import evaluate
from graphc.runtime import blas
assert blas.threads() == 2, blas.threads()
rng = np.random.default_rng(0)
for (c, co, k, s, p, h, w_, dt) in [(3, 16, 3, 1, 1, 9, 7, "float32"),
        (16, 16, 3, 1, 1, 12, 12, "float64"), (2, 5, 3, 2, 1, 11, 8, "float64"),
        (4, 8, 5, 1, 2, 7, 9, "float32"), (5, 6, 3, 3, 2, 13, 10, "float64"),
        (1, 1, 2, 2, 0, 4, 4, "float64")]:
    x = gc.placeholder((None, c, h, w_), dt, "x")
    w1 = gc.variable((rng.normal(size=(co, c, k, k)) * 0.3).astype(dt), name="w1")
    w2 = gc.variable((rng.normal(size=(co, co, 3, 3)) * 0.3).astype(dt), name="w2")
    y2 = gc.conv2d(gc.relu(gc.conv2d(x, w1, stride=s, padding=p)), w2, stride=1, padding=1)
    outs = [y2] + gc.grad(gc.sum(y2 * y2), [x, w1, w2])
    f = gc.function([x], outs)
    tol = 1e-10 if dt == "float64" else 2e-3
    for n in (2, 5, 1, 0, 3):
        a = rng.normal(size=(n, c, h, w_)).astype(dt)
        for g, r in zip(f(a), evaluate(outs, {x: a})):
            assert g.shape == r.shape and g.dtype == r.dtype
            np.testing.assert_allclose(g, r, rtol=tol, atol=tol * max(1, np.abs(r).max(initial=0)))
    assert "chunks=False" in f.source
print("ok")
'''


def test_conv_stacks_at_two_blas_threads_match_eval_over_batch_sizes():
    """The whole-batch input gradient (chunks=False) the lowering picks at 2 BLAS threads:
    odd maps, strides, padding, 2x2/5x5 kernels, float32/64, batches 2, 5, 1, 0, 3 through
    one Function (its workspaces made at the first), in a process started at 2 threads."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", CONV2], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
