"""Bugs the differential fuzzer (tests/test_fuzz.py) found, each as a plain test: the compiled
Function, optimized or not, agrees with the interpreter on the shrunk graph."""
from __future__ import annotations

import numpy as np

import graphc as gc


def agree(inputs, outputs, *feeds):
    """Every compiled mode gives the interpreter's values (and dtypes) on each feed."""
    fns = [gc.function(inputs, outputs, optimize=o, check_numerics=c)
           for o in (False, True) for c in (False, True)]
    for vals in feeds:
        want = [o.eval(dict(zip(inputs, vals))) for o in outputs]
        for f in fns:
            for w, g in zip(want, f(*vals)):
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_allclose(g, w, rtol=1e-12)


def test_sums_of_bools_over_no_axis_or_unit_axes_stay_counts():
    """sum_no_axes / sum_unit_axes returned the bool input for an int64 count (RewriteError
    at compile time)."""
    x, y = gc.placeholder((), "bool"), gc.placeholder((2, 1, 3), "bool")
    agree([x, y], [gc.sum(x), gc.sum(y, axis=1), gc.sum(y, axis=1, keepdims=True)],
          [np.array(True), np.ones((2, 1, 3), bool)],
          [np.array(False), np.arange(6).reshape(2, 1, 3) % 2 == 0])


def test_fused_refuses_inputs_its_body_was_not_built_for():
    """fused(int) was accepted and its VJP failed later inside the body (sigmoid(int64))."""
    import pytest
    from graphc.ir import Node, apply
    from graphc.ops.fused import Body
    p = Node("placeholder", (), {}, (None, 4), np.float64, "in0")
    body = Body([p], gc.sigmoid(p) * 2.0)
    assert apply("fused", gc.placeholder((3, 4), "float64"), body=body).shape == (None, 4)
    for bad in [gc.placeholder((3, 4), "int64"), gc.placeholder((3, 5), "float64"),
                gc.placeholder((4,), "float64")]:
        with pytest.raises(gc.GraphcError,
                           match=r"body input 0 is \(\?, 4\) float64, the node gives"):
            apply("fused", bad, body=body)


def test_cross_entropy_needs_float_logits():
    """sce(int64 logits, float labels) was accepted, and the gradient for the labels failed
    inside its VJP (log_softmax of int64)."""
    import pytest
    z, p = gc.placeholder((3, 4), "int64"), gc.placeholder((3, 4), "float64")
    with pytest.raises(gc.GraphcError, match=r"softmax_cross_entropy\(\(3, 4\) int64.*floating"):
        gc.softmax_cross_entropy(z, p)


def test_cross_entropy_gradient_of_logits_in_any_memory_layout():
    """The kernel subtracted g at the labels through e.reshape(-1, C), a copy when the logits
    are not C-contiguous (a transpose, a Fortran-ordered feed): the subtraction was lost."""
    z, y = gc.placeholder((3, 2, 4), "float64", "z"), gc.placeholder((2, 3), "int64", "y")
    zt = gc.transpose(z, (1, 0, 2))                        # (2, 3, 4), not C-contiguous
    cost = gc.sum(gc.softmax_cross_entropy(zt, y) * np.arange(1.0, 7.0).reshape(2, 3))
    (gz,) = gc.grad(cost, [z])
    r = np.random.default_rng(0)
    zv, yv = r.normal(size=(3, 2, 4)), r.integers(0, 4, (2, 3))
    zt_v = zv.transpose(1, 0, 2)
    p = np.exp(zt_v) / np.exp(zt_v).sum(-1, keepdims=True)
    want = (p - np.eye(4)[yv]) * np.arange(1.0, 7.0).reshape(2, 3, 1)
    np.testing.assert_allclose(gz.eval({z: zv, y: yv}), want.transpose(1, 0, 2), rtol=1e-12)
    agree([z, y], [gz], [zv, yv], [np.asfortranarray(zv), yv])


def test_pool_gradient_through_a_reshaped_broadcast_is_read_per_call():
    """The first bug the fuzzer found (fixed in the runtime, issue 10): the gradient of
    reshape(max_pool2d(x)) reshapes a broadcast upstream gradient, a copy NumPy made once per
    plan, so max_pool2d_grad read stale values."""
    x = gc.placeholder((2, 2, 7, 5), "float64", "x")
    s = gc.sum(gc.reshape(gc.max_pool2d(x, 2), (2, 3, 4)), axis=2, keepdims=True)
    cost = gc.sum(s * np.linspace(-1, 1, 6).reshape(2, 3, 1))
    (gx,) = gc.grad(cost, [x])
    r = np.random.default_rng(1)
    agree([x], [cost, gx], *[[r.permutation(140).reshape(2, 2, 7, 5) * 0.1] for _ in range(3)])
