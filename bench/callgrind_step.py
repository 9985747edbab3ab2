"""Instructions (and cache misses) per step, counted by valgrind's callgrind instead of timed:
the same every run whatever else the shared machine does, so 1 % is a fact, not a timing.

    GRAPHC_REFERENCE=/work/shared/reference python3 bench/callgrind_step.py \\
        --workloads mlp_infer_b512,logreg_b512 --steps 20 [--cache] [--functions run,call]

All workloads run in one process under `valgrind --tool=callgrind --instr-atstart=no`
(startup, import, compiling and `--prewarm` steps of every way, which let Python 3.11
specialize its bytecode, are not instrumented). Then every way is stepped `--warm` times,
the counters zeroed, stepped `--steps` times over the four batches in turn and the counters
dumped (client requests from a tiny C helper compiled with the system's cc and
valgrind/callgrind.h, called through ctypes). The ways:
  empty        a Python call of a function that does nothing (the loop's own cost)
  reference    the hand-written reference's step (its forward for inference)
  ref quiet    the reference under the errstate a compiled call sets (NumPy errors ignored)
  plan.run     graphc's generated `run` alone
  run quiet    `run` under the call's errstate
  call         the compiled call `f(x)` (the plan's generated entry)
  general      the general call path (`Function.locked_call`)
The workload "tiny" (a (3, 4) product) counts the call path's parts instead: `run`, the
plan's generated entry called directly, the call, the general path, and alone the errstate
switch the entry makes, `np.errstate(all="ignore")` entered, the lock taken and given back,
the Ctrl-C flag set and cleared (`--steps 1000`: the parts are ~100-10,000 instructions).
Printed per way: instructions per step (Ir), of them in glibc's memset/memcpy (`mem*`: large
blocks go through `rep stos`/`rep movs`, which callgrind counts once per byte: a GEMM with
beta = 0 zeroing its output first shows as ~1 instruction per byte), the difference to the
reference's, and with
--cache (callgrind's cache simulator: LRU, no prefetching) the L1 and last-level data
read/write misses per step. Valgrind reads this AMD EPYC's last level as one 256 MB
direct-mapped cache (so: no misses at all); `--ll` sets it, by default to the per-core L2
(512 KiB, 8 ways), where a step's misses happen (L3 is 32 MiB, shared by the host's
tenants). --functions A,B lists the functions whose exclusive counts per step (--event, Ir
by default) differ most between ways A and B.
Slow: valgrind runs a 512-row GEMM step in ~2 s of CPU even uninstrumented, ~3-5 s counted
(mlp_infer_b512 with the defaults: ~25 min on a loaded 2-core machine); count few steps.
The counts include OpenBLAS's kernels: at one BLAS thread (set here) they are the same code as
outside valgrind (valgrind reports the host's CPU features; no AVX-512 here either way).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MARKS_C = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(const char *s) { CALLGRIND_DUMP_STATS_AT(s); }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""
# glibc's large memset/memcpy are `rep stos`/`rep movs`: callgrind counts every iteration (one
# per byte), so their share of Ir is shown apart
MEM = re.compile(r":__(memset|memmove|memcpy)\w*$")
WAYS = ("empty", "reference", "ref quiet", "plan.run", "run quiet", "call", "general")
TINY = ("empty", "plan.run", "entry", "call", "general", "errstate", "np.errstate", "lock",
        "held")


def marks_library(folder: str) -> str:
    """The C helper (three client requests) built once per run, in a temporary folder."""
    src, lib = os.path.join(folder, "marks.c"), os.path.join(folder, "libmarks.so")
    with open(src, "w") as fh:
        fh.write(MARKS_C)
    subprocess.run(["cc", "-O1", "-shared", "-fPIC", "-o", lib, src], check=True)
    return lib


# inside valgrind -----------------------------------------------------------------------------
def tiny_ways() -> dict:
    """The call path's parts on a graph of one (3, 4) product: the plan's `run`, the entry
    called directly, the compiled call, the general path, and the entry's pieces alone."""
    import numpy as np

    import graphc as gc
    from graphc.runtime.function import _ERRSTATE, _QUIET
    x = gc.placeholder((None, 4), "float32", name="x")
    f = gc.function([x], x * 2.0)
    a = np.ones((3, 4), np.float32)
    f(a)
    run, entry, lock, state = f.last_plan.run, f.entry, f.locks[0], sys.modules[
        "graphc.runtime.atomic"].STATE
    quiet, loud = _ERRSTATE.set, _ERRSTATE.reset

    def errstate(i):
        loud(quiet(_QUIET))

    def locks(i):
        lock.acquire()
        lock.release()

    def held(i):
        state.held = True
        state.held = False

    return {"empty": lambda i: None, "plan.run": lambda i: run(a), "entry": lambda i: entry((a,)),
            "call": lambda i: f(a), "general": lambda i: f.locked_call((a,)),
            "errstate": errstate, "np.errstate": lambda i: np.errstate(all="ignore").__enter__(),
            "lock": locks, "held": held}


