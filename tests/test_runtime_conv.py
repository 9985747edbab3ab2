"""The compiled conv/pool kernels against the registered (reference) kernels: the fast paths
must give the same values as the first-maximum rule, ties and NaN included, in place too."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS
from graphc.runtime import blas, conv
from tests.helpers import eval_trajectory

RNG = np.random.default_rng(7)


def pool_case(kind: str, shape=(2, 3, 9, 8)):
    x = RNG.standard_normal(shape).astype(np.float32)
    if kind == "ties":
        x = np.round(x)                   # many equal maxima in a window
    elif kind == "nan":
        x[0, min(1, shape[1] - 1), 2, 3] = np.nan
    elif kind == "signed zeros":
        x[:] = -1.0
        x[:, :, 0, 0], x[:, :, 0, 1] = 0.0, -0.0
    return x


@pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "signed zeros"])
@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_max_pool_gradient_matches_the_first_maximum_rule(kind, last, in_place):
    x = pool_case(kind)
    size = stride = (2, 2)
    top = OPS["max_pool2d"].kernel(x, size=size, stride=stride)
    g = RNG.standard_normal(top.shape).astype(np.float32)
    want = OPS["max_pool2d_grad"].kernel(g, x, size=size, stride=stride)
    t = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))) if last else (lambda a: a)
    xs, gs, tops = t(x), t(g), t(top)
    out = xs.copy() if in_place else np.full(xs.shape, 7.0, np.float32)
    src = out if in_place else xs                     # in place: out is x itself
    conv.route(gs, src, tops, size, stride, out, {}, last)
    got = out.transpose(0, 3, 1, 2) if last else out
    np.testing.assert_array_equal(got, want)


def test_compiled_pool_gradient_may_overwrite_the_pooled_input():
    x = gc.placeholder((None, 3, 8, 8), "float32", name="x")
    w = gc.variable(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), name="w")
    a = gc.conv2d(x, w, padding=1)
    loss = gc.sum(gc.max_pool2d(gc.tanh(a), 2) * gc.max_pool2d(a, 2))
    (gw,) = gc.grad(loss, [w])
    f = gc.function([x], gw)
    xv = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(f(xv), gw.eval({x: xv}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), ((1, 2), (2, 0)), (3, 1)])
def test_channels_last_convolution_and_gradients_match_eval(stride, padding):
    x = gc.placeholder((None, 9, 10, 11), "float32", name="x")     # wide: channels-last path
    w = gc.variable(RNG.standard_normal((5, 9, 3, 2)).astype(np.float32), name="w")
    y = gc.conv2d(x, w, stride=stride, padding=padding)
    loss = gc.sum(gc.tanh(y))
    gx, gw = gc.grad(loss, [x, w])
    f = gc.function([x], [y, gx, gw])
    xv = RNG.standard_normal((3, 9, 10, 11)).astype(np.float32)
    for _ in range(2):                         # the second call reuses the workspaces
        for got, node in zip(f(xv), [y, gx, gw]):
            np.testing.assert_allclose(got, node.eval({x: xv}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind,stride,padding,size", [
    ("distinct", 1, 1, 2), ("ties", 1, 1, 2), ("distinct", 2, 0, 2), ("ties", (1, 2), (2, 0), 2),
    ("distinct", 1, 1, 3), ("ties", 1, 0, (1, 3))])
def test_pooled_narrow_convolution_runs_channels_last_in_its_own_buffer(kind, stride, padding,
                                                                        size):
    # a max-pooled convolution of a 2-channel input: channels-last (its NCHW result unread,
    # the channels-last one in that buffer), the pool gradient written over it in place
    x = gc.placeholder((None, 2, 9, 8), "float32", name="x")
    wv = RNG.standard_normal((6, 2, 3, 3)).astype(np.float32)
    w = gc.variable(np.round(wv) if kind == "ties" else wv, name="w")   # ties: integer maps
    b = gc.variable(RNG.standard_normal((1, 6, 1, 1)).astype(np.float32), name="b")
    p = gc.max_pool2d(gc.relu(gc.conv2d(x, w, stride, padding) + b), size)
    loss = gc.sum(gc.tanh(p))
    gx, gw, gb = gc.grad(loss, [x, w, b])
    f = gc.function([x], [p, gx, gw, gb])
    assert "last=True, nchw=False" in f.source
    xv = pool_case(kind, (3, 2, 9, 8))
    for _ in range(2):                         # the second call reuses the workspaces
        for got, node in zip(f(xv), [p, gx, gw, gb]):
            np.testing.assert_allclose(got, node.eval({x: xv}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("images,threads", [(1, 1), (2, 1), (1, 2)])
def test_input_gradient_by_chunks_of_images_matches_eval(monkeypatch, images, threads):
    # chunks of 1 or 2 of 3 images (the last one shorter) at stride 1, of 2 or 3 at stride 2;
    # the BLAS on 2 threads: the whole batch at once whatever CHUNK_BYTES says
    monkeypatch.setattr(blas, "threads", lambda: threads)
    x = gc.placeholder((None, 9, 7, 6), "float32", name="x")
    w = gc.variable(RNG.standard_normal((4, 9, 3, 2)).astype(np.float32), name="w")
    xv = RNG.standard_normal((3, 9, 7, 6)).astype(np.float32)
    per_image = 3 * 2 * 5 * 5 * 9 * 4          # kh*kw*Ho*Wo*C float32s at stride 1
    monkeypatch.setattr(conv, "CHUNK_BYTES", images * per_image)
    for stride in (1, 2):
        y = gc.conv2d(x, w, stride=stride)
        (gx,) = gc.grad(gc.sum(gc.tanh(y)), [x])
        f = gc.function([x], gx)
        for _ in range(2):
            np.testing.assert_allclose(f(xv), gx.eval({x: xv}), rtol=1e-4, atol=1e-5)
        assert ("chunks=False" in f.source) == (threads > 1)



def tiled_stack(c, stride, padding, size, dtype, kind, with_gx=False, pool_stride=None):
    """A max-pooled convolution (bias, ReLU) and a second layer, a step of SGD on its
    weights (x's gradient an output too when with_gx): (x, function, outputs, params,
    their gradients)."""
    x = gc.placeholder((None, c, 9, 8), dtype, name="x")
    wv = RNG.standard_normal((6, c, 3, 3))
    w = gc.variable((np.round(wv) if kind == "ties" else wv).astype(dtype), name="w")
    b = gc.variable(RNG.standard_normal((1, 6, 1, 1)).astype(dtype), name="b")
    p = gc.max_pool2d(gc.relu(gc.conv2d(x, w, stride, padding) + b), size, pool_stride)
    w2 = gc.variable(RNG.standard_normal((5, 6, 1, 1)).astype(dtype), name="w2")
    loss = gc.sum(gc.tanh(gc.conv2d(p, w2)))
    params = [w, b, w2]
    grads = gc.grad(loss, params + ([x] if with_gx else []))
    outs = [loss, p] + grads[3:]
    f = gc.function([x], outs, updates=[(v, v - 0.01 * g) for v, g in zip(params, grads)])
    return x, f, outs, params, grads[:3]


def check_steps(x, f, outs, params, grads, shape, kind, dtype, batches=(3, 2, 3)):
    """Several steps (two batch sizes, a plan run again) against eval's values."""
    tol = 1e-4 if dtype == "float32" else 1e-10
    for batch in batches:
        xv = pool_case(kind, (batch,) + shape).astype(dtype)
        want = [o.eval({x: xv}) for o in outs]
        new = [v.value - dtype_(dtype)(0.01) * g.eval({x: xv}) for v, g in zip(params, grads)]
        for got, w in zip(f(xv), want):
            np.testing.assert_allclose(got, w, rtol=tol, atol=tol)
        for v, w in zip(params, new):
            np.testing.assert_allclose(v.value, w, rtol=tol, atol=tol)


