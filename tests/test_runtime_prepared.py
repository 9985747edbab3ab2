"""BLAS steps prepared when their plan is made (program.Lowering.prepared): a GEMM or GEMV
over the plan's own arrays gets its ctypes arguments then, and the first call uses them; one
reading a feed is prepared by its first call, as before. Values are NumPy's either way."""
from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.runtime import blas


def two_layers():
    rng = np.random.default_rng(3)
    x = gc.placeholder((256, 128), "float64", name="x")   # W1 += x.T @ g: pays
    start = {"W1": rng.standard_normal((128, 64)) / 16, "b1": rng.standard_normal(64),
             "W2": rng.standard_normal((64, 3)), "b2": rng.standard_normal(3)}
    p = {k: gc.variable(v.copy(), name=k) for k, v in start.items()}
    h = gc.tanh(x @ p["W1"] + p["b1"])
    loss = gc.mean((h @ p["W2"] + p["b2"]) ** 2)
    grads = gc.grad(loss, list(p.values()))
    f = gc.function([x], loss, updates=[(v, v - 0.1 * g) for v, g in zip(p.values(), grads)])
    return f, p, start


def reference(start: dict, xv: np.ndarray) -> dict:
    w = {k: v.copy() for k, v in start.items()}
    h = np.tanh(xv @ w["W1"] + w["b1"])
    y = h @ w["W2"] + w["b2"]
    gy = 2 * y / y.size
    gh = (gy @ w["W2"].T) * (1 - h * h)
    grads = {"W1": xv.T @ gh, "b1": gh.sum(0), "W2": h.T @ gy, "b2": gy.sum(0)}
    return {k: w[k] - 0.1 * grads[k] for k in w}


def test_blas_steps_on_plan_arrays_are_prepared_with_the_plan():
    f, p, start = two_layers()
    assert "xp.gemm(" in f.source and "xp.gemv(" in f.source     # makes the plan, no call
    preps = {k: v for k, v in f.last_plan.ns.items() if isinstance(v, blas.Prepared)}
    made = {k: v["seen"] for k, v in preps.items() if "seen" in v}
    assert made and len(made) < len(preps)       # W1's update reads the feed x: not yet
    assert all(seen[3] is not None for seen in made.values())     # one BLAS call each
    rng = np.random.default_rng(4)
    want = dict(start)
    for _ in range(2):
        xv = rng.standard_normal((256, 128))
        f(xv)
        want = reference(want, xv)
        for k, v in p.items():
            np.testing.assert_allclose(v.value, want[k], rtol=1e-10, atol=1e-12)
    assert all(preps[k]["seen"] is seen for k, seen in made.items())   # used as made
    assert all("seen" in v for v in preps.values())
