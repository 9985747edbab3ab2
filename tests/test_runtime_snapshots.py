"""The generated code of the benchmark workloads, locked as reviewed snapshot files.

A change to the lowering shows here as a diff of the emitted NumPy code. After reviewing it,
rewrite the files with `GRAPHC_SNAPSHOTS=update python3 -m pytest tests/test_runtime_snapshots.py`
and say in the commit why the code changed.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))

import workloads as wl  # noqa: E402

from graphc.runtime import blas  # noqa: E402

SNAPSHOTS = os.path.join(HERE, "snapshots")


def params(shapes: dict, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in shapes.items()}


MLP = {"W1": (784, 128), "b1": (128,), "W2": (128, 64), "b2": (64,), "W3": (64, 10),
       "b3": (10,)}
CNN = {"K1": (32, 1, 3, 3), "c1": (1, 32, 1, 1), "K2": (64, 32, 3, 3), "c2": (1, 64, 1, 1),
       "W3": (1600, 64), "b3": (64,), "W4": (64, 10), "b4": (10,)}


def labels(b):
    return np.arange(b, dtype=np.int64) % 10


WORKLOADS = {
    "mlp_b32": lambda: (wl.graphc_mlp(params(MLP), 32),
                        [np.zeros((32, 784), np.float32), labels(32)]),
    "mlp_b512": lambda: (wl.graphc_mlp(params(MLP), 512),
                         [np.zeros((512, 784), np.float32), labels(512)]),
    "mlp_infer_b512": lambda: (wl.graphc_mlp_infer(params(MLP), 512),
                               [np.zeros((512, 784), np.float32)]),
    "logreg_b512": lambda: (wl.graphc_logreg(params({"w": (784, 1), "b": (1,)}), 512),
                            [np.zeros((512, 784), np.float32), np.zeros((512, 1), np.float32)]),
    "cnn_b64": lambda: (wl.graphc_cnn_nchw(params(CNN), 64),
                        [np.zeros((64, 1, 28, 28), np.float32), labels(64)]),
}
# the conv lowering asks the BLAS's thread count (winograd.pays), the layouts too (a product
# stored transposed, layout.transposed_pays): each file is for one count
WORKLOADS["cnn_b64_2threads"] = WORKLOADS["cnn_b64"]
WORKLOADS["mlp_b32_2threads"] = WORKLOADS["mlp_b32"]


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_generated_code_of_the_bench_workloads_is_the_reviewed_one(name, monkeypatch):
    monkeypatch.setattr(blas, "threads", lambda: 2 if name.endswith("_2threads") else 1)
    f, feeds = WORKLOADS[name]()
    f(*feeds)
    path = os.path.join(SNAPSHOTS, f"{name}.py.txt")
    if os.environ.get("GRAPHC_SNAPSHOTS") == "update":
        with open(path, "w") as fh:
            fh.write(f.source)
    with open(path) as fh:
        want = fh.read()
    assert f.source == want, f"the code of {name} changed: review the diff, then update"