def dtype_(name):
    return np.dtype(name).type


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("c,stride,padding,size", [
    (1, 1, 1, (3, 4)), (1, 1, 0, (7, 3)), (2, 2, 0, (2, 3)), (9, 1, 1, (3, 2)),
    (9, 2, 1, (5, 2)), (1, (1, 2), (2, 0), (11, 3)), (9, 1, 0, 1)])
@pytest.mark.parametrize("kind", ["distinct", "ties"])
def test_a_convolution_stored_tiled_for_its_pool_matches_eval(dtype, c, stride, padding, size,
                                                              kind):
    # the pool's windows tile the convolution's output (9x8, 7x6, 4x3, 9x8, 5x4, 11x3, 7x6): the
    # result is stored window offset by offset, the pool, its gradient and the weight
    # gradient read it so; narrow and wide inputs, two batch sizes, calls repeated
    x, f, outs, params, grads = tiled_stack(c, stride, padding, size, dtype, kind)
    check_steps(x, f, outs, params, grads, (c, 9, 8), kind, dtype)
    assert "tile=" in f.source


@pytest.mark.parametrize("c,stride,padding,size,pool_stride,with_gx,crop,tiled", [
    (1, 1, 0, 2, None, False, (6, 6), True),     # 7x6: its last row fills no window
    (9, 1, 1, 2, None, True, (8, 8), False),     # 9x8; x's gradient reads the pool's
    (1, 2, 1, (2, 3), None, True, (4, 3), False),    # 5x4
    (9, 1, 0, (3, 2), 1, False, None, False),    # 7x6, overlapping windows read it all
    (1, 1, 1, (3, 4), None, True, None, False),  # 9x8 tiled, but x's gradient reads
])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_convolution_computes_only_the_outputs_its_pools_read(c, stride, padding, size,
                                                                 pool_stride, with_gx, crop,
                                                                 tiled, dtype):
    x, f, outs, params, grads = tiled_stack(c, stride, padding, size, dtype, "ties", with_gx,
                                            pool_stride)
    check_steps(x, f, outs, params, grads, (c, 9, 8), "ties", dtype)
    assert ("crop=" in f.source) == (crop is not None)
    assert crop is None or f"crop={crop}" in f.source
    assert ("tile=" in f.source) == tiled


