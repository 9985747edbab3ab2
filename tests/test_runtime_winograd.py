"""Winograd convolution (runtime/winograd.py): its kernels against float64 NumPy, and compiled
conv stacks that use it (forced on small channel counts) against eval: odd, even and tiny
maps, padding 0-2, batches 1 and 3, float32 and float64, two calls of one plan, optimized or
not, under check_numerics, second-order gradients and the standalone export.

Tolerance: F(4x4, 3x3)'s transforms (constants up to 8 and 1/24) round ~10x more than im2col
(measured worst ~1e-5 of the largest result in float32), so float32 comparisons allow 1e-4 of
the largest value; float64 ones 1e-10."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS
from graphc.runtime import blas, winograd
from tests.test_export import check_export

RNG = np.random.default_rng(17)
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def close(got, want, dtype):
    """got equals want up to TOL[dtype] of want's largest magnitude (Winograd's error scales
    with the result's range, not each entry)."""
    scale = max(1.0, float(np.abs(want).max())) if np.size(want) else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


def reference(x, w, g, p):
    """float64 forward, input and weight gradients of the stride-1 convolution."""
    attrs = dict(stride=(1, 1), padding=(p, p))
    x, w, g = (a.astype(np.float64) for a in (x, w, g))
    return (OPS["conv2d"].kernel(x, w, **attrs),
            OPS["conv2d_grad_input"].kernel(g, w, x, **attrs),
            OPS["conv2d_grad_weight"].kernel(x, g, w, **attrs))


def last(a):
    """a stored channels-last (the planner's layout for some buffers)."""
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [0, 1, 2])
def test_kernels_match_float64_numpy(dtype, padding):
    """Every map size from 1 to 9 (whole tiles, partial tiles, one tile bigger than the
    map), channels-last or not, the three steps sharing transforms and each alone, two calls
    of the same workspaces with new values (nothing stale is reused)."""
    attrs = dict(stride=(1, 1), padding=(padding, padding))
    for n, c, co, h, wd in itertools.product((1, 3), (1, 5), (2, 6), (1, 3, 4, 6, 9),
                                             (1, 2, 5, 8)):
        ho, wo = h + 2 * padding - 2, wd + 2 * padding - 2
        if ho < 1 or wo < 1:
            continue
        fws, gws, ws_, shared, pool, alone = {}, {}, {}, {}, {}, {}
        for call in range(2):
            x = RNG.standard_normal((n, c, h, wd)).astype(dtype)
            x = last(x) if call else x
            w = RNG.standard_normal((co, c, 3, 3)).astype(dtype)
            g = RNG.standard_normal((n, co, ho, wo)).astype(dtype)
            y, dx, dw = reference(x, w, g, padding)
            out, gx, gw = (np.empty(a.shape, dtype) for a in (y, dx, dw))
            winograd.winograd_conv2d(x, w, **attrs, out=out, ws=fws, pool=pool)
            winograd.winograd_grad_input(g, w, x, **attrs, out=gx, ws=ws_, pool=pool, fwd=fws,
                                         shared=shared, fill=True)
            winograd.winograd_grad_weight(x, g, w, **attrs, out=gw, ws=gws, pool=pool,
                                          fwd=fws, shared=shared, fill=False)
            for got, want in ((out, y), (gx, dx), (gw, dw)):
                close(got, want, dtype)
            gx2, gw2 = np.empty(dx.shape, dtype), np.empty(dw.shape, dtype)
            winograd.winograd_grad_input(g, w, x, **attrs, out=gx2, ws=alone)
            winograd.winograd_grad_weight(x, g, w, **attrs, out=gw2, ws={})
            close(gx2, dx, dtype)
            close(gw2, dw, dtype)


def test_the_forward_writes_its_channels_last_result_in_out_when_asked():
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((5, 4, 3, 3)).astype(np.float32)
    out, ws = np.empty((2, 5, 5, 4), np.float32), {}
    winograd.winograd_conv2d(x, w, stride=(1, 1), padding=(0, 0), out=out, ws=ws, nchw=False)
    assert np.shares_memory(ws["nhwc"], out)
    close(ws["nhwc"].transpose(0, 3, 1, 2), reference(x, w, np.zeros((2, 5, 5, 4)), 0)[0],
          np.float32)


