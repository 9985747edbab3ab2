"""The accumulating GEMM (runtime/blas.py) on and off in one process, against the reference.

    BENCH_THREADS=1 python bench/gemm_ab.py --workloads mlp_b32,mlp_b512,cnn_b64 --rounds 300
    BENCH_THREADS=1 python bench/gemm_ab.py --off vector,mean --workloads mlp_b32,mlp_b512

Each workload is compiled twice, with the GEMM rule and with `blas.GEMM` emptied while it is
lowered (what a NumPy without a BLAS found gets: matmul then subtract), and stepped in turns
with the hand-written reference, in a random order each round. Reported: medians of the
per-round ratios on / ref, off / ref and on / off (steadier than ratios of medians on a shared
machine), and the best step times; with one BLAS thread the same ratios in the calling
thread's CPU time (what other processes holding the core do not add). `--off` names the
rules the "off" build goes without instead: gemm (all of them), vector (bias updates as GEMV:
blas.pays_vector), mean (a vector's mean as one dot product: rules.mean_form), transposed
(products stored transposed at several BLAS threads: layout.transposed_pays; run it with
BENCH_THREADS=2).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (the reference on the path, BLAS threads pinned, the workloads)

from graphc.runtime import blas, layout, rules  # noqa: E402

OFF = {"gemm": (blas, "GEMM", {}), "vector": (blas, "pays_vector", lambda *a: False),
       "mean": (rules, "mean_form", lambda *a: None),
       "transposed": (layout, "transposed_pays", lambda *a: False)}


def build(name, off_rules=("gemm",)):
    kind, B, train = run.common.workload_spec(name)
    build_g, Ref, _ = run.BUILD[kind]
    params, ref_batches, batches = run.batches_for(kind, name)
    if not train:
        build_g = run.wl.graphc_mlp_infer
        batches, ref_batches = [x[:1] for x in batches], [x[:1] for x in ref_batches]
    on = build_g(params, B)
    on(*batches[0])
    saved = [(m, k, getattr(m, k)) for m, k, _ in (OFF[r] for r in off_rules)]
    try:
        for m, k, v in (OFF[r] for r in off_rules):
            setattr(m, k, v)
        off = build_g(params, B)
        off(*batches[0])                  # its plan is made without the rules
    finally:
        for m, k, v in saved:
            setattr(m, k, v)
    assert on.source != off.source
    ref = Ref(params, B) if train else Ref(params, B, train=False)
    ref_step = ref.step if train else ref.forward
    return {"on": lambda i: on(*batches[i % 4]), "off": lambda i: off(*batches[i % 4]),
            "ref": lambda i: ref_step(*ref_batches[i % 4])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="mlp_b32,mlp_b512,cnn_b64")
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--off", default="gemm", help="rules the off build goes without")
    args = ap.parse_args()
    print(f"BLAS threads {run.common.THREADS}; medians of per-round ratios (best ms)")
    for name in args.workloads.split(","):
        runners = build(name, args.off.split(","))
        order = list(runners)
        times = {k: [] for k in order}
        cpu = {k: [] for k in order}
        rng = random.Random(1)
        for i in range(args.rounds):
            rng.shuffle(order)          # a fixed rotation puts one way after the reference
            for k in order:             # more often than the other (its cache colder)
                t, c = time.perf_counter(), time.thread_time()
                runners[k](i)
                times[k].append(time.perf_counter() - t)
                cpu[k].append(time.thread_time() - c)
        skip = args.rounds // 10

        def ratio(a, b, of=times):
            return statistics.median(x / y for x, y in zip(of[a][skip:], of[b][skip:]))
        best = {k: min(v) * 1e3 for k, v in times.items()}
        print(f"{name:10s} on/ref {ratio('on', 'ref'):.3f}  off/ref {ratio('off', 'ref'):.3f}"
              f"  on/off {ratio('on', 'off'):.3f}   best ms on {best['on']:.3f} off "
              f"{best['off']:.3f} ref {best['ref']:.3f}")
        if run.common.THREADS == 1:     # the calling thread's CPU time: the BLAS work too
            print(f"{'  CPU time':10s} on/ref {ratio('on', 'ref', cpu):.3f}  off/ref "
                  f"{ratio('off', 'ref', cpu):.3f}  on/off {ratio('on', 'off', cpu):.3f}")


if __name__ == "__main__":
    main()