def ways_for(name: str) -> dict:
    """The ways above for one workload, as bench/aa.py builds them ("tiny": `tiny_ways`)."""
    if name == "tiny":
        return tiny_ways()
    from run import Workload     # bench/run.py: the reference, the workloads

    from graphc.runtime.function import _ERRSTATE, _QUIET
    w = Workload(name)
    batches, ref_batches = w.batches, w.ref_batches
    f = w.build()
    f(*batches[0])
    run = f.last_plan.run
    ref_step = w.ref_step()
    quiet, loud = _ERRSTATE.set, _ERRSTATE.reset

    def quietly(step, feeds):
        def way(i):
            token = quiet(_QUIET)
            try:
                return step(*feeds[i % 4])
            finally:
                loud(token)
        return way

    return {"empty": lambda i: None,
            "reference": lambda i: ref_step(*ref_batches[i % 4]),
            "ref quiet": quietly(ref_step, ref_batches),
            "plan.run": lambda i: run(*batches[i % 4]),
            "run quiet": quietly(run, batches),
            "call": lambda i: f(*batches[i % 4]),
            "general": lambda i: f.locked_call(batches[i % 4])}


def inside(a) -> None:
    """The measured process: every way of every workload warmed, its counters zeroed,
    stepped, dumped (one process: Python's startup under valgrind takes minutes)."""
    import ctypes
    lib = ctypes.CDLL(a.lib)
    lib.cg_dump.argtypes = [ctypes.c_char_p]
    for workload in a.workloads.split(","):
        ways = ways_for(workload)
        names = [w for w in (TINY if workload == "tiny" else a.ways.split(",")) if w in ways]
        for name in names:                # Python 3.11 quickens a function's bytecode after
            for i in range(a.prewarm):    # 8 calls: steady state, not counted
                ways[name](i)
        lib.cg_start()
        for name in names:
            way = ways[name]
            for i in range(a.warm):
                way(i)
            lib.cg_zero()
            for i in range(a.warm, a.warm + a.steps):
                way(i)
            lib.cg_dump(f"{workload}/{name}".encode())
        lib.cg_stop()         # the next workload's compiling runs uninstrumented


# the driver ----------------------------------------------------------------------------------
def totals(path: str) -> tuple[str, dict]:
    """('workload/way', {event: count}) of one dump file."""
    text = open(path).read()
    way = re.search(r"^desc: Trigger: Client Request: (.*/.*)$", text, re.M)
    events = re.search(r"^events: (.*)$", text, re.M).group(1).split()
    total = re.search(r"^(?:totals|summary): (.*)$", text, re.M).group(1).split()
    return (way.group(1) if way else "?"), dict(zip(events, map(int, total)))


