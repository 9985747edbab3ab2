"""What a compiled call costs beyond its plan's code when a step has just gone through the caches.

callgrind counts ~8,000 instructions between a call and its plan's `run` (callgrind_step.py),
~3 us, yet at MLP inference b512 the call times 15-40 us over `run`. Each part of the call path
(the feed guard, the lock, NumPy's errstate switched off and on, the Ctrl-C bookkeeping) runs
code and touches objects that the step's megabytes have pushed out of the caches: cold, each
costs several microseconds that no instruction count shows.

    GRAPHC_REFERENCE=/work/shared/reference BENCH_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        python3 bench/cold_call.py [--workload mlp_infer_b512] [--rounds 3000]

Part 1, alone after a step: one way timed right after a reference step (cold), then again at
once (hot). Part 2, in a step: `run` wrapped in one part of the call path at a time, the generated
entry and the call, in a random order each round; median thread CPU time over `run`'s.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from run import Workload   # bench/run.py

from graphc.runtime import atomic
from graphc.runtime.function import _ERRSTATE, _QUIET   # the call's errstate (NumPy >= 2)


def parts(f) -> dict:
    """Each part of the compiled call's path as a function of the feeds (the entry in
    runtime/function.py `entries` runs all of them)."""
    plan, lock = f.last_plan, f.locks[0]
    quiet, loud, state = _ERRSTATE.set, _ERRSTATE.reset, atomic.STATE

    def ctrl_c(a):
        if atomic.get_ident() == atomic.MAIN:
            state.held = True
            state.held = False
            return state.pending

    return {"python call": lambda a: None, "feed guard": plan.accepts,
            "lock": lambda a: lock.release() if lock.acquire() else None,
            "errstate": lambda a: loud(quiet(_QUIET)), "ctrl-c": ctrl_c}


def alone(w, f, rounds: int) -> None:
    ref, ways = w.ref_step(), parts(f)
    cold: dict = {k: [] for k in ways}
    hot: dict = {k: [] for k in ways}
    clock, names = time.perf_counter_ns, list(ways)
    for i in range(rounds):
        k, a = names[i % len(names)], w.batches[i % 4]
        ref(*w.ref_batches[i % 4])
        t = clock()
        ways[k](a)
        cold[k].append(clock() - t)
        t = clock()
        ways[k](a)
        hot[k].append(clock() - t)
    for k in ways:
        print(f"  {k:<12} after a step {statistics.median(cold[k]) / 1e3:6.2f} us, "
              f"again {statistics.median(hot[k]) / 1e3:5.2f} us")


def in_step(w, f, rounds: int) -> None:
    run, ways = f.last_plan.run, parts(f)

    def wrapped(part):
        def way(a):
            part(a)
            return run(*a)
        return way

    runners = {"run": lambda a: run(*a), "run again": lambda a: run(*a),
               **{f"{k} + run": wrapped(p) for k, p in ways.items() if k != "python call"},
               "entry": f.entry, "call": lambda a: f(*a)}
    times: dict = {k: [] for k in runners}
    order, rng, clock = list(runners), random.Random(0), time.thread_time
    for i in range(rounds):
        rng.shuffle(order)
        a = w.batches[i % 4]
        for k in order:
            t = clock()
            runners[k](a)
            times[k].append(clock() - t)
    base = statistics.median(times["run"])
    print(f"  run {base * 1e6:.0f} us; over it: " + ", ".join(
        f"{k} {(statistics.median(v) - base) * 1e6:+.1f}" for k, v in times.items() if k != "run"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="mlp_infer_b512")
    ap.add_argument("--rounds", type=int, default=3000)
    a = ap.parse_args()
    w = Workload(a.workload)
    f = w.build()
    f(*w.batches[0])
    print(f"{a.workload}: the call path's parts alone, after a reference step (median)")
    alone(w, f, a.rounds)
    print(f"{a.workload}: in a step (median thread CPU time, random order, {a.rounds} rounds)")
    in_step(w, f, a.rounds // 2)


if __name__ == "__main__":
    main()
