"""Optimizers on float16 parameters keep their state in float32 (as mixed-precision training
does): Adam's eps = 1e-8 and small squared gradients are 0 in float16."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn

# gradients: ordinary, tiny (g * g underflows in float16), zero (0 / (0 + eps)), large
GRAD = np.array([0.5, 1e-4, 0.0, -300.0], "float16")


def adam_reference(w, steps, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    """NumPy Adam with float32 state; the parameter rounded to float16 after every step."""
    g = GRAD.astype("float32")
    m, v = np.zeros(4, "float32"), np.zeros(4, "float32")
    for t in range(1, steps + 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
        w = (w.astype("float32") - step).astype("float16")
    return w


@pytest.mark.parametrize("optimizer", [nn.Adam(1e-3), nn.SGD(0.01, momentum=0.9),
                                       nn.RMSProp(1e-3)], ids=lambda o: o.kind)
def test_float16_parameters_stay_finite_and_float16(optimizer):
    w = gc.variable(np.ones(4, "float16"), name="w")
    loss = gc.sum(w * gc.constant(GRAD))
    step = gc.function([], loss, updates=optimizer.updates(loss, [w]))
    for _ in range(20):
        step()
    assert w.value.dtype == np.float16 and np.isfinite(w.value).all()
    assert all(v.dtype == np.float32 for v in optimizer.variables)
    assert w.value[2] == 1.0                         # a zero gradient moves nothing
    assert w.value[0] < 1.0 and w.value[3] > 1.0     # the others move against the gradient


def test_float16_adam_matches_float32_state_reference():
    w = gc.variable(np.ones(4, "float16"), name="w")
    loss = gc.sum(w * gc.constant(GRAD))
    step = gc.function([], loss, updates=nn.Adam(1e-3).updates(loss, [w]))
    for _ in range(10):
        step()
    np.testing.assert_allclose(w.value.astype("float64"),
                               adam_reference(np.ones(4, "float16"), 10), atol=1e-3)


def test_float16_mlp_trains_with_adam():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float16")
    y = (x[:, 0] > 0).astype("int64")
    model = nn.Sequential([nn.Dense(16, "relu"), nn.Dense(2)], seed=0)
    xp, yp = gc.placeholder((None, 8), "float16", "x"), gc.placeholder((None,), "int64", "y")
    loss = gc.mean(gc.softmax_cross_entropy(model(xp), yp))
    opt = nn.Adam(1e-2)
    step = gc.function([xp, yp], loss, updates=opt.updates(loss, model.params))
    losses = [float(step(x, y)) for _ in range(30)]
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == np.float16 for p in model.params)
    assert opt.t.dtype == np.float32 and opt.t.value == 30


def test_float64_state_stays_float64():
    w = gc.variable(np.ones(3), name="w")
    opt = nn.Adam()
    opt.updates(gc.sum(w * w), [w])
    assert all(v.dtype == np.float64 for v in opt.variables)
