"""Two graphc trees in one process, compile stages alternated: median CPU ms per stage of
bench/scale.py's chain or wide graph, and the ratio (second tree / first). On a loaded host
separate runs move by +-30 %; here both trees share the host's state at each moment.

    git archive main | tar -x -C /tmp/main          # a copy of main beside the branch
    OPENBLAS_NUM_THREADS=1 python3 bench/scale_ab.py chain 556 8 /tmp/main .

chain 556 blocks and wide 770 are ~10k nodes. Each tree's graphc is imported in turn (its
modules dropped from sys.modules before the next), so both stay loaded; the collector is run
before each stage set. GC-timing changes cannot be compared this way (one collector).
"""
from __future__ import annotations

import gc as pygc
import statistics
import sys
import time

import numpy as np

sys.setrecursionlimit(max(sys.getrecursionlimit(), 100_000))


def load(root: str):
    for m in [m for m in sys.modules if m.startswith("graphc") or m == "scale"]:
        del sys.modules[m]
    sys.path[:2] = [root, root + "/bench"]
    import graphc
    import scale
    return graphc, scale


def stages(gc, scale, shape: str, blocks: int) -> dict:
    clock, t = time.process_time, {}
    s = clock()
    x, loss, params = scale.SHAPES[shape](blocks)
    t["build"] = clock() - s
    s = clock()
    grads = gc.grad(loss, params)
    ups = [(p, p - 0.01 * g) for p, g in zip(params, grads)]
    t["grad"] = clock() - s
    graph = gc.Graph([loss], ups)
    s = clock()
    opt = gc.optimize(graph)
    t["optimize"] = clock() - s
    s = clock()
    f = gc.function([x], list(opt.outputs), list(opt.updates), optimize=False)
    f(np.ones((2, 4), np.float32))
    t["first call"] = clock() - s
    t["total"] = sum(t.values())
    return t


def main(argv: list[str]) -> None:
    shape, blocks, rounds, *roots = argv
    sys.path[:0] = ["", ""]
    trees = {r: load(r) for r in roots}
    res: dict = {r: {} for r in roots}
    for k in range(int(rounds)):
        for r in (roots if k % 2 else roots[::-1]):
            pygc.collect()
            for name, v in stages(*trees[r], shape, int(blocks)).items():
                res[r].setdefault(name, []).append(v)
    med = {r: {k: statistics.median(v) for k, v in d.items()} for r, d in res.items()}
    for r in roots:
        print(f"{r:<20} {shape} {blocks}: "
              + "  ".join(f"{k} {v * 1e3:.0f}" for k, v in med[r].items()))
    a, b = med[roots[0]], med[roots[-1]]
    print("ratio: " + "  ".join(f"{k} {b[k] / a[k]:.2f}" for k in a))


if __name__ == "__main__":
    main(sys.argv[1:])
