"""Python scalars beside nodes: each conversion is remembered (ir._SCALARS), so the answer
must be the one a fresh conversion gives -- per type, value, sign of zero and dtype beside."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc


def scalar_of(node):
    return node.inputs[0]


def test_a_remembered_scalar_is_a_new_node_with_its_own_line_and_the_same_value():
    x = gc.placeholder((2,), name="x")
    a = scalar_of(0.5 * x)
    b = scalar_of(0.5 * x)
    assert a is not b and a.where != b.where
    assert a.data.dtype == b.data.dtype == np.float32 and a.data == b.data == 0.5
    assert not a.data.flags.writeable


def test_negative_zero_bools_ints_and_dtypes_are_told_apart():
    x = gc.placeholder((2,), name="x")
    assert str(scalar_of(0.0 * x).data) == "0.0"
    assert str(scalar_of(-0.0 * x).data) == "-0.0"
    assert str(scalar_of(0.0 * x).data) == "0.0"
    i8 = gc.placeholder((2,), "int8", name="i")
    assert scalar_of(True + i8).data.dtype == np.int8
    assert scalar_of(1 + i8).data.dtype == np.int8
    assert scalar_of(1 + x).data.dtype == np.float32
    assert scalar_of(1.5 + gc.placeholder((2,), "float64")).data.dtype == np.float64
    f = gc.function([x], [x * 2.5, x * -0.0], optimize=False)
    out = f(np.array([1.0, -1.0], np.float32))
    np.testing.assert_array_equal(out[0], [2.5, -2.5])
    assert list(np.signbit(out[1])) == [True, False]


def test_a_scalar_that_does_not_fit_raises_every_time_naming_the_line():
    h = gc.placeholder((2,), "float16", name="h")
    for _ in range(2):
        with pytest.raises(gc.GraphcError,
                           match="(?s)does not fit float16.*at test_ir_scalars.py:"):
            1e5 * h         # noqa: B018
    u = gc.placeholder((2,), "uint8", name="u")
    for _ in range(2):
        with pytest.raises(gc.GraphcError, match="does not fit"):
            u + 300         # noqa: B018
