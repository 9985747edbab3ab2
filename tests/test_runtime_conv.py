"""The compiled conv/pool kernels against the registered (reference) kernels: the fast paths
must give the same values as the first-maximum rule, ties and NaN included, in place too."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS
from graphc.runtime import blas, conv

RNG = np.random.default_rng(7)


def pool_case(kind: str, shape=(2, 3, 9, 8)):
    x = RNG.standard_normal(shape).astype(np.float32)
    if kind == "ties":
        x = np.round(x)                   # many equal maxima in a window
    elif kind == "nan":
        x[0, 1, 2, 3] = np.nan
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