@pytest.mark.parametrize("seed", range(8))
def test_random_tiled_and_cropped_stacks_match_eval(seed):
    # random sizes, kernels, strides, padding, pool windows (tiling the output or leaving a
    # rim), channels, dtype; SGD on the weights only, so the tiled layout applies
    r = np.random.default_rng(100 + seed)
    c, h, w = int(r.choice([1, 2, 9])), int(r.integers(6, 13)), int(r.integers(6, 13))
    k, st, pad = int(r.integers(1, 4)), int(r.integers(1, 3)), int(r.integers(0, 2))
    ho, wo = (h + 2 * pad - k) // st + 1, (w + 2 * pad - k) // st + 1
    size = (int(r.integers(1, min(ho, 4) + 1)), int(r.integers(1, min(wo, 4) + 1)))
    dtype = str(r.choice(["float32", "float64"]))
    x = gc.placeholder((None, c, h, w), dtype, name="x")
    kv = r.standard_normal((5, c, k, k))
    w1 = gc.variable((np.round(kv) if seed % 2 else kv).astype(dtype), name="w1")
    b1 = gc.variable(r.standard_normal((1, 5, 1, 1)).astype(dtype), name="b1")
    p = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, st, pad) + b1), size)
    w2 = gc.variable(r.standard_normal((3, 5, 1, 1)).astype(dtype), name="w2")
    loss = gc.sum(gc.tanh(gc.conv2d(p, w2)))
    params = [w1, b1, w2]
    grads = gc.grad(loss, params)
    f = gc.function([x], [loss, p], updates=[(v, v - 0.01 * g) for v, g in zip(params, grads)])
    check_steps(x, f, [loss, p], params, grads, (c, h, w), "ties" if seed % 2 else "distinct",
                dtype)
    rim = ho % size[0] or wo % size[1]                # then cropped, and tiled either way
    assert f"tile={size}" in f.source and ("crop=" in f.source) == bool(rim)


