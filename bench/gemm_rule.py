"""Evidence for `blas.pays`: an update w -= x.T @ g as matmul + subtract (x one of 4 arrays in
turn) against one prepared GEMM call (runtime/blas.py), per shape, with the operands' arrays
kept (plan buffers: x the same array) or x one of 4 arrays in turn (a feed: the prepared call
changes one address).

    OPENBLAS_NUM_THREADS=1 python bench/gemm_rule.py --rounds 200
    OPENBLAS_NUM_THREADS=1 python bench/gemm_rule.py --vectors    # blas.pays_vector

Reported: the 20th-percentile microseconds of each (a cold cache before every call, as in a
step), and gemm / numpy. `--vectors`: a bias update b -= sum(g, 0) as a product with ones and
a subtract against one prepared GEMV (g the same array, or one of 4 in turn).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from graphc.runtime import blas  # noqa: E402

SHAPES = [(8, 8, 32), (16, 16, 32), (32, 16, 32), (32, 32, 32), (64, 10, 32), (64, 64, 32),
          (128, 64, 32), (784, 128, 32), (64, 10, 512), (128, 64, 512), (784, 128, 512),
          (1600, 64, 64), (784, 1, 512)]


def timed(fns: dict, rounds: int, cold) -> dict:
    """20th-percentile microseconds of each function, called in turns (each in every
    position), with the cache made cold before every call."""
    out = {k: [] for k in fns}
    order = list(fns)
    for i in range(rounds):
        for k in order[i % 3:] + order[:i % 3]:
            cold.sum()
            t = time.perf_counter()
            fns[k]()
            out[k].append(time.perf_counter() - t)
    return {k: float(np.percentile(v, 20)) * 1e6 for k, v in out.items()}


VECTORS = [(32, 10), (32, 64), (32, 128), (512, 10), (512, 64), (512, 128), (512, 1024),
           (4096, 256)]


def vectors(rounds: int, cold) -> None:
    rng = np.random.default_rng(0)
    print(f"{'rows, n':>16} {'numpy':>8} {'gemv':>8} {'ratio':>6} {'new g':>8} {'ratio':>6}")
    for m, n in VECTORS:
        gs = [rng.standard_normal((m, n)).astype(np.float32) for _ in range(4)]
        ones, b, t = np.ones(m, np.float32), np.zeros(n, np.float32), np.empty(n, np.float32)
        prep, prep2 = blas.Prepared(), blas.Prepared()
        turn = iter(range(10 ** 9))

        def numpy():
            np.matmul(ones, gs[next(turn) % 4], out=t)
            np.subtract(b, t, out=b)

        def gemv():
            blas.gemv(b, gs[next(turn) % 4 * 0], ones, True, -1.0, 1.0, prep)

        def gemv_new():
            blas.gemv(b, gs[next(turn) % 4], ones, True, -1.0, 1.0, prep2)
        got = timed({"numpy": numpy, "gemv": gemv, "new": gemv_new}, rounds, cold)
        a, g, c = got["numpy"], got["gemv"], got["new"]
        print(f"{str((m, n)):>16} {a:8.1f} {g:8.1f} {g / a:6.2f} {c:8.1f} {c / a:6.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--shapes", help="m,n,k;m,n,k;... instead of the usual list")
    ap.add_argument("--vectors", action="store_true", help="bias updates: GEMV")
    args = ap.parse_args()
    if args.vectors:
        return vectors(args.rounds, np.ones(2_000_000, np.float32))
    shapes = SHAPES if not args.shapes else \
        [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    rng = np.random.default_rng(0)
    cold = np.ones(2_000_000, np.float32)
    print(f"{'m, n, k':>16} {'numpy':>8} {'gemm':>8} {'ratio':>6} {'new x':>8} {'ratio':>6}")
    for m, n, k in shapes:
        xs = [rng.standard_normal((k, m)).astype(np.float32) for _ in range(4)]
        g = rng.standard_normal((k, n)).astype(np.float32)
        w = rng.standard_normal((m, n)).astype(np.float32)
        t = np.empty_like(w)
        prep, prep2 = blas.Prepared(), blas.Prepared()
        turn = iter(range(10 ** 9))

        def numpy():
            np.matmul(xs[next(turn) % 4].T, g, out=t)
            np.subtract(w, t, out=w)

        def gemm():
            blas.gemm(w, xs[next(turn) % 4 * 0], g, True, False, -1.0, 1.0, prep)

        def gemm_new():
            blas.gemm(w, xs[next(turn) % 4], g, True, False, -1.0, 1.0, prep2)
        got = timed({"numpy": numpy, "gemm": gemm, "new": gemm_new}, args.rounds, cold)
        a, b, c = got["numpy"], got["gemm"], got["new"]
        print(f"{str((m, n, k)):>16} {a:8.1f} {b:8.1f} {b / a:6.2f} {c:8.1f} {c / a:6.2f}")


if __name__ == "__main__":
    main()