def functions(path: str, event: str = "Ir") -> dict:
    """{function: exclusive count of the event} of one dump (callgrind_annotate, every
    function)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no",
                          f"--show={event}", f"--sort={event}", path],
                         capture_output=True, text=True, check=True).stdout
    found: dict = {}
    for line in out.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*?)(?:\s+\[[^\]]*\])?$", line)
        if m and ":" in m.group(2) and not line.lstrip().startswith("Ir"):
            found[m.group(2)] = found.get(m.group(2), 0) + int(m.group(1).replace(",", ""))
    return found


def count(a, lib: str, folder: str) -> dict:
    """{workload: {way: (events per step, dump path)}} from one valgrind run."""
    out = os.path.join(folder, "cg.out")
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           *(["--cache-sim=yes", f"--LL={a.ll}"] if a.cache else []),
           sys.executable, os.path.abspath(__file__), "--inside", a.workloads, "--lib", lib,
           "--ways", a.ways, "--steps", str(a.steps), "--warm", str(a.warm),
           "--prewarm", str(a.prewarm)]
    env = dict(os.environ, BENCH_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL if not a.verbose
                   else None)
    found: dict = {}
    for fn in os.listdir(folder):
        if fn.startswith("cg.out."):
            path = os.path.join(folder, fn)
            key, ev = totals(path)
            if key != "?":
                workload, way = key.split("/", 1)
                ev["mem*"] = sum(v for k, v in functions(path).items() if MEM.search(k))
                found.setdefault(workload, {})[way] = ({k: v / a.steps for k, v in ev.items()},
                                                       path)
    return found


def report(workload: str, found: dict, a) -> None:
    ref = found.get("reference", (None,))[0]
    base = found.get("empty", (None,))[0]
    cols = ["Ir", "mem*"] + (["D1mr", "D1mw", "DLmr", "DLmw"] if a.cache else [])
    print(f"{workload}: per step, mean of {a.steps} steps after {a.warm} warm (1 BLAS thread)")
    print(f"  {'way':<11}" + "".join(f"{c:>13}" for c in cols)
          + f"{'Ir - empty':>13}{'Ir - ref':>11}{'/ ref':>8}{'w/o mem*':>10}")
    for way in (TINY if workload == "tiny" else a.ways.split(",")):
        if way not in found:
            continue
        ev = found[way][0]
        row = "".join(f"{ev.get(c, 0):>13,.0f}" for c in cols)
        net = ev["Ir"] - (base["Ir"] if base and way != "empty" else 0)
        diff = (f"{ev['Ir'] - ref['Ir']:>11,.0f}{ev['Ir'] / ref['Ir']:>8.4f}"
                f"{(ev['Ir'] - ev['mem*']) / (ref['Ir'] - ref['mem*']):>10.4f}"
                if ref and way not in ("empty",) else "")
        print(f"  {way:<11}{row}{net:>13,.0f}{diff}")
    if a.functions:
        one, two = a.functions.split(",")
        if one in found and two in found:
            f1, f2 = functions(found[one][1], a.event), functions(found[two][1], a.event)
            diffs = sorted(((f2.get(k, 0) - f1.get(k, 0)) / a.steps, k)
                           for k in set(f1) | set(f2))
            print(f"  functions: exclusive {a.event} per step, {two} - {one} (largest first; "
                  f"total {sum(d for d, _ in diffs):+,.0f})")
            for d, k in sorted(diffs, key=lambda t: -abs(t[0]))[:a.top]:
                if abs(d) >= 1:
                    print(f"    {d:>+12,.0f}  {k[:110]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mlp_infer_b512,logreg_b512,mlp_b512,mlp_b32")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--steps", type=int, default=20, help="counted steps per way")
    ap.add_argument("--warm", type=int, default=4,
                    help="steps per way before counting (instrumented: the caches' state)")
    ap.add_argument("--prewarm", type=int, default=12,
                    help="steps per way before instrumenting (Python 3.11 quickens a "
                    "function's bytecode after 8 calls)")
    ap.add_argument("--cache", action="store_true", help="simulate caches (misses per step)")
    ap.add_argument("--ll", default="524288,8,64", help="the simulated last-level cache: "
                    "bytes,ways,line (default: this host's per-core L2)")
    ap.add_argument("--functions", default="", help="two ways A,B: per-function Ir of B - A")
    ap.add_argument("--event", default="Ir", help="the event --functions compares (with "
                    "--cache: D1mr, D1mw, DLmr, DLmw too)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep", default="", help="keep the dump files in this folder")
    ap.add_argument("--verbose", action="store_true", help="valgrind's own output")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    ap.add_argument("--lib", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.inside:
        sys.path[:0] = [HERE, os.path.join(HERE, "..")]
        return inside(argparse.Namespace(workloads=a.inside, lib=a.lib, ways=a.ways,
                                         steps=a.steps, warm=a.warm, prewarm=a.prewarm))
    with tempfile.TemporaryDirectory() as tmp:
        folder = a.keep or tmp
        os.makedirs(folder, exist_ok=True)
        lib = marks_library(tmp)
        found = count(a, lib, folder)
        for workload in a.workloads.split(","):
            report(workload, found.get(workload, {}), a)


if __name__ == "__main__":
    main()
