"""The backend seam: generated code reaches arrays only through the one namespace `xp`."""
from __future__ import annotations

import re
import types

import numpy as np
import pytest

import graphc as gc
from graphc.ir import apply
from graphc.runtime.backend import KERNELS, xp


def functions():
    """An MLP training step with every dense activation, a CNN step and a fused chain."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 6), dtype="float64", name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    h = x
    ws = []
    for k, act in enumerate(("relu", "sigmoid", "tanh")):
        W = gc.variable(rng.standard_normal((6, 6)) * 0.3, name=f"W{k}")
        b = gc.variable(np.zeros(6), name=f"b{k}")
        h = apply("dense", h, W, b, activation=act)
        ws += [W, b]
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    mlp = gc.function([x, y], loss, updates=[(w, w - 0.1 * g)
                                             for w, g in zip(ws, gc.grad(loss, ws))])
    mlp_feeds = [rng.standard_normal((5, 6)), np.array([0, 1, 2, 3, 4])]

    img = gc.placeholder((None, 1, 6, 6), dtype="float64", name="img")
    K = gc.variable(rng.standard_normal((8, 1, 3, 3)) * 0.3, name="K")
    pooled = gc.max_pool2d(gc.relu(gc.conv2d(img, K)), 2)
    cost = gc.sum(pooled * pooled)
    cnn = gc.function([img], cost, updates=[(K, K - 0.01 * gc.grad(cost, [K])[0])])
    cnn_feeds = [rng.standard_normal((2, 1, 6, 6))]

    z = gc.placeholder((3, 4), dtype="float64", name="z")
    chain = gc.function([z], gc.softplus(z) * gc.sigmoid(z) + gc.log1p(gc.abs(z)))
    return [(mlp, mlp_feeds), (cnn, cnn_feeds), (chain, [rng.standard_normal((3, 4))])]


@pytest.mark.parametrize("k", range(3))
def test_generated_code_names_no_array_module_but_xp(k):
    f, feeds = functions()[k]
    f(*feeds)
    plan = f.last_plan
    assert re.search(r"\b(np|numpy|kernels|conv)\.", plan.source) is None, plan.source
    assert "xp." in plan.source
    modules = [name for name, v in plan.ns.items()
               if isinstance(v, types.ModuleType) and name != "__builtins__"]
    assert modules == [], modules
    assert plan.ns["xp"] is xp


def test_the_namespace_holds_numpy_functions_and_the_runtime_kernels_unwrapped():
    assert xp.matmul is np.matmul and xp.add is np.add and xp.copyto is np.copyto
    assert all(getattr(xp, f.__name__) is f for f in KERNELS)
