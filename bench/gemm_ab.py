"""The accumulating GEMM (runtime/blas.py) on and off in one process, against the reference.

    BENCH_THREADS=1 python bench/gemm_ab.py --workloads mlp_b32,mlp_b512,cnn_b64 --rounds 300

Each workload is compiled twice, with the GEMM rule and with `blas.GEMM` emptied while it is
lowered (what a NumPy without a BLAS found gets: matmul then subtract), and stepped in turns
with the hand-written reference, each in every position in turn. Reported: medians of the
per-round ratios on / ref, off / ref and on / off (steadier than ratios of medians on a shared
machine), and the best step times; with one BLAS thread the same ratios in the calling
thread's CPU time (what other processes holding the core do not add).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run  # noqa: E402  (the reference on the path, BLAS threads pinned, the workloads)

from graphc.runtime import blas  # noqa: E402


def build(name):
    kind, B, train = run.common.workload_spec(name)
    build_g, Ref, _ = run.BUILD[kind]
    params, ref_batches, batches = run.batches_for(kind, name)
    on = build_g(params, B)
    on(*batches[0])
    found, blas.GEMM = blas.GEMM, {}
    try:
        off = build_g(params, B)
        off(*batches[0])                  # its plan is made without the GEMM rule
    finally:
        blas.GEMM = found
    assert "xp.gemm(" in on.source and "xp.gemm(" not in off.source
    ref = Ref(params, B)
    return {"on": lambda i: on(*batches[i % 4]), "off": lambda i: off(*batches[i % 4]),
            "ref": lambda i: ref.step(*ref_batches[i % 4])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default="mlp_b32,mlp_b512,cnn_b64")
    ap.add_argument("--rounds", type=int, default=300)
    args = ap.parse_args()
    print(f"BLAS threads {run.common.THREADS}; medians of per-round ratios (best ms)")
    for name in args.workloads.split(","):
        runners = build(name)
        order = list(runners)
        times = {k: [] for k in order}
        cpu = {k: [] for k in order}
        for i in range(args.rounds):
            for k in order[i % 3:] + order[:i % 3]:
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
