"""probe21: a hostile probe of the newest parts (the compiled call's feed guard, fused groups
mixing float widths, Winograd forced on random stacks, shared step functions, nn models as a
PyTorch user writes them, ONNX round trips, the CLI); one test per bug found, each failing
before its fix."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np

import graphc as gc
from graphc.ir import OPS


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Bounds:
    """A user's settings class that a user op's kernel reads (exported with its source)."""
    low, high = -1.0, 1.0


def clip_kernel(x):
    return np.clip(x, Bounds.low, Bounds.high)


def test_exporting_a_kernel_that_reads_a_class_gives_no_numpy_warning(tmp_path):
    # the export writes a class after its bases; it looked the base `object` up as
    # np.object first, a deprecated name: NumPy warned (FutureWarning) in the user's export
    # call (probe21 met it through a fused group run by the interpreter, fixed below)
    gc.register_op(gc.OpDef("clip_probe21", lambda x: (x.shape, x.dtype), clip_kernel))
    try:
        x = gc.placeholder((None, 3), "float64", name="x")
        y = gc.apply("clip_probe21", x * 2.0)
        f = gc.function([x], y)
        xv = np.array([[0.2, -3.0, 0.7]])
        f(xv)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = f.export(tmp_path / "m.py")
        mod = load_module(path, "probe21_m")
        np.testing.assert_array_equal(mod.run(xv), [[0.4, -1.0, 1.0]])
    finally:
        OPS.pop("clip_probe21", None)

