"""Channels-last storage of NCHW buffers (runtime/layout.py): compiled conv stacks give eval's
values whatever the planner stores channels-last, such buffers never reach a step that
reshapes them, and the conv kernels read and write that memory without transposed copies."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS
from graphc.runtime import conv, layout, planner

RNG = np.random.default_rng(11)


def random_stack(seed: int):
    """A random conv stack (two conv/pool layers, strides, padding, bias, ReLU, a reshape or
    not after the pooling) with the gradients of a scalar loss: (x, params, outputs)."""
    r = np.random.default_rng(seed)
    c = int(r.choice([1, 3, 8]))
    x = gc.placeholder((None, c, 14, 13), "float32", name="x")
    h, params = x, []
    for k, co in enumerate((int(r.choice([4, 8, 9])), int(r.choice([8, 16])))):
        kk, st, pad = int(r.integers(1, 4)), int(r.integers(1, 3)), int(r.integers(0, 2))
        w = gc.variable(r.standard_normal((co, h.shape[1], kk, kk)).astype(np.float32) / kk,
                        name=f"K{k}")
        params.append(w)
        h = gc.conv2d(h, w, stride=st, padding=pad)
        if r.random() < 0.7:
            b = gc.variable(r.standard_normal((1, co, 1, 1)).astype(np.float32), name=f"c{k}")
            params.append(b)
            h = h + b
        if r.random() < 0.7:
            h = gc.relu(h)
        size = int(r.choice([1, 2, 3]))
        if min(h.shape[2:]) >= size:
            h = gc.max_pool2d(h, size, stride=int(r.choice([size, 1])) if size > 1 else None)
    flat = r.random() < 0.5
    out = gc.reshape(h, (-1, int(np.prod(h.shape[1:])))) if flat else h
    loss = gc.sum(gc.tanh(out) * out)
    grads = gc.grad(loss, [x] + params)
    return x, c, [loss, h] + list(grads)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("optimize", [True, False])
def test_random_conv_stacks_match_eval(seed, optimize):
    x, c, outs = random_stack(seed)
    f = gc.function([x], outs, optimize=optimize)
    for batch in (3, 2, 3):                   # two plans, one run twice
        xv = RNG.standard_normal((batch, c, 14, 13)).astype(np.float32)
        want = [o.eval({x: xv}) for o in outs]
        for got, w in zip(f(xv), want):
            np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("seed", range(3))
def test_random_conv_stacks_match_eval_with_check_numerics(seed):
    x, c, outs = random_stack(seed)
    f = gc.function([x], outs, check_numerics=True)
    xv = RNG.standard_normal((2, c, 14, 13)).astype(np.float32)
    for got, w in zip(f(xv), [o.eval({x: xv}) for o in outs]):
        np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-4)


def plan_of(f, *feeds):
    f(*feeds)
    return f.last_plan


def test_a_pooled_conv_stack_keeps_its_elementwise_steps_channels_last():
    x = gc.placeholder((None, 1, 12, 12), "float32", name="x")
    k1 = gc.variable(RNG.standard_normal((8, 1, 3, 3)).astype(np.float32), name="K1")
    b1 = gc.variable(RNG.standard_normal((1, 8, 1, 1)).astype(np.float32), name="b1")
    k2 = gc.variable(RNG.standard_normal((16, 8, 3, 3)).astype(np.float32), name="K2")
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, k1) + b1), 2)
    loss = gc.sum(gc.tanh(gc.conv2d(h, k2)))
    grads = gc.grad(loss, [k1, b1, k2])
    f = gc.function([x], [loss] + grads)
    xv = RNG.standard_normal((4, 1, 12, 12)).astype(np.float32)
    plan = plan_of(f, xv)
    last = sorted(name for name, a in plan.ns.items() if name[:1] == "b"
                  and isinstance(a, np.ndarray) and a.ndim == 4 and not a.flags.c_contiguous)
    assert len(last) >= 3          # pooled, bias + ReLU, input gradient (+ its mask)
    for name in last:              # such a buffer is never reshaped in the generated code
        assert f"{name}.reshape" not in f.source and f"out={name}.reshape" not in f.source
    # the bias gradient sums the channels-last mask as an (N*H*W, C) matrix view
    assert ".transpose(0, 2, 3, 1).reshape(-1, 8)" in f.source
    for got, w in zip(f(xv), [loss.eval({x: xv})] + [g.eval({x: xv}) for g in grads]):
        np.testing.assert_allclose(got, w, rtol=2e-4, atol=2e-4)


def channels_last(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def test_conv_kernels_read_and_write_channels_last_buffers_without_copies():
    x = channels_last(RNG.standard_normal((2, 8, 7, 6)).astype(np.float32))
    w = RNG.standard_normal((4, 8, 3, 3)).astype(np.float32)
    out, ws = np.empty((2, 4, 5, 4), np.float32), {}
    conv.conv2d(x, w, stride=(1, 1), padding=(0, 0), out=out, ws=ws, last=True)
    assert "xh" not in ws                             # the windows of x itself
    np.testing.assert_allclose(out, gc.conv2d(gc.constant(x), gc.constant(w)).eval(),
                               rtol=1e-4, atol=1e-5)
    g = RNG.standard_normal(out.shape).astype(np.float32)
    dx, ws = layout.empty(x.shape, np.float32, layout.LAST), {}
    conv.conv2d_grad_input(g, w, x, stride=(1, 1), padding=(0, 0), out=dx, ws=ws)
    assert "dxh" not in ws                            # col2im into dx's own memory
    want = OPS["conv2d_grad_input"].kernel(g, w, x, stride=(1, 1), padding=(0, 0))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)
    top, ws = layout.empty((2, 8, 3, 3), np.float32, layout.LAST), {}
    conv.max_pool2d(x, size=(2, 2), stride=(2, 2), out=top, ws=ws)
    assert np.shares_memory(ws["nhwc"], top)          # pooled into top's own memory
    np.testing.assert_array_equal(top, gc.max_pool2d(gc.constant(x), 2).eval())
    gp, ws = channels_last(RNG.standard_normal(top.shape).astype(np.float32)), {}
    dp = np.empty(x.shape, np.float32)
    conv.max_pool2d_grad(gp, x, size=(2, 2), stride=(2, 2), out=dp, ws=ws, top=top,
                         shadow=x.transpose(0, 2, 3, 1), top_shadow=top.transpose(0, 2, 3, 1))
    assert "g_nhwc" not in ws                         # g read where it is
    want = OPS["max_pool2d_grad"].kernel(gp, x, size=(2, 2), stride=(2, 2))
    np.testing.assert_array_equal(dp, want)


def test_the_pool_keeps_layouts_apart():
    ns: dict = {}
    pool = planner.Pool(ns)
    a = pool.take((2, 3, 4, 5), "float32", layout.LAST)
    assert ns[a].shape == (2, 3, 4, 5) and ns[a].transpose(0, 2, 3, 1).flags.c_contiguous
    pool.give(a)
    b = pool.take((2, 3, 4, 5), "float32")            # a C-order value: not a's buffer
    assert b != a and ns[b].flags.c_contiguous
    assert pool.take((2, 3, 4, 5), "float32", layout.LAST) == a
