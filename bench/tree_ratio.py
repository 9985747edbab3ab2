"""The graphc / reference ratio of one workload with graphc taken from a given source tree (to
compare two trees, e.g. main and a branch, run alternately), in wall and thread CPU time. The
two run in a random order each round: in a fixed order one always finds its buffers after the
other's step (out of the cache). Inference workloads time the reference's forward.

    GRAPHC_REFERENCE=/work/shared/reference BENCH_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python3 bench/tree_ratio.py /work/main logreg_b512 --steps 3000
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", help="the source tree whose graphc and bench/ are used")
    ap.add_argument("workload")
    ap.add_argument("--steps", type=int, default=1000)
    a = ap.parse_args()
    root = os.path.abspath(a.root)
    sys.path[:0] = [os.path.join(root, "bench"), root]
    from run import Workload    # that tree's bench/run.py
    w = Workload(a.workload)
    batches, ref_batches = w.batches, w.ref_batches
    f, ref_step = w.build(), w.ref_step()
    ways = {"graphc": lambda i: f(*batches[i % 4]),
            "reference": lambda i: ref_step(*ref_batches[i % 4])}
    for way in ways.values():
        way(0)
    cpu, wall = {k: [] for k in ways}, {k: [] for k in ways}
    order, rng = list(ways), random.Random(1)
    for i in range(1, a.steps + 1):
        rng.shuffle(order)
        for k in order:
            c, t = time.thread_time(), time.perf_counter()
            ways[k](i)
            cpu[k].append(time.thread_time() - c)
            wall[k].append(time.perf_counter() - t)
    med = {name: {k: statistics.median(v) for k, v in ts.items()}
           for name, ts in (("wall", wall), ("cpu", cpu))}
    print(f"{a.workload} {root}: median ratio wall "
          f"{med['wall']['graphc'] / med['wall']['reference']:.3f}, cpu "
          f"{med['cpu']['graphc'] / med['cpu']['reference']:.3f} (graphc "
          f"{med['wall']['graphc'] * 1e6:.0f} us, reference "
          f"{med['wall']['reference'] * 1e6:.0f} us wall)")


if __name__ == "__main__":
    main()
