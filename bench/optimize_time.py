"""Time the default pipeline on a ~10,000-node graph (a deep MLP with its gradients and SGD
updates, plus redundant algebra for the rules to remove).   python bench/optimize_time.py"""
from __future__ import annotations

import sys
import time

import numpy as np

import graphc as gc
from graphc.passes import optimize


def big_graph(layers: int):
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 8), name="x")
    h, params = x, []
    for i in range(layers):
        W = gc.variable(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, name=f"W{i}")
        b = gc.variable(np.zeros(8, np.float32), name=f"b{i}")
        params += [W, b]
        z = (h @ W + b) * 1.0 + 0.0                    # identities for simplify
        h = gc.tanh(z) + gc.sigmoid(-(-z)) * 0.5       # elementwise chains for fusion
    loss = gc.mean(h * h)
    grads = gc.grad(loss, params)
    return gc.Graph([loss], [(p, p - 0.01 * g) for p, g in zip(params, grads)])


if __name__ == "__main__":
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 250
    graph = big_graph(layers)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        opt, report = optimize(graph, report=True)
        best = min(best, time.perf_counter() - start)
    print(f"{len(graph.nodes)} nodes -> {len(opt.nodes)} nodes in {best:.3f} s (best of 3)")
    print(report)