def test_winograd_is_used_where_the_rule_says_it_pays():
    """The rule (measured: bench/winograd_rule.py) on typical and edge shapes."""
    def pays(x, w, stride, padding, dtype="float32"):
        return winograd.pays(x, w, stride, padding, dtype)

    assert pays((64, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0))      # cnn_b64's conv2
    assert not pays((4, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0))   # 4 images: too small
    assert pays((1024, 16, 4, 4), (16, 16, 3, 3), (1, 1), (1, 1))      # one whole tile
    assert not pays((1024, 1, 28, 28), (32, 1, 3, 3), (1, 1), (0, 0))  # one channel
    assert not pays((1024, 32, 13, 13), (8, 32, 3, 3), (1, 1), (0, 0))  # few out-channels
    assert not pays((1024, 32, 13, 13), (32, 32, 3, 3), (2, 2), (0, 0))  # strided
    assert not pays((1024, 32, 13, 13), (32, 32, 5, 5), (1, 1), (0, 0))  # 5x5
    assert not pays((1024, 32, 3, 3), (32, 32, 3, 3), (1, 1), (0, 0))  # a 1x1 map: 16x waste
    assert not pays((1024, 32, 2, 2), (32, 32, 3, 3), (1, 1), (0, 0))  # no output
    assert not pays((1024, 32, 8, 8), (32, 32, 3, 3), (1, 1), (0, 0))  # 6x6 in 8x8 tiles
    assert not pays((1024, 32, 15, 15), (32, 32, 3, 3), (1, 1), (0, 0))  # 13x13 in 16x16
    assert pays((1024, 32, 13, 13), (32, 32, 3, 3), (1, 1), (0, 0), "float64")
    assert not pays((1024, 32, 13, 13), (32, 32, 3, 3), (1, 1), (0, 0), "float16")
    # the BLAS on more threads than MAX_THREADS: im2col's large GEMMs use them
    for threads in (2, 4):
        assert not winograd.pays((64, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0), "float32",
                                 threads)
    assert winograd.pays((64, 32, 13, 13), (64, 32, 3, 3), (1, 1), (0, 0), "float32", 1)


def random_stack(seed: int, dtype):
    """A random stack of stride-1 3x3 convolutions (padding 0-2, maps 1-9, ReLU, a bias, a
    max-pool or not) with the gradients of a scalar loss: (x, shape, params, outputs)."""
    r = np.random.default_rng(seed)
    c, h, wd = int(r.choice([1, 3])), int(r.integers(1, 10)), int(r.integers(1, 10))
    x = gc.placeholder((None, c, h, wd), np.dtype(dtype).name, name="x")
    hid, params = x, []
    for k in range(int(r.integers(1, 3))):
        pad = int(r.integers(0, 3))
        if min(hid.shape[2:]) + 2 * pad < 3:
            pad = 2
        co = int(r.choice([2, 5]))
        w = gc.variable(r.standard_normal((co, hid.shape[1], 3, 3)).astype(dtype) / 3,
                        name=f"K{k}")
        params.append(w)
        hid = gc.conv2d(hid, w, padding=pad)
        if r.random() < 0.5:
            b = gc.variable(r.standard_normal((1, co, 1, 1)).astype(dtype), name=f"c{k}")
            params.append(b)
            hid = gc.relu(hid + b)
        if r.random() < 0.4 and min(hid.shape[2:]) >= 2:
            hid = gc.max_pool2d(hid, 2)
    loss = gc.sum(gc.tanh(hid) * hid)
    return x, (c, h, wd), params, [loss, hid] + list(gc.grad(loss, [x] + params))


@pytest.fixture
def everywhere(monkeypatch):
    """Winograd for every stride-1 3x3 convolution, whatever its channels and map."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MAX_WORK", 100.0)
    monkeypatch.setattr(winograd, "MIN_PRODUCTS", 0)
    monkeypatch.setattr(winograd, "MAX_THREADS", 1 << 20)      # whatever the BLAS runs on


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("optimize", [True, False])
def test_compiled_stacks_with_winograd_match_eval(everywhere, seed, dtype, optimize):
    x, shape, _, outs = random_stack(seed, dtype)
    f = gc.function([x], outs, optimize=optimize)
    for batch in (3, 1, 3):                   # two plans, one run twice
        xv = RNG.standard_normal((batch,) + shape).astype(dtype)
        want = [o.eval({x: xv}) for o in outs]
        for got, w in zip(f(xv), want):
            close(got, w, dtype)
    assert "xp.winograd_conv2d(" in f.source


@pytest.mark.parametrize("seed", range(3))
def test_compiled_stacks_with_winograd_under_check_numerics(everywhere, seed):
    x, shape, _, outs = random_stack(seed, np.float32)
    f = gc.function([x], outs, check_numerics=True)
    xv = RNG.standard_normal((2,) + shape).astype(np.float32)
    for got, w in zip(f(xv), [o.eval({x: xv}) for o in outs]):
        close(got, w, np.float32)
    assert "xp.winograd_conv2d(" in f.source


def test_the_three_steps_share_the_transforms(monkeypatch):
    """Where the rule picks Winograd by itself (the BLAS on one thread): the gradients read
    the forward's workspace and the second one reuses g's transformed tiles; values as
    eval's."""
    monkeypatch.setattr(blas, "threads", lambda: 1)
    x = gc.placeholder((None, 32, 23, 22), "float32", name="x")
    w = gc.variable(RNG.standard_normal((32, 32, 3, 3)).astype(np.float32) / 17, name="K")
    y = gc.conv2d(x, w, padding=1)
    loss = gc.sum(gc.tanh(y) * y)
    outs = [loss] + list(gc.grad(loss, [x, w]))
    f = gc.function([x], outs)
    xv = RNG.standard_normal((10, 32, 23, 22)).astype(np.float32)
    for got, want in zip(f(xv), [o.eval({x: xv}) for o in outs]):
        close(got, want, np.float32)
    src = f.source
    assert src.count("xp.winograd_") == 3 and "xp.conv2d" not in src
    assert src.count("fwd=") == 2 and "fill=True" in src and "fill=False" in src


