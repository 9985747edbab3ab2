"""The CNN step compiled with Winograd and with im2col (its plan made as at 1 BLAS thread
and as at 2: blas.threads patched while the first call lowers it), in turns in one process
beside the hand-written reference, at the BLAS threads BENCH_THREADS sets (default 2): the
evidence for winograd.MAX_THREADS on the whole step. On a shared machine the load moves every
time by 10-50 %: per-round ratios are compared.

    GRAPHC_REFERENCE=/work/shared/reference python3 bench/winograd_ab.py [--rounds 60]
    BENCH_THREADS=1 ...

Rows: median step ms, best step ms, median of the per-round ratios to the reference.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.environ.get("GRAPHC_REFERENCE", os.path.join(HERE, "..", "..", "shared", "reference"))
sys.path.insert(0, os.path.abspath(REF))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))
sys.path.insert(0, HERE)

import common  # noqa: E402  (pins the BLAS threads before numpy is imported)
import numpy_ref  # noqa: E402

import workloads as wl  # noqa: E402
from graphc.runtime import blas  # noqa: E402


def compiled(params, B, feeds, threads):
    """The step whose plan is made (at its first call) as if the BLAS ran on `threads`."""
    keep = blas.threads
    blas.threads = lambda: threads
    try:
        f = wl.graphc_cnn(params, B)
        f(*feeds)
        return f
    finally:
        blas.threads = keep


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--workload", default="cnn_b64")
    args = ap.parse_args()
    params, batches = common.data_for(args.workload)
    B = common.workload_spec(args.workload)[1]
    ours = [(x.transpose(0, 3, 1, 2).copy(), y) for x, y in batches]
    fw, fi = compiled(params, B, ours[0], 1), compiled(params, B, ours[0], 2)
    assert "winograd" in fw.source and "winograd" not in fi.source
    ref = numpy_ref.CNN(params, B)
    runners = {"winograd": lambda i: fw(*ours[i % 4]), "im2col": lambda i: fi(*ours[i % 4]),
               "reference": lambda i: ref.step(*batches[i % 4])}
    for k in runners:
        for i in range(3):
            runners[k](i)
    times = {k: [] for k in runners}
    order = list(runners)
    load = os.getloadavg()[0]
    for i in range(args.rounds):
        for k in order[i % 3:] + order[:i % 3]:
            t = time.perf_counter()
            runners[k](i)
            times[k].append(time.perf_counter() - t)
    print(f"{args.workload}, {args.rounds} rounds, BLAS threads {common.THREADS}, "
          f"load {load:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'':10s} {'median ms':>10s} {'best ms':>8s} {'ratio':>6s}")
    for k, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(ts, times["reference"]))
        print(f"{k:10s} {statistics.median(ts) * 1e3:10.3f} {min(ts) * 1e3:8.3f} {ratio:6.3f}")


if __name__ == "__main__":
    main()
