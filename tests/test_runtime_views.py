"""Compiled views: a reshape that copies (of a transpose or a broadcast) is computed on every
call, never frozen at plan build (issue 10)."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc


def calls_equal_eval(inputs, outputs, feeds_list, optimize):
    """Call one Function on several feeds in turn; every result equals node.eval."""
    f = gc.function(inputs, outputs, optimize=optimize)
    for feeds in feeds_list:
        got = f(*feeds)
        for o, g in zip(outputs, got):
            want = o.eval(dict(zip(inputs, feeds)))
            np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimize", [False, True])
def test_reshape_of_transpose_of_a_computed_value(optimize):
    a = gc.placeholder((2, 3, 4), "float64", "a")
    y = gc.reshape(gc.transpose(a * 2.0, (1, 0, 2)), (3, 8))
    v = np.arange(24.0).reshape(2, 3, 4)
    calls_equal_eval([a], [y], [[v], [v + 100], [-v]], optimize)


@pytest.mark.parametrize("optimize", [False, True])
def test_attention_head_merge_and_its_gradient(optimize):
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 4, 6), "float64", "x")        # (batch, seq, model)
    w = gc.placeholder((6, 6), "float64", "w")
    q = gc.reshape(x @ w, (-1, 4, 2, 3))                     # head split
    heads = gc.transpose(q, (0, 2, 1, 3)) * 1.5              # (batch, heads, seq, dim)
    merged = gc.reshape(gc.transpose(gc.tanh(heads), (0, 2, 1, 3)), (-1, 4, 6))
    cost = gc.sum(merged * merged)
    gx, gw = gc.grad(cost, [x, w])
    feeds = [[rng.normal(size=(b, 4, 6)), rng.normal(size=(6, 6))] for b in (2, 2, 3, 2)]
    calls_equal_eval([x, w], [merged, gx, gw], feeds, optimize)


@pytest.mark.parametrize("optimize", [False, True])
def test_channels_last_flatten_of_a_conv_output(optimize):
    rng = np.random.default_rng(1)
    x = gc.placeholder((None, 2, 5, 5), "float64", "x")
    k = gc.placeholder((3, 2, 3, 3), "float64", "k")
    h = gc.relu(gc.conv2d(x, k))                              # (b, 3, 3, 3)
    flat = gc.reshape(gc.transpose(h, (0, 2, 3, 1)), (-1, 27))
    cost = gc.sum(flat * gc.constant(np.linspace(-1, 1, 27)))
    gx, gk = gc.grad(cost, [x, k])
    feeds = [[rng.normal(size=(2, 2, 5, 5)), rng.normal(size=(3, 2, 3, 3))] for _ in range(3)]
    calls_equal_eval([x, k], [flat, gx, gk], feeds, optimize)


def test_reshape_of_a_broadcast_and_of_a_plan_constant():
    a = gc.placeholder((3,), "float64", "a")
    y = gc.reshape(gc.broadcast_to(gc.exp(a), (2, 3)), (6,))
    z = gc.reshape(gc.transpose(gc.constant(np.arange(6.0).reshape(2, 3))), (6,)) + a[0]
    calls_equal_eval([a], [y, z], [[np.arange(3.0)], [np.ones(3)], [-np.arange(3.0)]], False)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pooling_window_larger_than_a_dynamic_image_is_an_error(pool):
    x = gc.placeholder((None, 1, None, None), "float64", "x")
    y = getattr(gc, pool)(x, 5)
    cost = gc.sum(y)
    small, ok = np.ones((2, 1, 3, 3)), np.ones((2, 1, 6, 7))
    with pytest.raises(gc.GraphcError, match="larger than the image 3x3"):
        y.eval({x: small})
    for outputs in ([y], [gc.grad(cost, [x])[0]]):
        f = gc.function([x], outputs)
        assert f(ok)[0].shape in ((2, 1, 1, 1), (2, 1, 6, 7))
        with pytest.raises(gc.GraphcError, match="larger than the (image 3x3|input size 3)"):
            f(small)                              # the shape rule, at the plan's build


def test_an_op_without_inputs_is_a_step_not_a_leaf():
    from graphc.ir import OPS, OpDef, apply, register
    register(OpDef("test_iota5", lambda: ((5,), np.dtype("float64")),
                   lambda: np.arange(5.0)))
    try:
        x = gc.placeholder((5,), "float64", "x")
        out = x * apply("test_iota5")
        for optimize in (False, True):
            f = gc.function([x], out, optimize=optimize)
            np.testing.assert_array_equal(f(np.ones(5)), np.arange(5.0))
            np.testing.assert_array_equal(f(np.full(5, 2.0)), 2 * np.arange(5.0))
    finally:
        del OPS["test_iota5"]


def test_updates_none_means_no_updates_and_a_bad_updates_value_is_a_graphc_error():
    x = gc.placeholder((2,), "float64", "x")
    np.testing.assert_array_equal(gc.function([x], x * 2.0, updates=None)(np.ones(2)), [2, 2])
    with pytest.raises(gc.GraphcError, match="updates must be"):
        gc.function([x], x * 2.0, updates=3)
