"""The plan cache of a Function is bounded: an LRU of PLAN_CACHE feed-shape signatures."""
from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.runtime.function import PLAN_CACHE


def test_plan_cache_keeps_the_most_recent_signatures_and_right_values():
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 3), np.float64, name="x")
    w0 = rng.standard_normal((3, 2))
    W = gc.variable(w0.copy(), name="W")
    out = gc.sum(gc.relu(x @ W) * 2.0)
    f = gc.function([x], out, updates={W: W - 0.01 * gc.grad(out, W)})
    w = w0.copy()
    sizes = list(range(1, 41)) + [40, 3, 1]       # 40 signatures, then a few used again
    for n in sizes:
        xv = rng.standard_normal((n, 3))
        h = xv @ w
        np.testing.assert_allclose(f(xv), 2.0 * np.maximum(h, 0).sum(), rtol=1e-10)
        w = w - 0.01 * xv.T @ (2.0 * (h > 0))        # the SGD update, by hand
        np.testing.assert_allclose(W.value, w, rtol=1e-10)
        assert len(f.plans) <= PLAN_CACHE
    assert PLAN_CACHE < 40 and len(f.plans) == PLAN_CACHE
    kept = [sig[0][0] for sig in f.plans]
    # least recently used first: 9..40 after the first 40 calls; 3 and 1 evict 9 and 10
    assert kept[-3:] == [40, 3, 1]
    assert kept[:-3] == list(range(11, 40))
    assert 2 not in kept and f.last_plan is f.plans[((1, 3),)]
