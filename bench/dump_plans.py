"""Dump every op-table row's and motif's optimized graph and generated code (and the scale
graphs'), one file, to check that a compile-time change leaves them identical:

    OPENBLAS_NUM_THREADS=1 python3 bench/dump_plans.py /tmp/before.txt   # on main
    OPENBLAS_NUM_THREADS=1 python3 bench/dump_plans.py /tmp/after.txt    # on the branch
    diff /tmp/before.txt /tmp/after.txt

Each row and motif is built as in tests/test_runtime_forms.py (its gradient graph, twice on
leaves of the same types); each case is dumped twice, with and without check_numerics.
"""
from __future__ import annotations

import os
import sys

sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402
from tests.test_runtime_forms import CASES, graph_of  # noqa: E402


def dump_function(f, feeds) -> str:
    try:
        f(*feeds)
    except Exception as e:      # noqa: BLE001 (a row that fails at run time: its message)
        return f"{str(f.graph)}\n--- call failed: {type(e).__name__}: {e}\n"
    return f"{str(f.graph)}\n--- source\n{f.source}\n--- report\n{f.plan_report()}\n"


def main(path: str) -> None:
    import scale
    out = []
    for name, row in CASES:
        for numerics in (False, True):
            leaves, outs = graph_of(row)
            try:
                f = gc.function(leaves, outs, check_numerics=numerics)
                text = dump_function(f, list(row.inputs) * 2)
            except Exception as e:      # noqa: BLE001
                text = f"--- compile failed: {type(e).__name__}: {e}\n"
            out.append(f"=== {name} numerics={numerics}\n{text}")
    for shape, build in scale.SHAPES.items():
        for blocks in (3, 40):
            x, loss, params = build(blocks)
            grads = gc.grad(loss, params)
            f = gc.function([x], [loss], [(p, p - 0.01 * g) for p, g in zip(params, grads)])
            out.append(f"=== scale {shape} {blocks}\n"
                       + dump_function(f, [np.ones((2, 4), np.float32)]))
    with open(path, "w") as fh:
        fh.write("".join(out))
    print(f"{len(out)} cases written to {path}")


if __name__ == "__main__":
    main(sys.argv[1])
