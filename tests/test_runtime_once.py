"""Steps made once per plan: a buffer step computing only from values fixed for the plan
(constants, sizes of its concrete shapes, such steps) runs when the plan is made, not per call
(the `lr / n` of a mean's gradient). Values are checked against NumPy at several batch sizes;
the random differential tests (test_fuzz*, test_probe1*) cover it on random graphs."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

RNG = np.random.default_rng(3)


def test_a_step_of_constants_and_sizes_runs_once_per_plan():
    x = gc.placeholder((None, 3), "float64", "x")
    n_rows = gc.size(x, axis=0, dtype="float64")
    scale = gc.constant(2.0) / n_rows + gc.constant(0.5)       # fixed per batch size
    y = gc.exp(x) * scale
    f = gc.function([x], [y, gc.sum(y)], optimize=False)
    for n in (3, 1, 3, 5, 5):
        a = RNG.normal(size=(n, 3))
        got, total = f(a)
        want = np.exp(a) * (2.0 / n + 0.5)
        np.testing.assert_allclose(got, want, rtol=1e-13)
        assert total == pytest.approx(want.sum(), rel=1e-13)
    assert f.source.count("made once per plan: ") == 2, f.source    # the div and the add
    assert "xp.exp(x0" in f.source


def test_a_step_reading_a_call_value_or_random_is_not_made_once():
    x = gc.placeholder((None, 2), "float64", "x")
    noise = gc.random_normal((4, 2), seed=1) * gc.constant(2.0)
    f = gc.function([x], [x * (gc.constant(3.0) / gc.size(x)), noise], optimize=False)
    first, second = f(np.ones((4, 2)))[1], f(np.ones((4, 2)))[1]
    assert not np.array_equal(first, second)                 # new noise every call
    assert "made once per plan: " in f.source                 # 3 / size only
    np.testing.assert_allclose(f(np.ones((4, 2)))[0], np.full((4, 2), 3.0 / 8))


def test_check_numerics_still_checks_a_step_made_once():
    """1 / (size - 3) is inf at batch 3: the check of that step runs on every call."""
    x = gc.placeholder((None,), "float64", "x")
    y = x * (gc.constant(1.0) / (gc.size(x, dtype="float64") - gc.constant(3.0)))
    f = gc.function([x], y, check_numerics=True, optimize=False)
    np.testing.assert_allclose(f(np.ones(5)), np.full(5, 0.5))
    assert "made once per plan" in f.source
    for _ in range(2):
        with pytest.raises(gc.GraphcError, match="check_numerics: step .* produced Inf"):
            f(np.ones(3))


def test_a_variable_updated_by_a_value_fixed_for_the_plan():
    """An update value is never made once in place of its step (the update writes it each
    call), and a step made once is never a buffer a later step writes over."""
    x = gc.placeholder((None,), "float64", "x")
    v = gc.variable(np.zeros(1), name="v")
    per = gc.constant(np.ones(1)) / gc.size(x, dtype="float64")
    f = gc.function([x], gc.sum(x * per + per), updates=[(v, v + per)], optimize=False)
    for k in range(1, 4):
        assert f(np.arange(4.0)) == pytest.approx((np.arange(4.0) / 4 + 0.25).sum())
        np.testing.assert_allclose(v.value, [0.25 * k])
