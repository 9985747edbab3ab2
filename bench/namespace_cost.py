"""What the backend seam costs per call: each workload's plan run as generated (`xp.add`)
and the same source with the old module names (`np.add`, `kernels.`, `conv.`), interleaved.

    OPENBLAS_NUM_THREADS=1 python bench/namespace_cost.py mlp_b32 logreg_b512 cnn_b64
"""
from __future__ import annotations

import os
import re
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]

import numpy as np  # noqa: E402

from graphc.runtime import conv, kernels  # noqa: E402
from test_runtime_snapshots import WORKLOADS  # noqa: E402


def old_source(source: str) -> str:
    def name(m):
        n = m.group(1)
        module = "kernels" if hasattr(kernels, n) and not hasattr(np, n) else \
            "conv" if hasattr(conv, n) and not hasattr(np, n) else "np"
        return f"{module}.{n}"
    return re.sub(r"\bxp\.(\w+)", name, source)


def main(names: list[str]) -> None:
    for name in names or sorted(WORKLOADS):
        f, feeds = WORKLOADS[name]()
        f(*feeds)
        plan = f.last_plan
        ns = dict(plan.ns, np=np, kernels=kernels, conv=conv)
        exec(old_source(plan.source), ns)
        runs = {"np": ns["run"], "xp": plan.run}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for i in range(9):
            for k in list(runs)[::1 if i % 2 else -1]:
                times[k].append(min(timeit.repeat(lambda: runs[k](*feeds), number=100,
                                                  repeat=3)) / 100)
        best = {k: min(v) for k, v in times.items()}
        print(f"{name:16} np {best['np'] * 1e6:9.1f} us   xp {best['xp'] * 1e6:9.1f} us   "
              f"xp/np {best['xp'] / best['np']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
