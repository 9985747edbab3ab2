"""What a compiled call costs beyond its plan's generated `run`, in a real step: the call of
the Function (locks, Ctrl-C holding, errstate, the feed check), its plan's `run` alone and the
hand-written reference step, taking turns, each timed outside and inside `run`. After a
step's arrays went through the cache, the Python around `run` misses the cache too, so it
costs several times what a loop of calls on tiny arrays shows.

    OPENBLAS_NUM_THREADS=1 python3 bench/call_overhead.py [--workloads logreg_b512,...]

Prints per workload the step time (µs, 10th percentile and median) of each way and the time
outside `run` of the two graphc ones.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from run import BUILD, batches_for, common, wl   # bench/run.py: the reference, the workloads


def measure(name: str, rounds: int) -> dict:
    kind, B, train = common.workload_spec(name)
    build, Ref, _ = BUILD[kind]
    params, ref_batches, batches = batches_for(kind, name)
    feeds = batches[0] if train else batches[0][:1]
    f = (build if train else wl.graphc_mlp_infer)(params, B)
    ref = Ref(params, B) if train else Ref(params, B, train=False)
    ref_step = ref.step if train else ref.forward
    ref_feeds = ref_batches[0] if train else ref_batches[0][:1]
    f(*feeds)
    plan = f.last_plan
    run, inside = plan.run, []

    def timed(*args):
        t = time.perf_counter()
        out = run(*args)
        inside.append(time.perf_counter() - t)
        return out

    plan.run = timed
    ways = {"Function call": lambda: f(*feeds), "plan.run": lambda: plan.run(*feeds),
            "reference": lambda: ref_step(*ref_feeds)}
    total = {k: [] for k in ways}
    outside = {k: [] for k in ways}
    for i in range(rounds):
        for k in list(ways)[i % 3:] + list(ways)[:i % 3]:     # each in every position
            inside.append(np.nan)                             # the reference has no run
            t = time.perf_counter()
            ways[k]()
            total[k].append(time.perf_counter() - t)
            outside[k].append(total[k][-1] - inside[-1])
    plan.run = run
    return {k: (np.percentile(total[k], 10), np.median(total[k]),
                np.percentile(outside[k], 10), np.median(outside[k])) for k in ways}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="logreg_b512,mlp_b32,mlp_infer_b512,mlp_b512")
    p.add_argument("--rounds", type=int, default=2000)
    args = p.parse_args()
    print(f"{'workload':<16}{'way':<15}{'step p10':>10}{'median':>9}"
          f"{'outside p10':>13}{'median':>9}   (µs)")
    for name in args.workloads.split(","):
        for way, t in measure(name, args.rounds).items():
            print(f"{name:<16}{way:<15}" + "".join(f"{v * 1e6:>{w}.1f}"
                                                   for v, w in zip(t, (10, 9, 13, 9))))


if __name__ == "__main__":
    main()
