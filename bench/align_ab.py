"""What aligned plan buffers are worth: one workload compiled twice in one process, its planned
buffers and constants on a cache line (runtime/layout.py `aligned`) or all 16 bytes past one
(where NumPy's allocator often puts them: an mmapped block starts 16 bytes into its page), the
two stepped in a random order each round with the reference.

    GRAPHC_REFERENCE=/work/shared/reference BENCH_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python3 bench/align_ab.py --workloads mlp_b512,cnn_b64 --rounds 300

Prints per workload the median step times (thread CPU time, which other processes on a
shared machine disturb less than wall time) and the ratio aligned / misaligned.
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import numpy as np

from run import BUILD, batches_for, common, wl   # bench/run.py: the reference, the workloads

from graphc.runtime import layout

KEEP = layout.aligned


def off_line(shape, dtype) -> np.ndarray:
    """Like layout.aligned, but 16 bytes past a cache line."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.itemsize == 0:
        return np.empty(shape, dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + 2 * layout.ALIGN, np.uint8)
    start = -raw.ctypes.data % layout.ALIGN + 16
    return raw[start:start + size].view(dtype).reshape(shape)


def build(name: str, alloc):
    kind, B, train = common.workload_spec(name)
    make = BUILD[kind][0] if train else wl.graphc_mlp_infer
    params, _, batches = batches_for(kind, name)
    feeds = batches if train else [b[:1] for b in batches]
    layout.aligned = alloc
    try:
        f = make(params, B)
        f(*feeds[0])                 # the plan (and its buffers) is made here
    finally:
        layout.aligned = KEEP
    return lambda i: f(*feeds[i % 4])


def measure(name: str, rounds: int) -> dict:
    kind, B, train = common.workload_spec(name)
    Ref = BUILD[kind][1]
    params, ref_batches, _ = batches_for(kind, name)
    ref_feeds = ref_batches if train else [b[:1] for b in ref_batches]
    ref = Ref(params, B) if train else Ref(params, B, train=False)
    ref_step = ref.step if train else ref.forward
    ways = {"aligned": build(name, KEEP), "16 past": build(name, off_line),
            "reference": lambda i: ref_step(*ref_feeds[i % 4])}
    times: dict = {k: [] for k in ways}
    order, rng = list(ways), random.Random(0)
    for i in range(rounds):
        rng.shuffle(order)
        for k in order:
            t = time.thread_time()
            ways[k](i)
            times[k].append(time.thread_time() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mlp_infer_b512,mlp_b512,mlp_b32,cnn_b64")
    ap.add_argument("--rounds", type=int, default=300)
    a = ap.parse_args()
    for name in a.workloads.split(","):
        m = measure(name, a.rounds)
        on, off, ref = m["aligned"], m["16 past"], m["reference"]
        print(f"{name:<16} aligned {on * 1e6:8.0f} us, 16 past {off * 1e6:8.0f} us, reference "
              f"{ref * 1e6:8.0f} us: aligned / 16 past {on / off:.3f}, to the reference "
              f"{on / ref:.3f} / {off / ref:.3f}", flush=True)


if __name__ == "__main__":
    main()
