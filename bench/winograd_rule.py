"""Where Winograd pays (graphc/runtime/winograd.py's MIN_CHANNELS, MAX_WORK): the three steps
of one stride-1 3x3 convolution (forward, input gradient, weight gradient sharing their
transforms, as a compiled plan runs them) by F(4x4, 3x3) against the compiled im2col kernels
(forward, weight gradient from the forward's columns, input gradient), channels-last input,
over channel counts and map sizes. Prints best-of-rounds ms and the ratio: CPU time of this
thread at 1 BLAS thread, wall time at more (the BLAS's other threads' work is not this
thread's CPU time), the thread count as `blas.threads()` finds it.

    OPENBLAS_NUM_THREADS=1 python3 bench/winograd_rule.py [--rounds 10] [--batch 64]
    OPENBLAS_NUM_THREADS=2 python3 bench/winograd_rule.py     # the rule at 2 threads
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from graphc.runtime import blas, conv, winograd  # noqa: E402


def best(fs, rounds, clock=time.thread_time):
    """Each function's best time in ms by `clock` (this thread's CPU time by default: wall
    times on the shared machine include other processes' turns), the functions taking
    turns."""
    ts = [[] for _ in fs]
    for r in range(rounds + 1):
        for f, t in zip(fs, ts):
            t0 = clock()
            f()
            t.append(clock() - t0)
    return [min(t[1:]) * 1e3 for t in ts]


def steps(n, c, h, co, pad, dtype):
    """Both ways' three steps as two functions."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, h, c)).astype(dtype).transpose(0, 3, 1, 2)
    w = rng.standard_normal((co, c, 3, 3)).astype(dtype)
    ho = h + 2 * pad - 2
    g = rng.standard_normal((n, ho, ho, co)).astype(dtype).transpose(0, 3, 1, 2)
    kw = dict(stride=(1, 1), padding=(pad, pad))
    out, dw, dx = (np.empty((n, co, ho, ho), dtype), np.empty(w.shape, dtype),
                   np.empty((n, c, h, h), dtype))
    ws, wsx, wf, wg, wi, sh = {}, {}, {}, {}, {}, {}

    def im2col():
        conv.conv2d(x, w, **kw, out=out, ws=ws, last=True, nchw=False)
        conv.conv2d_grad_input(g, w, x, **kw, out=dx, ws=wsx, gT=conv.nhwc(g))
        conv.conv2d_grad_weight(x, g, w, **kw, out=dw, ws=ws, cols_ready=True, last=True,
                                gT=conv.nhwc(g))

    def wino():
        winograd.winograd_conv2d(x, w, **kw, out=out, ws=wf, nchw=False)
        winograd.winograd_grad_input(g, w, x, **kw, out=dx, ws=wi, fwd=wf, shared=sh,
                                     fill=True, gT=conv.nhwc(g))
        winograd.winograd_grad_weight(x, g, w, **kw, out=dw, ws=wg, fwd=wf, shared=sh,
                                      fill=False)
    return im2col, wino


def rule(n, c, h, co, pad, threads) -> str:
    """What `winograd.pays` chooses for this shape at this thread count."""
    ok = winograd.pays((n, c, h, h), (co, c, 3, 3), (1, 1), (pad, pad), np.float32, threads)
    return "wino" if ok else "im2col"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    threads = blas.threads()
    clock = time.thread_time if threads == 1 else time.perf_counter
    print(f"BLAS threads {threads} ({'CPU' if threads == 1 else 'wall'} ms), "
          f"load {os.getloadavg()[0]:.1f}")
    print("  C  Co  map pad  work   im2col   winograd  ratio  rule")
    for c, co in ((8, 8), (16, 16), (16, 32), (32, 16), (32, 32), (32, 64), (64, 64)):
        for h, pad in ((4, 1), (6, 1), (8, 0), (9, 0), (12, 0), (13, 0), (26, 0)):
            if h == 26 and c * co > 1024:
                continue
            ti, tw = best(steps(a.batch, c, h, co, pad, np.float32), a.rounds, clock)
            ho = h + 2 * pad - 2
            work = 36 * (-(-ho // 4)) ** 2 / (9 * ho * ho)   # Winograd's products / im2col's
            print(f"{c:3d} {co:3d} {h:4d} {pad:3d} {work:5.2f} {ti:8.2f} {tw:10.2f} "
                  f"{tw / ti:6.2f}  {rule(a.batch, c, h, co, pad, threads)}")


if __name__ == "__main__":
    main()
