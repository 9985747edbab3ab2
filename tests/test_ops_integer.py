"""Op table rows for the rounding, remainder, integer-division, bitwise and logical ops."""
import numpy as np

import graphc as gc
from tests.helpers import Row

rng = np.random.default_rng(3)
ints = np.array([[-7, -4, 0, 3], [5, 8, -1, 9]], dtype=np.int32)
divs = np.array([2, -3, 4, 5], dtype=np.int32)
bits = np.array([[1, 6, 12], [255, 0, 7]], dtype=np.uint8)
shifts = np.array([1, 2, 3], dtype=np.uint8)
flags = np.array([[True, False, True, False]])
other = np.array([[True, True, False, False]])
halves = np.array([-2.5, -1.5, -0.4, 0.5, 1.5, 2.6])
finite = np.array([0.5, -1.0, 2.0, 1.0])       # (inf and nan: in the tests below; the fuzzer
                                               # draws values in a row's example range)
num = np.array([2.3, -1.7, 5.2, -4.4])          # a / b far from integers: smooth there
den = np.array([2.0, 1.5, -3.0, -1.3])


def trunc_div(a, b):
    return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(a.dtype)


ROWS = [
    Row("floor", gc.floor, [halves], np.floor, grad=False),
    Row("ceil", gc.ceil, [halves], np.ceil, grad=False),
    Row("round", gc.round, [halves], np.round, grad=False),     # halves to even
    Row("trunc", gc.trunc, [halves], np.trunc, grad=False),
    Row("mod", gc.mod, [num, den], np.mod),
    Row("mod", gc.mod, [ints, divs], np.mod, grad=False),
    Row("fmod", gc.fmod, [num, den], np.fmod),
    Row("fmod", gc.fmod, [ints, divs], np.fmod, grad=False),
    Row("floor_divide", gc.floor_divide, [ints, divs], np.floor_divide, grad=False),
    Row("floor_divide", gc.floor_divide, [num, den], np.floor_divide, grad=False),
    Row("trunc_divide", gc.trunc_divide, [ints, divs], trunc_div, grad=False),
    Row("trunc_divide", gc.trunc_divide, [num, den], lambda a, b: np.trunc(a / b), grad=False),
    Row("bitwise_and", gc.bitwise_and, [bits, shifts], np.bitwise_and, grad=False),
    Row("bitwise_or", gc.bitwise_or, [bits, shifts], np.bitwise_or, grad=False),
    Row("bitwise_xor", gc.bitwise_xor, [bits, shifts], np.bitwise_xor, grad=False),
    Row("bitwise_not", gc.bitwise_not, [bits], np.invert, grad=False),
    Row("left_shift", gc.left_shift, [bits, shifts], np.left_shift, grad=False),
    Row("right_shift", gc.right_shift, [bits, shifts], np.right_shift, grad=False),
    Row("logical_and", gc.logical_and, [flags, other], np.logical_and, grad=False),
    Row("logical_or", gc.logical_or, [flags, other], np.logical_or, grad=False),
    Row("logical_xor", gc.logical_xor, [flags, other], np.logical_xor, grad=False),
    Row("isnan", gc.isnan, [finite], np.isnan, grad=False),
    Row("isinf", gc.isinf, [finite], np.isinf, grad=False),
]


def test_trunc_divide_rounds_toward_zero_not_down():
    a, b = np.array([-3, 3, -3, 3], np.int64), np.array([2, 2, -2, -2], np.int64)
    x, y = gc.placeholder((4,), "int64"), gc.placeholder((4,), "int64")
    assert gc.trunc_divide(x, y).eval({x: a, y: b}).tolist() == [-1, 1, 1, -1]


def test_python_operators_floor_divide_and_remainder_as_numpy():
    """x // y and x % y on nodes (and numbers on either side) are NumPy's floor_divide and
    mod: rounding down and the divisor's sign, as Python; // was a TypeError."""
    a, b = np.array([-7, 7, -3, 5]), np.array([2, -2, 4, -3])
    x, y = gc.placeholder((4,), "int64"), gc.placeholder((4,), "int64")
    feeds = {x: a, y: b}
    for node, want in ((x // y, a // b), (x % y, a % b), (7 // x, 7 // a), (x % 3, a % 3),
                       (-9 % y, -9 % b), (x // 2, a // 2)):
        np.testing.assert_array_equal(node.eval(feeds), want)
        np.testing.assert_array_equal(gc.function([x, y], node)(a, b), want)
    f = gc.placeholder((3,), "float64")
    v = np.array([1.0, -2.5, 7.25])
    np.testing.assert_array_equal((f // 0.1).eval({f: v}), v // 0.1)   # 1 // 0.1 is 9.0


def test_integer_ops_reject_floats_and_name_the_op():
    x = gc.placeholder((3,), "float32")
    try:
        gc.bitwise_and(x, x)
    except gc.GraphcError as e:
        assert "bitwise_and" in str(e) and "float32" in str(e)
    else:
        raise AssertionError("bitwise_and accepted floats")


def test_isnan_and_isinf_find_them():
    x = gc.placeholder((4,), "float64")
    special = np.array([np.nan, np.inf, -np.inf, 1.0])
    assert gc.isnan(x).eval({x: special}).tolist() == [True, False, False, False]
    assert gc.isinf(x).eval({x: special}).tolist() == [False, True, True, False]
