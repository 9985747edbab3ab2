"""Node counts of training steps (forward + gradients + SGD updates) before/after the default
pipeline: the MLP 784-128-64-10 (ReLU, softmax CE) and the small CNN of DESIGN.md.

    PYTHONPATH=. python bench/step_counts.py
"""
from __future__ import annotations

import numpy as np

import graphc as gc

RNG = np.random.default_rng(0)


def param(shape, name):
    return gc.variable(RNG.standard_normal(shape).astype(np.float32) * 0.05, name=name)


def loss_of(logits, y, naive: bool):
    if naive:     # cross-entropy written by hand
        return gc.mean(-gc.sum(gc.one_hot(y, 10) * gc.log(gc.softmax(logits)), axis=-1))
    return gc.mean(gc.softmax_cross_entropy(logits, y))


def sgd(loss, params):
    grads = gc.grad(loss, params)
    return gc.Graph([loss], [(p, p - 0.1 * g) for p, g in zip(params, grads)])


def mlp_step(naive: bool = False) -> gc.Graph:
    x = gc.placeholder((None, 784), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    sizes, params, h = [784, 128, 64, 10], [], x
    for i, (m, n) in enumerate(zip(sizes, sizes[1:])):
        W, b = param((m, n), f"W{i}"), gc.variable(np.zeros(n, np.float32), name=f"b{i}")
        params += [W, b]
        h = h @ W + b
        if i < 2:
            h = gc.relu(h)
    return sgd(loss_of(h, y, naive), params)


def cnn_step(naive: bool = False) -> gc.Graph:
    x = gc.placeholder((None, 1, 28, 28), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    k1, c1 = param((32, 1, 3, 3), "k1"), gc.variable(np.zeros((32, 1, 1), np.float32), name="c1")
    k2, c2 = param((64, 32, 3, 3), "k2"), gc.variable(np.zeros((64, 1, 1), np.float32), name="c2")
    W1, b1 = param((1600, 128), "W1"), gc.variable(np.zeros(128, np.float32), name="b1")
    W2, b2 = param((128, 10), "W2"), gc.variable(np.zeros(10, np.float32), name="b2")
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, k1) + c1), 2)          # (n, 32, 13, 13)
    h = gc.max_pool2d(gc.relu(gc.conv2d(h, k2) + c2), 2)          # (n, 64, 5, 5)
    h = gc.relu(gc.reshape(h, (-1, 1600)) @ W1 + b1)
    return sgd(loss_of(h @ W2 + b2, y, naive), [k1, c1, k2, c2, W1, b1, W2, b2])


if __name__ == "__main__":
    for name, build in (("MLP", mlp_step), ("CNN", cnn_step)):
        for naive in (False, True):
            graph = build(naive)
            opt, report = gc.optimize(graph, report=True)
            loss = "hand-written CE" if naive else "softmax_cross_entropy"
            print(f"{name} step ({loss}): {len(graph.nodes)} -> {len(opt.nodes)} nodes")
            if not naive:
                print(report)
