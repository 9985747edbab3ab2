"""What a compiled call costs beyond its plan's generated `run`, in a real step: the Function
call (the plan's generated entry: feed guard, locks, Ctrl-C holding, errstate, result), the
general path every call took before the entry (`Function.locked_call`: the same promises
through the Function's methods), the plan's `run` alone and the hand-written reference step.
After a step's arrays went through the cache, the Python around `run` misses the cache too, so
it costs several times what a loop of calls on tiny arrays shows.

    OPENBLAS_NUM_THREADS=1 python3 bench/call_overhead.py [--workloads logreg_b512,...]

The ways run in a random order each round, on the four batches in turn: a fixed rotation puts
the same way after the reference every time, and whatever follows another implementation's
step finds its own buffers out of the cache (3-8 us at logreg b512). Three of the four ways
are graphc's, so they often find its buffers warm: compare the graphc ways with each other;
for the ratio to the reference use bench/tree_ratio.py or run.py. Prints per workload each
way's step time (µs, 10th percentile and median) and its median's ratio to the reference's.
"""
from __future__ import annotations

import argparse
import random
import time

import numpy as np

from run import BUILD, batches_for, common, wl   # bench/run.py: the reference, the workloads


def measure(name: str, rounds: int) -> dict:
    kind, B, train = common.workload_spec(name)
    build, Ref, _ = BUILD[kind]
    params, ref_batches, batches = batches_for(kind, name)
    feeds = batches if train else [b[:1] for b in batches]
    ref_feeds = ref_batches if train else [b[:1] for b in ref_batches]
    f = (build if train else wl.graphc_mlp_infer)(params, B)
    ref = Ref(params, B) if train else Ref(params, B, train=False)
    ref_step = ref.step if train else ref.forward
    f(*feeds[0])
    run = f.last_plan.run
    ways = {"Function call": lambda i: f(*feeds[i % 4]),
            "general path": lambda i: f.locked_call(feeds[i % 4]),
            "plan.run": lambda i: run(*feeds[i % 4]),
            "reference": lambda i: ref_step(*ref_feeds[i % 4])}
    times = {k: [] for k in ways}
    order, rng, clock = list(ways), random.Random(0), time.perf_counter
    for i in range(rounds):
        rng.shuffle(order)
        for k in order:
            way = ways[k]
            t = clock()
            way(i)
            times[k].append(clock() - t)
    ref_median = np.median(times["reference"])
    return {k: (np.percentile(v, 10), np.median(v), np.median(v) / ref_median)
            for k, v in times.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="logreg_b512,mlp_b32,mlp_infer_b512,mlp_b512")
    p.add_argument("--rounds", type=int, default=2000)
    args = p.parse_args()
    print(f"{'workload':<16}{'way':<15}{'p10 µs':>10}{'median':>9}{'/ ref':>8}")
    for name in args.workloads.split(","):
        for way, (p10, med, ratio) in measure(name, args.rounds).items():
            print(f"{name:<16}{way:<15}{p10 * 1e6:>10.1f}{med * 1e6:>9.1f}{ratio:>8.3f}")


if __name__ == "__main__":
    main()
