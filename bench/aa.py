"""Is the harness fair? An A/A test of bench/run.py's and bench/tree_ratio.py's ways of timing:
a second instance of the hand-written reference takes graphc's slot (its ratio to the
reference should be 1.00), beside graphc's compiled call, its plan's `run` alone and `run`
under the errstate the call sets (NumPy's floating-point errors ignored).

    GRAPHC_REFERENCE=/work/shared/reference BENCH_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python3 bench/aa.py mlp_infer_b512 --steps 300 --blocks 6

Harnesses: `rotation` is run.py's (the way under test, the reference and the plain NumPy
baseline, rotated each round), `random` is tree_ratio.py's (the way and the reference in a
random order each round). Each block times one way under one harness; the blocks go round
the ways in turn so that all of them see the same moments of a shared machine. Printed: per
way and harness the median over blocks of the ratio median(way) / median(reference), and the
blocks' range, in wall time and in the calling thread's CPU time (steadier when other
processes share the cores; with one BLAS thread it is the whole step's).
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from run import Workload   # bench/run.py: the reference, the workloads

from graphc.runtime.function import _ERRSTATE, _QUIET   # the call's errstate (NumPy >= 2)


def ways_for(name: str) -> tuple[dict, object, object]:
    """The ways to put in graphc's slot, the reference's step and the baseline's."""
    w = Workload(name)
    batches, ref_batches = w.batches, w.ref_batches
    f = w.build()
    f(*batches[0])
    run = f.last_plan.run
    mine_step = w.mine_step()
    ref, ref2 = w.ref_step(), w.ref_step()
    quiet, loud, state = _ERRSTATE.set, _ERRSTATE.reset, _QUIET

    def quiet_run(i):
        token = quiet(state)
        try:
            return run(*batches[i % 4])
        finally:
            loud(token)

    ways = {"graphc": lambda i: f(*batches[i % 4]),
            "plan.run": lambda i: run(*batches[i % 4]),
            "run quiet": quiet_run,
            "reference 2": lambda i: ref2(*ref_batches[i % 4])}
    return (ways, lambda i: ref(*ref_batches[i % 4]),
            lambda i: mine_step(*batches[i % 4]))


def block(way, ref, mine, harness: str, steps: int, rng: random.Random) -> tuple:
    """median(way) / median(reference) over `steps` rounds of one harness, in wall and in
    thread CPU time."""
    runners = {"way": way, "reference": ref}
    if harness == "rotation":
        runners["numpy"] = mine
    order = list(runners)
    times: dict = {k: [] for k in runners}
    cpu: dict = {k: [] for k in runners}
    clock, thread = time.perf_counter, time.thread_time
    for i in range(1, steps + 1):
        if harness == "rotation":
            turn = order[i % 3:] + order[:i % 3]
        else:
            rng.shuffle(order)
            turn = order
        for k in turn:
            c, t = thread(), clock()
            runners[k](i)
            times[k].append(clock() - t)
            cpu[k].append(thread() - c)
    med = statistics.median
    return (med(times["way"]) / med(times["reference"]), med(cpu["way"]) / med(cpu["reference"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workload")
    ap.add_argument("--steps", type=int, default=300, help="rounds per block")
    ap.add_argument("--blocks", type=int, default=6, help="blocks per way and harness")
    ap.add_argument("--harness", default="rotation,random")
    a = ap.parse_args()
    ways, ref, mine = ways_for(a.workload)
    harnesses = a.harness.split(",")
    ratios: dict = {(w, h): [] for w in ways for h in harnesses}
    rng = random.Random(0)
    for _ in range(a.blocks):
        for h in harnesses:
            for w, way in ways.items():
                ratios[w, h].append(block(way, ref, mine, h, a.steps, rng))
    print(f"{a.workload}: median ratio to the reference over {a.blocks} blocks of {a.steps} "
          f"rounds (range), wall / thread CPU time")
    for (w, h), rs in ratios.items():
        wall, cpu = [r[0] for r in rs], [r[1] for r in rs]
        print(f"  {w:<12} {h:<9} {statistics.median(wall):.3f} ({min(wall):.3f}-"
              f"{max(wall):.3f}) / {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f})")


if __name__ == "__main__":
    main()
