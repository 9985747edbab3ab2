"""probe30: a hostile probe of the machinery between the ops -- the passes' rules at their
edges (integer factors, NaN, rounding ties), memory planning and in-place reuse, layouts --
against eval: optimized or not, check_numerics, one and two BLAS threads, several calls of one
Function, the standalone export. One test per bug found, each failing before its fix.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import evaluate
from graphc.runtime import blas


def compiled_runs(inputs, outputs, feeds, threads=(1,), monkeypatch=None, check=True):
    """Every way graphc runs a graph (optimized, not, check_numerics unless check=False, as
    for NaN feeds; at each BLAS thread count): a list of (what, results)."""
    args = [feeds[i] for i in inputs]
    out = []
    for t in threads:
        if monkeypatch is not None:
            monkeypatch.setattr(blas, "threads", lambda t=t: t)
        for opt, checked in ((True, False), (False, False), (True, True))[:3 if check else 2]:
            f = gc.function(inputs, outputs, optimize=opt, check_numerics=checked)
            out.append((f"optimize={opt} check_numerics={checked} threads={t}", f(*args)))
    return out


def assert_same(got, want, what, rtol=0.0):
    """Equal values (NaN where want has NaN), shapes and dtypes."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, equal_nan=True, err_msg=what)


# cancel: integer factors of a product with a positive divisor --------------------------------

@pytest.mark.parametrize("dtype,big", [("int8", 100), ("uint8", 100), ("int16", 300)])
def test_cancelling_a_positive_divisor_keeps_integer_factors_from_wrapping(dtype, big):
    """`a * (g / p) * p` with integer a, g and p = exp(z): stabilize's cancellation flattened
    the product to [a, g] and multiplied a * g in the integer dtype (100 * 100 in int8 wrapped
    to 16: compiled 16.0, eval 10000.0). Now an integer product is one factor and the others
    are cast to the float dtype before they are multiplied."""
    a, g = gc.placeholder((3,), dtype, "a"), gc.placeholder((3,), dtype, "g")
    z = gc.placeholder((3,), "float32", "z")
    p = gc.exp(z)
    outs = [a * (g / p) * p, (a * g) * (1.0 / p) * p, g * a / p * p]
    feeds = {a: np.array([big, 3, 120], dtype), g: np.array([big, 5, 7], dtype),
             z: np.zeros(3, np.float32)}
    want = evaluate(outs, feeds)
    assert want[0][0] == big * big
    for what, got in compiled_runs([a, g, z], outs, feeds):
        for k, (x, w) in enumerate(zip(got, want)):
            assert_same(x, w, f"{what} output {k}", rtol=1e-6)


# max pooling's gradient rules: NaN windows and ties made by rounding --------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_a_sum_of_a_pooling_gradient_over_nan_windows_equals_eval(bias):
    """sum(max_pool2d_grad(g, x)) over H, W was rewritten to sum(g) ("every g lands once"),
    but a window whose maximum is NaN routes its g nowhere (eval and every kernel): the bias
    gradient of a pooled map with NaN windows was 5.0 where eval's is 0.0. Now the rule fires
    only for a g already 0 at such windows (the CNN's where(pool(x) + b > 0, ., 0) mask)."""
    x = gc.placeholder((1, 1, 2, 4), "float64", "x")
    w = gc.placeholder((1, 1, 1, 2), "float64", "w")
    b = gc.variable(np.array(0.5), name="b") if bias else None
    pooled = gc.max_pool2d(x, 2)
    y = gc.relu(pooled + b) if bias else pooled
    (gx,) = gc.grad(gc.sum(y * w), [x])
    outs = [gc.sum(gx, axis=(2, 3)), gx]
    for xv in ([[np.nan, np.nan, 1, 2], [np.nan, np.nan, 3, np.nan]],
               [[-np.inf, -np.inf, 1, 2], [-np.inf, -np.inf, 3, np.nan]],
               [[np.nan, 1, 1, 2], [0, 0, 3, 4]]):
        feeds = {x: np.array(xv).reshape(1, 1, 2, 4), w: np.array([2.0, 3.0]).reshape(w.shape)}
        want = evaluate(outs, feeds)
        for what, got in compiled_runs([x, w], outs, feeds, check=False):
            for k, (v, u) in enumerate(zip(got, want)):
                assert_same(v, u, f"{what} output {k} at {xv}")


def test_a_float16_pooling_gradient_goes_where_eval_sends_it_when_the_bias_makes_a_tie():
    """max_pool2d_grad(g, x + b) was rewritten to max_pool2d_grad(g, x) ("the winners of
    x"), but x + b can round two values of a window to one maximum, whose first then wins:
    float16 x = [0.001, 0.0011] + 1.0 are both 1.001, eval's gradient [1, 0], compiled
    [0, 1] (a few hundred windows of a float16 CNN step). Not rewritten in float16 now."""
    x = gc.placeholder((1, 1, 2, 2), "float16", "x")
    y = gc.max_pool2d(x + gc.constant(np.full((1, 1, 1), 1.0, np.float16)), 2)
    (gx,) = gc.grad(gc.sum(y), [x])
    feeds = {x: np.array([0.001, 0.0011, 0, 0], np.float16).reshape(1, 1, 2, 2)}
    want = evaluate([gx, y], feeds)
    assert want[0].ravel().tolist() == [1, 0, 0, 0]
    for what, got in compiled_runs([x], [gx, y], feeds):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


