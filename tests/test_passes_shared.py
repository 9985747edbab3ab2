"""Elementwise groups doing less (issue 17, logreg): softplus(z) and sigmoid(z) of one z from
shared parts (passes/fuse.py `share_softplus_sigmoid`), and a fused body reading a broadcast
of one element as that element (runtime/fused_lowering.py `unbroadcast`). Values are checked
against float64 NumPy, with the stability range (|z| up to 1e4, infinities, NaN); the random
differential tests (test_fuzz*) cover both on random graphs with gradients."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph
from graphc.passes import DEFAULT_PIPELINE, fuse_elementwise, optimize

RNG = np.random.default_rng(17)
# sigmoid's own compiled form, 1 / (1 + e^-z) (runtime/emit.py), not the shared one
OWN_SIGMOID = re.compile(r"xp\.exp\((\w+), out=\1\); xp\.add\(\1, \w+, out=\1\); "
                         r"xp\.divide\(\w+, \1, out=\1\)")
EDGES = [0.0, -0.0, 1e-8, -1e-8, 0.5, -0.5, 3.0, -3.0, 15.0, -15.0, 20.0, -20.0, 88.0, -88.0,
         100.0, -100.0, 750.0, -750.0, 1e4, -1e4, np.inf, -np.inf, np.nan]


def softplus64(z):
    with np.errstate(invalid="ignore"):
        return np.logaddexp(0.0, z.astype(np.float64))


def sigmoid64(z):
    z = z.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(z >= 0, 1 / (1 + np.exp(-z)), np.exp(z) / (1 + np.exp(z)))


def close(got, want, dtype):
    """Within a few units in the last place of the true value, or the dtype's tiny."""
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=8 * eps, atol=2 * eps)