@pytest.mark.parametrize("kind", ["distinct", "ties", "nan", "signed zeros"])
def test_a_tiled_pool_gradient_gives_the_first_maximum(kind):
    # the kernels alone: x stored tiled (as_tiles), its gradient written over it
    x = pool_case(kind, (2, 3, 6, 4))
    size = (3, 2)
    top = OPS["max_pool2d"].kernel(x, size=size, stride=size)
    g = RNG.standard_normal(top.shape).astype(np.float32)
    want = OPS["max_pool2d_grad"].kernel(g, x, size=size, stride=size)
    buf = np.empty(x.shape, np.float32)
    tiles = conv.as_tiles(buf, size)
    np.copyto(tiles, x.transpose(0, 2, 3, 1).reshape(2, 2, 3, 2, 2, 3))
    pooled = np.empty(top.shape, np.float32)
    conv.max_pool2d(None, size=size, stride=size, out=pooled, ws={}, shadow=tiles)
    np.testing.assert_array_equal(pooled, top)
    ws = {}
    got = conv.max_pool2d_grad(g, None, size=size, stride=size, out=buf, ws=ws, top=top,
                               shadow=tiles, top_shadow=top.transpose(0, 2, 3, 1).copy(),
                               nchw=False)
    res = ws["nhwc"].transpose(2, 3, 0, 4, 1, 5).reshape(2, 6, 4, 3).transpose(0, 3, 1, 2)
    assert got is buf
    np.testing.assert_array_equal(res, want)


@pytest.mark.parametrize("seed", range(10))
def test_random_deep_conv_pool_stacks_train_as_eval(seed):
    # 1-3 layers of conv (1x1 or 3x3, stride 1-2, padding 0-1, a bias or not), a max-pool
    # (2x2, 3x3 or overlapping) and relu/tanh, then a dense head: most layers are stored tiled
    # and/or cropped for their pools; SGD on every weight over batches 3, 1, 4
    r = np.random.default_rng(500 + seed)
    dtype = str(r.choice(["float32", "float64"]))
    c, h, w = int(r.choice([1, 3, 8, 16])), int(r.integers(5, 15)), int(r.integers(5, 15))
    x = gc.placeholder((None, c, h, w), dtype, "x")
    m, params = x, []
    for d in range(int(r.integers(1, 4))):
        k, s, p = int(r.choice([1, 3])), int(r.choice([1, 1, 2])), int(r.choice([0, 1]))
        if min(m.shape[2:]) + 2 * p < k:
            break
        co = int(r.choice([4, 8, 32]))
        params.append(gc.variable(r.standard_normal((co, m.shape[1], k, k)).astype(dtype) * 0.3))
        y = gc.conv2d(m, params[-1], stride=s, padding=p)
        if r.random() < 0.5:
            params.append(gc.variable(r.standard_normal((1, co, 1, 1)).astype(dtype) * 0.1))
            y = y + params[-1]
        size = int(r.choice([2, 2, 3]))
        if min(y.shape[2:]) >= size:
            y = gc.max_pool2d(y, size, stride=size if r.random() < 0.8 else 1)
        m = gc.relu(y) if r.random() < 0.7 else gc.tanh(y)
    flat = gc.reshape(m, (-1, int(np.prod(m.shape[1:]))))
    params.append(gc.variable(r.standard_normal((flat.shape[1], 5)).astype(dtype) * 0.2))
    loss = gc.mean(gc.tanh(flat @ params[-1]) ** 2)
    updates = [(v, v - 0.1 * g) for v, g in zip(params, gc.grad(loss, params))]
    batches = [r.standard_normal((n, c, h, w)).astype(dtype) for n in (3, 1, 4)]
    want = eval_trajectory(x, loss, updates, batches)
    f = gc.function([x], loss, updates=updates)
    tol = 1e-4 if dtype == "float32" else 1e-9
    for a, (loss_want, values_want) in zip(batches, want):
        np.testing.assert_allclose(f(a), loss_want, rtol=tol, atol=tol)
        for v, value in zip(params, values_want):
            np.testing.assert_allclose(v.value, value, rtol=10 * tol, atol=10 * tol)
