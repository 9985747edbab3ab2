"""probe23: a hostile probe of what landed on 2026-11-27 evening (shared softplus/sigmoid parts,
a fused body reading a broadcast of one element, the conv lowering at 2 BLAS threads, as_node's
scalar cache, the newest nn masks and states); one test per bug found, each failing before its
fix, and random graphs over the new parts (compiled vs unoptimized vs evaluated).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.ir import evaluate


# as_node: a Python int past int64 beside a float node ---------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_python_int_past_int64_beside_a_float_is_that_float(dtype):
    """2**70 * x is what NumPy gives (was a raw TypeError from np.isfinite of an object array);
    2**70 as a float constant too; past the float's range it is a GraphcError naming the line."""
    x = gc.placeholder((2,), dtype, "x")
    for _ in range(2):                         # the second conversion comes from the cache
        y = x * 2 ** 70
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(gc.function([x], y)(np.array([1, -0.5], dtype)),
                                      np.array([1, -0.5], dtype) * np.array(2 ** 70, dtype))
    assert gc.constant(2 ** 70, dtype).data == np.array(2 ** 70, dtype)
    np.testing.assert_array_equal(gc.constant([2 ** 70, 1], dtype).data,
                                  np.array([2 ** 70, 1], dtype))
    with pytest.raises(gc.GraphcError, match=r"does not fit .*\n.*test_probe23.py:\d+"):
        gc.constant(2 ** 200, "float32")