def values(n: int, dtype) -> np.ndarray:
    edges = np.array(EDGES, dtype)
    return np.concatenate([edges, (RNG.normal(size=3 * n) * 6).astype(dtype)]).reshape(-1, 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softplus_and_sigmoid_of_one_value_share_its_parts(dtype):
    x = gc.placeholder((None, 1), dtype, "x")
    z = x * gc.constant(np.array(1.0, dtype))
    f = gc.function([x], [gc.softplus(z), gc.sigmoid(z)])
    for n in (7, 1, 7, 30):
        a = values(n, dtype)
        sp, sg = f(a)
        assert sp.dtype == sg.dtype == np.dtype(dtype)
        close(sp, softplus64(a), dtype)
        close(sg, sigmoid64(a), dtype)
    src = f.source
    assert not OWN_SIGMOID.search(src) and "xp.absolute" not in src, src   # the shared form
    assert src.count("xp.exp(") == 2 and src.count("xp.log1p(") == 1, src
    _, rep = optimize(Graph([gc.softplus(z), gc.sigmoid(z)]), report=True)
    assert rep.rules["share_softplus_sigmoid"] == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_logistic_loss_and_its_gradient_match_numpy(dtype):
    """The workload's pattern: mean(softplus(x w + b) - y z) (here from the hand-written
    binary cross-entropy), its gradient a sigmoid of the same z; optimized vs optimized
    without fusion, several calls with updates, two batch sizes."""
    no_fusion = [p for p in DEFAULT_PIPELINE if p is not fuse_elementwise]
    w0, b0 = RNG.normal(size=(6, 1)).astype(dtype), np.array([0.3], dtype)
    fs, ws = [], []
    for opt in (True, False):
        x = gc.placeholder((None, 6), dtype, "x")
        y = gc.placeholder((None, 1), dtype, "y")
        w, b = gc.variable(w0.copy(), name="w"), gc.variable(b0.copy(), name="b")
        ws.append(w)
        p = gc.sigmoid(x @ w + b)
        loss = gc.mean(-(y * gc.log(p) + (1.0 - y) * gc.log(1.0 - p)))
        gw, gb = gc.grad(loss, [w, b])
        lr = gc.constant(np.array(0.5, dtype))
        fs.append(gc.function([x, y], loss, updates=[(w, w - lr * gw), (b, b - lr * gb)],
                              optimize=True if opt else no_fusion))
    assert not OWN_SIGMOID.search(fs[0].source) and OWN_SIGMOID.search(fs[1].source)
    wn, bn = w0.astype(np.float64), b0.astype(np.float64)
    for n in (9, 4, 9, 4):
        xs = (RNG.normal(size=(n, 6)) * 3).astype(dtype)
        ys = (RNG.random((n, 1)) < 0.5).astype(dtype)
        got, plain = fs[0](xs, ys), fs[1](xs, ys)
        z = xs.astype(np.float64) @ wn + bn
        want = np.mean(np.logaddexp(0, z) - ys * z)
        g = (sigmoid64(z) - ys) / n
        wn, bn = wn - 0.5 * xs.T.astype(np.float64) @ g, bn - 0.5 * g.sum(axis=0)
        tol = 1e-12 if dtype == "float64" else 2e-5
        assert float(got) == pytest.approx(want, rel=tol, abs=tol)
        assert float(plain) == pytest.approx(want, rel=tol, abs=tol)
    for w in ws:
        np.testing.assert_allclose(w.value, wn, rtol=tol, atol=tol)


def test_one_of_the_two_alone_or_other_dtypes_keep_their_own_forms():
    x = gc.placeholder((None, 3), "float32", "x")
    h = gc.placeholder((None, 3), "float16", "h")
    only_sp = gc.function([x], gc.softplus(x) * gc.constant(np.float32(2.0)))
    only_sg = gc.function([x], gc.sigmoid(x) * gc.constant(np.float32(2.0)))
    other_z = gc.function([x], [gc.softplus(x + gc.constant(np.float32(1.0))),
                                gc.sigmoid(x)])
    half = gc.function([h], [gc.softplus(h), gc.sigmoid(h)])
    a = values(5, "float32")[:36].reshape(-1, 3)
    close(only_sp(a) / 2, softplus64(a), "float32")
    close(only_sg(a) / 2, sigmoid64(a), "float32")
    sp, sg = other_z(a)
    close(sp, softplus64(a + np.float32(1.0)), "float32")
    close(sg, sigmoid64(a), "float32")
    small = a[np.abs(a).max(axis=1) < 1e4]
    sp, sg = half(small.astype(np.float16))
    np.testing.assert_allclose(sp, softplus64(small.astype(np.float16)), rtol=2e-3, atol=1e-3)
    np.testing.assert_allclose(sg, sigmoid64(small.astype(np.float16)), rtol=2e-3, atol=1e-3)
    assert "xp.absolute" in only_sp.source and "xp.minimum" not in only_sp.source
    assert OWN_SIGMOID.search(only_sg.source)
    assert OWN_SIGMOID.search(other_z.source) and "xp.absolute" in other_z.source
    assert "xp.minimum" not in half.source


def test_the_rewrite_preserves_values_of_random_pairs_and_gradients():
    """softplus/sigmoid pairs inside random elementwise chains, with other readers of z and
    of the pair, compiled with the default pipeline vs without fusion vs evaluated."""
    no_fusion = [p for p in DEFAULT_PIPELINE if p is not fuse_elementwise]
    for trial in range(12):
        dtype = ("float32", "float64")[trial % 2]
        x = gc.placeholder((None, 4), dtype, "x")
        c = gc.constant(RNG.normal(size=(4,)).astype(dtype))
        z = [x * c, x + c, gc.tanh(x) * 30, x - c * x][trial % 4]
        sp, sg = gc.softplus(z), gc.sigmoid(z)
        outs = [[sp * sg, sp - z, sg * z + sp][trial % 3], gc.grad(gc.sum(sp * c), [x])[0]]
        fa = gc.function([x], outs)
        fb = gc.function([x], outs, optimize=no_fusion)
        tol = 1e-12 if dtype == "float64" else 2e-5
        for n in (5, 2, 5):
            a = (RNG.normal(size=(n, 4)) * (1 + 40 * (trial % 3))).astype(dtype)
            a[0, :2] = 1e4, -1e4
            want = [o.eval({x: a}) for o in outs]
            for got, ref, ev in zip(fa(a), fb(a), want):
                np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
                np.testing.assert_allclose(got, ev, rtol=tol, atol=tol)
        assert fa.source.count("xp.tanh(") == (trial % 4 == 2), fa.source   # z's own tanh


def test_a_fused_body_reads_a_broadcast_of_one_element_as_that_element():
    """A 0-d and a (1,) variable and a (1, 1) value computed per call, each broadcast to the
    batch's shape: the fused calls read them as they are (NumPy broadcasts them to each call's
    output); values right at several batch sizes (1 included) and after new variable values."""
    x = gc.placeholder((None, 3), "float64", "x")
    v, u = gc.variable(np.array(2.0), name="v"), gc.variable(np.array([0.5]), name="u")
    s = gc.sum(x * x, keepdims=True)
    y = gc.exp(x) * gc.broadcast_to(v, x) + gc.broadcast_to(u, x) * x - gc.broadcast_to(s, x)
    f = gc.function([x], y, optimize=["fuse_elementwise"])
    for n, vv in ((4, 2.0), (1, 2.0), (4, -3.0), (6, 0.25)):
        v.value = np.array(vv)
        a = RNG.normal(size=(n, 3))
        want = np.exp(a) * vv + 0.5 * a - (a * a).sum()
        np.testing.assert_allclose(f(a), want, rtol=1e-13, atol=1e-13)
        fused = next(line for line in f.source.splitlines() if "xp.exp(" in line)
        assert "broadcast" not in fused and " h" not in fused and "(h" not in fused, f.source