def test_second_order_gradients_through_winograd(everywhere):
    x = gc.placeholder((None, 2, 6, 5), "float64", name="x")
    w = gc.variable(RNG.standard_normal((3, 2, 3, 3)) / 3, name="K")
    y = gc.conv2d(x, w, padding=1)
    gx = gc.grad(gc.sum(gc.tanh(y)), [x])[0]
    outs = [gc.grad(gc.sum(gx * gx), [w])[0], gx]
    f = gc.function([x], outs)
    xv = RNG.standard_normal((3, 2, 6, 5))
    for got, want in zip(f(xv), [o.eval({x: xv}) for o in outs]):
        close(got, want, np.float64)
    assert "xp.winograd_grad_input(" in f.source


def test_the_export_carries_the_winograd_kernels(everywhere, tmp_path):
    x = gc.placeholder((None, 3, 7, 7), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    K = gc.variable((RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), name="K")
    W = gc.variable((RNG.standard_normal((4 * 7 * 7, 3)) * 0.2).astype(np.float32), name="W")
    h = gc.relu(gc.conv2d(x, K, padding=1))
    loss = gc.mean(gc.softmax_cross_entropy(gc.reshape(h, (-1, 4 * 7 * 7)) @ W, y))
    params = [K, W]
    grads = gc.grad(loss, params)
    f = gc.function([x, y], loss, updates=[(p, p - 0.05 * g) for p, g in zip(params, grads)])
    data = [[RNG.standard_normal((5, 3, 7, 7)).astype(np.float32), RNG.integers(0, 3, 5)]
            for _ in range(3)]
    check_export(f, data[:1], data[1:], tmp_path, params, rtol=1e-5)
    text = (tmp_path / "export" / "step.py").read_text()
    assert "def winograd_conv2d(" in text and "def winograd_grad_weight(" in text


def test_conv_kernels_are_unchanged_where_winograd_does_not_pay():
    x = gc.placeholder((None, 1, 8, 8), "float32", name="x")
    w = gc.variable(RNG.standard_normal((4, 1, 3, 3)).astype(np.float32), name="K")
    f = gc.function([x], gc.sum(gc.conv2d(x, w)))
    f(RNG.standard_normal((2, 1, 8, 8)).astype(np.float32))
    assert "winograd" not in f.source and "xp.conv2d(" in f.source


@pytest.mark.parametrize("threads", [1, 2])
def test_the_lowering_asks_the_blas_threads(monkeypatch, threads):
    """The choice follows the BLAS's thread count when the plan is made: at one thread
    Winograd, at two im2col (one GEMM per step spread over the threads); values as eval's
    either way, for the loss and both gradients."""
    monkeypatch.setattr(blas, "threads", lambda: threads)
    x = gc.placeholder((None, 32, 13, 13), "float32", name="x")
    w = gc.variable(RNG.standard_normal((64, 32, 3, 3)).astype(np.float32) / 17, name="K")
    y = gc.conv2d(x, w)
    loss = gc.sum(gc.tanh(y) * y)
    outs = [loss] + list(gc.grad(loss, [x, w]))
    f = gc.function([x], outs)
    xv = RNG.standard_normal((64, 32, 13, 13)).astype(np.float32)
    for got, want in zip(f(xv), [o.eval({x: xv}) for o in outs]):
        close(got, want, np.float32)
    src = f.source
    if threads == 1:
        assert src.count("xp.winograd_") == 3 and "xp.conv2d" not in src
    else:
        assert "winograd" not in src and src.count("xp.conv2d") == 3
