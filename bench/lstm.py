"""LSTM training step over gc.scan vs the same LSTM unrolled by hand: build + grad + compile +
first call, and the median step time, at several sequence lengths (batch 32, 8 features,
64 units, SGD). The unrolled graph is built only up to --unroll-max steps.

    python bench/lstm.py [--lengths 10,100,1000] [--unroll-max 100] [--repeat 7]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc
from graphc import nn


def build(steps: int, unrolled: bool):
    x = gc.placeholder((None, steps, 8), "float32", "x")
    y = gc.placeholder((None,), "int64", "y")
    lstm, dense = nn.LSTM(64, seed=0), nn.Dense(10, seed=0)
    if unrolled:
        lstm(x)                                    # creates the same variables
        xs = gc.transpose(x, (1, 0, 2)) @ lstm.W_ih + lstm.b_ih
        h = c = gc.broadcast_to(gc.constant(np.float32(0)), lstm.gate(xs[0], 0))
        for t in range(steps):
            (h, c), _ = lstm.step((h, c), xs[t])
        out = h
    else:
        out = lstm(x)
    loss = gc.mean(gc.softmax_cross_entropy(dense(out), y))
    params = lstm.params + dense.params
    grads = gc.grad(loss, params)
    return gc.function([x, y], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="10,100,1000")
    parser.add_argument("--unroll-max", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for steps in map(int, args.lengths.split(",")):
        xv = rng.standard_normal((32, steps, 8)).astype(np.float32)
        yv = rng.integers(0, 10, 32)
        kinds = ["scan"] + (["unrolled"] if steps <= args.unroll_max else [])
        fns, first = {}, {}
        for kind in kinds:
            start = time.perf_counter()
            fns[kind] = build(steps, kind == "unrolled")
            loss = fns[kind](xv, yv)
            first[kind] = (time.perf_counter() - start, float(loss))
        times = {k: [] for k in kinds}
        for _ in range(args.repeat):                 # interleaved
            for kind in kinds:
                start = time.perf_counter()
                fns[kind](xv, yv)
                times[kind].append(time.perf_counter() - start)
        for kind in kinds:
            print(f"T={steps:<5} {kind:<9} build+compile+first call {first[kind][0]:7.3f} s   "
                  f"step {np.median(times[kind]) * 1e3:8.1f} ms   first loss "
                  f"{first[kind][1]:.6f}   nodes {len(fns[kind].graph.nodes)}")
        if len(kinds) == 2:
            print(f"T={steps:<5} scan / unrolled step time "
                  f"{np.median(times['scan']) / np.median(times['unrolled']):.2f}")


if __name__ == "__main__":
    main()