# signed zeros between the ops ---------------------------------------------------------------

def test_a_where_with_a_negative_zero_keeps_it_compiled():
    """where(c, x, -0.0) was lowered as where(c, x, 0.0) (x's bits times c: +0.0 where c is
    False), so 1 / it was inf where eval's is -inf, optimized or not."""
    x, c = gc.placeholder((5,), "float32", "x"), gc.placeholder((5,), "bool", "c")
    outs = [1.0 / gc.where(c, x, -0.0), 1.0 / gc.where(c, x, 0.0), gc.where(c, x, -0.0)]
    feeds = {x: np.array([0.0, -0.0, 2.0, -3.0, 0.0], np.float32),
             c: np.array([True, False, True, False, False])}
    want = evaluate(outs, feeds)
    assert want[0].tolist() == [np.inf, -np.inf, 0.5, -np.inf, -np.inf]
    for what, got in compiled_runs([x, c], outs, feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")
            assert np.array_equal(np.signbit(v), np.signbit(u)), f"{what} output {k}"


def test_a_negative_scalar_factor_is_not_moved_into_a_masked_value():
    """push_scalar_factors moved -2.0 of -2.0 * where(c, broadcast(tanh v), 0) down to tanh v:
    where(c, -2.0 * ., 0) is +0.0 where c is False, -2.0 * 0.0 is -0.0, so 1 / it was +inf for
    eval's -inf (a negative factor is left where it is now; a positive one keeps every sign)."""
    v, c = gc.placeholder((3,), "float32", "v"), gc.placeholder((4, 3), "bool", "c")
    masked = gc.where(c, gc.broadcast_to(gc.tanh(v), (4, 3)), 0.0)
    outs = [1.0 / (-2.0 * masked), 1.0 / (masked * -2.0)]
    feeds = {v: np.array([0.5, -0.5, 0.0], np.float32), c: np.arange(12).reshape(4, 3) % 2 == 0}
    want = evaluate(outs, feeds)
    assert np.isneginf(want[0][0, 1]) and np.isneginf(want[1][0, 1])
    for what, got in compiled_runs([v, c], outs, feeds, check=False):
        for k, (x, u) in enumerate(zip(got, want)):
            assert_same(x, u, f"{what} output {k}", rtol=1e-6)


def test_nested_wheres_of_zeros_of_two_signs_keep_the_outer_zero():
    """where(c, where(c, x, -0.0), 0.0) was simplified to the inner where: -0.0 where eval
    gives 0.0 (1 / it: -inf for inf)."""
    x, c = gc.placeholder((4,), "float32", "x"), gc.placeholder((4,), "bool", "c")
    outs = [1.0 / gc.where(c, gc.where(c, x, -0.0), 0.0),
            1.0 / gc.where(c, gc.where(c, x, 0.0), -0.0)]
    feeds = {x: np.ones(4, np.float32), c: np.array([True, False, True, False])}
    want = evaluate(outs, feeds)
    assert want[0].tolist() == [1, np.inf, 1, np.inf]
    for what, got in compiled_runs([x, c], outs, feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


# unrolled loops -----------------------------------------------------------------------------

def test_an_unrolled_loop_reads_each_step_of_a_sequence_as_the_loop_does():
    """unroll_loops took x[t] as sum(x[t:t+1], axis=0): a float sum of one -0.0 is 0.0, so
    1 / x_t was inf where the loop's is -inf (and the final carry inf for NaN)."""
    xs, h0 = gc.placeholder((3, 2), "float32", "xs"), gc.placeholder((2,), "float32", "h0")
    h_last, ys = gc.scan(lambda h, x: (h + 1.0 / x, 1.0 / x), h0, xs)
    feeds = {xs: np.array([[-0.0, 1.0], [2.0, -0.0], [0.0, -4.0]], np.float32),
             h0: np.zeros(2, np.float32)}
    want = evaluate([h_last, ys], feeds)
    assert want[1][0, 0] == -np.inf
    for what, got in compiled_runs([xs, h0], [h_last, ys], feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


@pytest.mark.parametrize("dtype", ["bool", "int8", "int32", "float16"])
def test_an_unrolled_loop_over_a_sequence_keeps_its_dtype(dtype):
    """The same x[t] as a sum turned a bool step into int64: a loop returning its bool steps
    as ys gave int64 ys ([[1, 0], ...] for [[True, False], ...]) once unrolled."""
    xs, h0 = gc.placeholder((3, 2), dtype, "xs"), gc.placeholder((2,), "float32", "h0")
    h_last, ys = gc.scan(lambda h, x: (h + gc.cast(x, "float32"), x), h0, xs)
    xv = np.arange(6).reshape(3, 2) % 2 == 0 if dtype == "bool" else \
        np.array([[1, 2], [3, 127], [100, 5]]).astype(dtype)
    feeds = {xs: xv, h0: np.ones(2, np.float32)}
    want = evaluate([h_last, ys], feeds)
    assert want[1].dtype == np.dtype(dtype)
    for what, got in compiled_runs([xs, h0], [h_last, ys], feeds):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")
