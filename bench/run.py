"""Step times of graphc against the shared hand-written reference and our own NumPy baseline.

    python bench/run.py                       # every workload
    python bench/run.py --workloads mlp_b32,cnn_b64 --steps 200

Each workload is built three ways (graphc, the reference in ../shared/reference, the plain
NumPy baseline in bench/workloads.py); their steps are interleaved in one process and the
table reports median step times and the ratio graphc / reference (and the ratio of the best
step times, which the load of a shared machine disturbs less). `compile s` is building the
graph, its gradients, `gc.function` (optimize + lower) and the first call. `MB graphc / ref`
is the peak memory (tracemalloc, which sees NumPy's buffers) of building each implementation
and running two steps, beyond the weights and batches loaded before: each measured alone in
a fresh subprocess (--no-memory skips it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.environ.get("GRAPHC_REFERENCE",       # a worktree elsewhere: point at shared/reference
                     os.path.join(HERE, "..", "..", "shared", "reference"))
if not os.path.exists(os.path.join(REF, "numpy_ref.py")):
    sys.exit(f"bench/run.py needs the hand-written reference beside the repository: "
             f"{os.path.abspath(REF)}/numpy_ref.py (the shared/ folder) is missing")
sys.path.insert(0, os.path.abspath(REF))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..")))
sys.path.insert(0, HERE)

import common  # noqa: E402  (pins the BLAS threads before numpy is imported)
import numpy as np  # noqa: E402
import numpy_ref  # noqa: E402

import workloads as wl  # noqa: E402

# issue 17's targets (ratio graphc / reference)
TARGETS = {"mlp_b32": 0.85, "mlp_b512": 1.00, "mlp_infer_b512": 1.00, "logreg_b512": 1.00,
           "cnn_b64": 0.90}
BUILD = {"mlp": (wl.graphc_mlp, numpy_ref.MLP, wl.NumpyMLP),
         "logreg": (wl.graphc_logreg, numpy_ref.LogReg, wl.NumpyLogReg),
         "cnn": (wl.graphc_cnn, numpy_ref.CNN, wl.NumpyCNN)}


def batches_for(kind, name):
    params, batches = common.data_for(name)
    if kind == "cnn":      # graphc and the baseline are NCHW
        return params, batches, [(x.transpose(0, 3, 1, 2).copy(), y) for x, y in batches]
    return params, batches, batches


class Workload:
    """One workload as every bench script takes it: `build()` compiles graphc's step,
    `ref_step()` / `mine_step()` make the reference's / the baseline's, and the batches of
    graphc (NCHW images) and of the reference. Inference times the MLP's forward of x alone
    (its check value is the logits' sum)."""

    def __init__(self, name: str):
        kind, self.B, self.train = common.workload_spec(name)
        self.make, self.Ref, self.Mine = BUILD[kind]
        self.params, self.ref_batches, self.batches = batches_for(kind, name)
        if not self.train:
            self.make = wl.graphc_mlp_infer
            self.ref_batches = [b[:1] for b in self.ref_batches]
            self.batches = [b[:1] for b in self.batches]

    def build(self):
        return self.make(self.params, self.B)

    def ref_step(self):
        if not self.train:
            return self.Ref(self.params, self.B, train=False).forward
        return self.Ref(self.params, self.B).step

    def mine_step(self):
        mine = self.Mine(self.params, self.B)
        return mine.step if self.train else mine.forward


def run_workload(name, steps):
    w = Workload(name)
    ref_batches, batches = w.ref_batches, w.batches
    t0 = time.perf_counter()
    f = w.build()
    first = float(np.sum(f(*batches[0])))
    compile_s = time.perf_counter() - t0
    ref_step, mine_step = w.ref_step(), w.mine_step()
    loss_ref = float(np.sum(ref_step(*ref_batches[0])))
    loss_mine = float(np.sum(mine_step(*batches[0])))
    runners = {"graphc": lambda i: f(*batches[i % 4]),
               "reference": lambda i: ref_step(*ref_batches[i % 4]),
               "numpy": lambda i: mine_step(*batches[i % 4])}
    times = {k: [] for k in runners}
    order = list(runners)
    for i in range(1, steps + 1):
        turn = order[i % 3:] + order[:i % 3]      # interleaved, each in every position in turn
        for k in turn:
            t = time.perf_counter()
            runners[k](i)
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v[steps // 10:]) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    return {"workload": name, "graphc_ms": med["graphc"], "reference_ms": med["reference"],
            "best_ratio": best["graphc"] / best["reference"], "numpy_ms": med["numpy"],
            "ratio": med["graphc"] / med["reference"],
            "numpy_ratio": med["numpy"] / med["reference"], "target": TARGETS[name],
            "compile_s": compile_s, "loss1": first, "loss1_ref": loss_ref,
            "loss1_numpy": loss_mine}


def peak_memory(name, impl):
    """Peak traced MB of building `impl` ("graphc" or "reference") and two steps, in this
    process (call it in a fresh one: see memory_column)."""
    import tracemalloc
    w = Workload(name)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    if impl == "graphc":
        f = w.build()
        step = lambda b: f(*b)  # noqa: E731
        feed = w.batches
    else:
        ref = w.ref_step()
        step = lambda b: ref(*b)  # noqa: E731
        feed = w.ref_batches
    for b in feed[:2]:
        step(b)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return (peak - base) / 2**20


def memory_column(name):
    """(graphc MB, reference MB), each from its own subprocess."""
    out = []
    for impl in ("graphc", "reference"):
        res = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-of",
                              f"{name}:{impl}"], capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout.strip().splitlines()[-1])["mb"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workloads", default=",".join(TARGETS))
    ap.add_argument("--steps", type=int, default=0, help="steps per implementation")
    ap.add_argument("--no-optimize", action="store_true", help="compile without the passes")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    ap.add_argument("--memory-of", help=argparse.SUPPRESS)     # workload:impl, in a subprocess
    args = ap.parse_args()
    wl.OPTIMIZE[0] = not args.no_optimize
    if args.memory_of:
        name, impl = args.memory_of.split(":")
        print(json.dumps({"mb": peak_memory(name, impl)}))
        return
    print(f"{'workload':<12} {'graphc ms':>10} {'ref ms':>8} {'ratio':>6} {'target':>6} "
          f"{'numpy ms':>9} {'np/ref':>6} {'min ratio':>9} {'compile s':>9} "
          f"{'MB graphc / ref':>15}  loss1 graphc / ref")
    for name in args.workloads.split(","):
        steps = args.steps or (60 if name.startswith("cnn") else 400)
        r = run_workload(name, steps)
        ok = "ok" if r["ratio"] <= r["target"] else "MISS"
        mem = "-" if args.no_memory else "{:.1f} / {:.1f}".format(*memory_column(name))
        print(f"{name:<12} {r['graphc_ms']:10.3f} {r['reference_ms']:8.3f} {r['ratio']:6.2f} "
              f"{r['target']:6.2f} {r['numpy_ms']:9.3f} {r['numpy_ratio']:6.2f} "
              f"{r['best_ratio']:9.2f} "
              f"{r['compile_s']:9.3f} {mem:>15}  {r['loss1']:.6f} / {r['loss1_ref']:.6f} {ok}",
              flush=True)
        assert np.isclose(r["loss1"], r["loss1_ref"], rtol=1e-4), "first-step losses differ"


if __name__ == "__main__":
    main()
