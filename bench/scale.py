"""Compile time of big graphs with many updates, stage by stage, to see that it grows
linearly: build, grad, optimize (`gc.optimize`) and the first call of `gc.function` (its
optimize turned off, so the figure is lowering + plan + one run).

    OPENBLAS_NUM_THREADS=1 python bench/scale.py                      # 1k, 10k, 50k nodes
    OPENBLAS_NUM_THREADS=1 python bench/scale.py --sizes 1000,10000,100000 --shapes chain
    OPENBLAS_NUM_THREADS=1 python bench/scale.py --sizes 10000 --cpu   # CPU time, not wall
    OPENBLAS_NUM_THREADS=1 python bench/scale.py --sizes 20000 --calls --no-mlp  # Python calls
    OPENBLAS_NUM_THREADS=1 python bench/scale.py --sizes 10000,100000 --gc --no-mlp  # collector

The last line is the compile time of the MLP training step of bench/run.py (build, grad,
optimize, lower, first call; --no-mlp skips it).

Two shapes, each with one variable per block updated by SGD from `gc.grad`:
* chain: h = tanh(h * w_i) + 0.5 * h, block after block (a deep graph);
* wide: y_i = tanh(x * w_i) for every block, summed by a balanced tree (a broad graph:
  x and the loss's gradient have one user per block).
N counts the nodes of the built graph (forward, gradients and updates); `us/node` is each
stage's time per node, flat when the stage is linear. `--cpu` measures this process's CPU
time instead of wall time (on a shared, loaded machine wall time doubles at random).
`--calls` counts the Python function calls of each stage (cProfile, so the run is ~3x
slower): the same on every run, it shows a 5 % change that the host's +-30 % hides.
`--gc` adds, per graph, the seconds (of the clock in use) each stage spent in Python's cyclic
collector and the generation of each collection that took 10 ms of CPU or more (gc.callbacks): a
walk over every young or old object lands in whichever stage allocates when a threshold is
crossed.
"""
from __future__ import annotations

import argparse
import cProfile
import gc as gc_module
import os
import sys
import time

import numpy as np

sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import graphc as gc  # noqa: E402


def chain(blocks: int):
    x = gc.placeholder((None, 4), name="x")
    h, params = x, []
    for i in range(blocks):
        w = gc.variable(np.full(4, 0.5, np.float32), name=f"w{i}")
        params.append(w)
        h = gc.tanh(h * w) + 0.5 * h
    return x, gc.mean(h * h), params


def wide(blocks: int):
    x = gc.placeholder((None, 4), name="x")
    params, ys = [], []
    for i in range(blocks):
        w = gc.variable(np.full(4, 0.5, np.float32), name=f"w{i}")
        params.append(w)
        ys.append(gc.tanh(x * w))
    while len(ys) > 1:              # a balanced sum: depth log2(blocks)
        ys = [a + b for a, b in zip(ys[::2], ys[1::2])] + ys[len(ys) - len(ys) % 2:]
    return x, gc.mean(ys[0] * ys[0]), params


SHAPES = {"chain": chain, "wide": wide}


def mlp_compile(runs: int = 5) -> list[float]:
    """Seconds to build the MLP 784-128-64-10 training step (SGD, softmax cross-entropy),
    differentiate, optimize, lower and call it once on a batch of 32, per fresh build."""
    import workloads as wl
    rng = np.random.default_rng(0)
    shapes = {"W1": (784, 128), "b1": (128,), "W2": (128, 64), "b2": (64,), "W3": (64, 10),
              "b3": (10,)}
    p = {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}
    x, y = np.zeros((32, 784), np.float32), np.arange(32) % 10
    out = []
    for _ in range(runs):
        start = CLOCK[0]()
        wl.graphc_mlp(p, 32)(x, y)
        out.append(CLOCK[0]() - start)
    return out


def nodes_per_block(shape: str) -> float:
    """Built nodes per block, from two small graphs (so a size N picks its block count)."""
    counts = []
    for b in (10, 20):
        _, loss, params = SHAPES[shape](b)
        grads = gc.grad(loss, params)
        counts.append(len(gc.Graph([loss], [(p, p - 0.01 * g)
                                            for p, g in zip(params, grads)]).nodes))
    return (counts[1] - counts[0]) / 10


CLOCK = [time.perf_counter]
COLLECTOR = {"on": False, "time": 0.0, "start": 0.0, "walks": []}


def collector_clock(phase: str, info: dict) -> None:
    """gc.callbacks hook: the collector's time on CLOCK; the generations of the long walks."""
    if phase == "start":
        COLLECTOR["start"] = time.process_time()
        COLLECTOR["clock"] = CLOCK[0]()
    else:
        COLLECTOR["time"] += CLOCK[0]() - COLLECTOR["clock"]
        if time.process_time() - COLLECTOR["start"] >= 0.01:
            COLLECTOR["walks"].append(info["generation"])


