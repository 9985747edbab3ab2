"""Regressions found by probing the speed work of issue 17 as a hostile user: each test
failed before its fix (values against NumPy in float64, promises of the compiled call)."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import GraphcError


# a call that raises leaves every variable as it was ---------------------------------------

@pytest.mark.parametrize("fused", [False, True], ids=["pow", "fused-pow"])
def test_integer_pow_failing_after_a_direct_update_leaves_variables_whole(fused):
    # NumPy raises on an integer to a negative integer power, whatever errstate says: the
    # update of v (one in-place add) must not be written before that step has run
    e = gc.placeholder((3,), "int64", name="e")
    v = gc.variable(np.zeros(3), name="v")
    k = gc.variable(np.array([1, 2, 3]), name="k")
    new_k = k ** e + 1 if fused else k ** e
    step = gc.function([e], [], updates=[(v, v + 1.0), (k, new_k)])
    step(np.array([1, 1, 1]))
    before_v, before_k = v.value.copy(), k.value.copy()
    with pytest.raises(GraphcError, match="pow"):
        step(np.array([1, -2, 3]))
    np.testing.assert_array_equal(v.value, before_v)
    np.testing.assert_array_equal(k.value, before_k)


# push_scalar_factors -----------------------------------------------------------------------

def test_float16_learning_rate_is_not_folded_into_an_underflowing_seed():
    # float16's smallest subnormal is 6e-8: the seed 1e-5 / 1024 (moved from the update's
    # product) is 0, so every update vanished, while 1e-5 * (gradient) is representable
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1024, 8)).astype("float16")
    want = -1e-5 * (xv.astype("float64").T @ np.ones((1024, 3))) / 1024   # tanh'(0) = 1
    for optimize in (False, True):
        x = gc.placeholder((None, 8), "float16", name="x")
        w = gc.variable(np.zeros((8, 3), "float16"), name="w")
        loss = gc.mean(gc.sum(gc.tanh(x @ w), axis=1))
        (gw,) = gc.grad(loss, [w])
        gc.function([x], loss, updates=[(w, w - 1e-5 * gw)], optimize=optimize)(xv)
        np.testing.assert_allclose(w.value.astype("float64"), want, rtol=0.05, atol=1.2e-7,
                                   err_msg=f"optimize={optimize}")
