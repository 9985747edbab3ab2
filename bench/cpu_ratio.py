"""bench/run.py's interleaved graphc / reference ratio, timed in CPU time of the calling thread
as well as wall time: on a shared, overloaded machine (load 6-10 on 2 cores) wall times
include the time other processes hold the core, CPU time mostly not (caches and memory
bandwidth are still shared). One thread: set OPENBLAS_NUM_THREADS=1.

    GRAPHC_REFERENCE=/work/shared/reference BENCH_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python3 bench/cpu_ratio.py [--workload cnn_b64] [--steps 150]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402  (bench/run.py: workloads, the reference, their batches)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", default="cnn_b64")
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    kind, b, _ = run.common.workload_spec(a.workload)
    build_g, Ref, _ = run.BUILD[kind]
    params, ref_batches, batches = run.batches_for(kind, a.workload)
    f, ref = build_g(params, b), Ref(params, b)
    runners = {"graphc": lambda i: f(*batches[i % 4]),
               "reference": lambda i: ref.step(*ref_batches[i % 4])}
    for k in runners:
        runners[k](0)
    cpu, wall = {k: [] for k in runners}, {k: [] for k in runners}
    order = list(runners)
    for i in range(1, a.steps + 1):
        for k in order[i % 2:] + order[:i % 2]:
            c, t = time.thread_time(), time.perf_counter()
            runners[k](i)
            cpu[k].append(time.thread_time() - c)
            wall[k].append(time.perf_counter() - t)
    for name, ts in (("cpu", cpu), ("wall", wall)):
        med = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
        best = {k: min(v) * 1e3 for k, v in ts.items()}
        print(f"{a.workload} {name:4s} graphc {med['graphc']:7.2f} ms, reference "
              f"{med['reference']:7.2f} ms: median ratio {med['graphc'] / med['reference']:.3f}"
              f", best ratio {best['graphc'] / best['reference']:.3f}")


if __name__ == "__main__":
    main()