class CallCount:
    """A clock that reads the Python function calls made so far (from a cProfile profile
    running the whole time): differences count each stage's calls."""

    def __init__(self):
        self.profile = cProfile.Profile()
        self.profile.enable()

    def __call__(self) -> int:
        self.profile.disable()
        calls = sum(e.callcount for e in self.profile.getstats())
        self.profile.enable()
        return calls


def measure(shape: str, size: int) -> tuple[int, dict]:
    blocks = max(2, round(size / nodes_per_block(shape)))
    gc_module.collect()     # the previous size's garbage is not collected on this one's time
    t, collected = {}, {}
    clock = CLOCK[0]

    def stage(name, start, walks):
        t[name] = clock() - start
        collected[name] = (COLLECTOR["time"], COLLECTOR["walks"][walks:])

    start, walks, COLLECTOR["time"] = clock(), len(COLLECTOR["walks"]), 0.0
    x, loss, params = SHAPES[shape](blocks)
    stage("build", start, walks)
    start, walks, COLLECTOR["time"] = clock(), len(COLLECTOR["walks"]), 0.0
    grads = gc.grad(loss, params)
    updates = [(p, p - 0.01 * g) for p, g in zip(params, grads)]
    stage("grad", start, walks)
    graph = gc.Graph([loss], updates)
    start, walks, COLLECTOR["time"] = clock(), len(COLLECTOR["walks"]), 0.0
    opt = gc.optimize(graph)
    stage("optimize", start, walks)
    start, walks, COLLECTOR["time"] = clock(), len(COLLECTOR["walks"]), 0.0
    f = gc.function([x], list(opt.outputs), list(opt.updates), optimize=False)
    value = f(np.ones((2, 4), np.float32))[0]
    stage("first call", start, walks)
    COLLECTOR["stages"] = collected
    if not np.isfinite(value):
        raise SystemExit(f"{shape} {size}: loss is {value}")
    return len(graph.nodes), t


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000,50000",
                    help="comma-separated node counts (e.g. 1000,10000,50000,100000)")
    ap.add_argument("--shapes", default="chain,wide", help="chain, wide or both")
    ap.add_argument("--no-mlp", action="store_true", help="skip the MLP step's compile time")
    ap.add_argument("--cpu", action="store_true",
                    help="CPU time of this process instead of wall time")
    ap.add_argument("--calls", action="store_true",
                    help="Python function calls per stage (thousands) instead of time")
    ap.add_argument("--gc", action="store_true",
                    help="also the collector's time per stage and its walks' generations")
    args = ap.parse_args(argv)
    if args.cpu:
        CLOCK[0] = time.process_time
    if args.calls:
        CLOCK[0] = CallCount()
    if args.gc:
        COLLECTOR["on"] = True
        gc_module.callbacks.append(collector_clock)
    # seconds and us per node, or thousands of calls and calls per node
    unit, per, scale, per_scale = ("kcall", "c/node", 1e-3, 1) if args.calls else \
        ("s", "us/node", 1, 1e6)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    stages = ["build", "grad", "optimize", "first call"]
    print(f"{'graph':<6} {'nodes':>7}  " + "  ".join(f"{s:>16}" for s in stages)
          + f"  {'total ' + unit:>8}")
    print(f"{'':<6} {'':>7}  " + "  ".join(f"{unit:>7} {per:>8}" for _ in stages))
    for shape in args.shapes.split(","):
        for size in sizes:
            n, t = measure(shape, size)
            cells = "  ".join(f"{t[s] * scale:7.2f} {t[s] / n * per_scale:8.1f}" for s in stages)
            print(f"{shape:<6} {n:>7}  {cells}  {sum(t.values()) * scale:8.2f}", flush=True)
            if args.gc:
                print("  collector: " + ", ".join(
                    f"{k} {v[0] * scale:.3f}{' (walks of generation ' if v[1] else ''}"
                    f"{', '.join(map(str, v[1]))}{')' if v[1] else ''}"
                    for k, v in COLLECTOR["stages"].items()), flush=True)
    if not args.no_mlp:
        ts = mlp_compile()
        print(f"MLP 784-128-64-10 step, batch 32 (build, grad, optimize, lower, first call): "
              f"first {ts[0] * scale:.3f} {unit}, median of {len(ts)} "
              f"{sorted(ts)[len(ts) // 2] * scale:.3f} {unit}")


if __name__ == "__main__":
    main()
