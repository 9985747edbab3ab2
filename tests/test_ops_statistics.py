"""Op table rows for min, prod, logsumexp, argmax/argmin, var and std."""
import numpy as np
import pytest

import graphc as gc
from tests.helpers import Row, verify_grad

rng = np.random.default_rng(3)


def f64(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def away(*shape):
    """Distinct values: a minimum is never tied."""
    v = rng.permutation(np.arange(1, int(np.prod(shape)) + 1)) * 0.37
    return (v * rng.choice([-1, 1], size=v.size)).reshape(shape)


def lse(x, axis=None, keepdims=False):
    m = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


ROWS = [
    Row("min", gc.min, [away(3, 4)], np.min),
    Row("min", lambda x: gc.min(x, axis=1), [away(3, 4)], lambda x: x.min(1),
        ops=("min", "argmax_mask", "neg")),
    Row("min", lambda x: x.min(axis=(0, 2), keepdims=True), [away(2, 3, 4)],
        lambda x: x.min((0, 2), keepdims=True)),
    Row("prod", gc.prod, [f64(2, 3)], np.prod),
    Row("prod", lambda x: gc.prod(x, axis=-1, keepdims=True), [f64(3, 4)],
        lambda x: x.prod(-1, keepdims=True)),
    Row("prod", lambda x: x.prod(axis=0), [np.array([[0.0, 1.5, 0.0], [2.0, 0.0, 0.5],
                                                     [3.0, -1.0, 0.0]])],
        lambda x: x.prod(0)),     # columns with one zero, two zeros and none (exact grads)
    Row("prod", lambda k: gc.prod(k, axis=1), [np.array([[1, 2, 3], [4, 5, 6]])],
        lambda k: k.prod(1), grad=False),
    Row("logsumexp", gc.logsumexp, [f64(3, 4)], lse),
    Row("logsumexp", lambda x: gc.logsumexp(x, axis=1), [f64(3, 4) * 400],   # no overflow
        lambda x: lse(x, 1)),
    Row("logsumexp", lambda x: gc.logsumexp(x, axis=(0, 2), keepdims=True), [f64(2, 3, 2)],
        lambda x: lse(x, (0, 2), True)),
    Row("argmax", gc.argmax, [away(3, 4)], np.argmax, grad=False),
    Row("argmax", lambda x: gc.argmax(x, axis=1), [away(3, 4)], lambda x: x.argmax(1),
        grad=False),
    Row("argmax", lambda x: x.argmax(axis=-1, keepdims=True), [away(2, 3, 4)],
        lambda x: x.argmax(-1, keepdims=True), grad=False),
    Row("argmin", lambda x: gc.argmin(x, axis=0), [away(3, 4)], lambda x: x.argmin(0),
        grad=False),
    Row("argmin", lambda k: gc.argmin(k), [np.array([[3, 1], [1, 5]])],
        lambda k: np.argmin(k), grad=False),        # ties: the first one, as NumPy
    Row("var", gc.var, [f64(3, 4)], np.var, ops=("sum", "sub", "mul", "div")),
    Row("var", lambda x: gc.var(x, axis=1, ddof=1), [f64(3, 4)], lambda x: x.var(1, ddof=1),
        ops=("sum", "sub", "mul", "div")),
    Row("var", lambda x: x.var(axis=(0, 2), keepdims=True), [f64(2, 3, 4)],
        lambda x: x.var((0, 2), keepdims=True), ops=("sum", "sub", "mul", "div")),
    Row("std", lambda x: gc.std(x, axis=0), [f64(5, 3)], lambda x: x.std(0),
        ops=("sum", "sqrt")),
    Row("std", lambda x: x.std(ddof=1), [f64(4, 3)], lambda x: x.std(ddof=1),
        ops=("sum", "sqrt")),
]


def test_var_keeps_precision_far_from_zero():
    """Two passes: the naive E[x^2] - E[x]^2 loses every digit at an offset of 1e8."""
    x = gc.placeholder((4,), dtype="float64")
    xv = 1e8 + np.array([1.0, 2.0, 3.0, 4.0])
    np.testing.assert_allclose(gc.var(x).eval({x: xv}), 1.25, rtol=1e-9)


@pytest.mark.parametrize("size", [(None, 3), (4, None)])
def test_var_with_an_unknown_size(size):
    x = gc.placeholder(size, dtype="float64")
    xv = f64(4, 3)
    for axis in (0, 1, None):
        np.testing.assert_allclose(gc.var(x, axis=axis, ddof=1).eval({x: xv}),
                                   xv.var(axis=axis, ddof=1))


def test_min_gradient_goes_to_the_first_of_tied_minima():
    x = gc.placeholder((4,), dtype="float64")
    g = gc.grad(gc.min(x), x)
    np.testing.assert_array_equal(g.eval({x: np.array([2.0, 1.0, 1.0, 3.0])}), [0, 1, 0, 0])


def test_logsumexp_of_minus_infinity_is_minus_infinity():
    x = gc.placeholder((2, 2), dtype="float64")
    v = gc.logsumexp(x, axis=1).eval({x: np.array([[-np.inf, -np.inf], [0.0, -np.inf]])})
    np.testing.assert_array_equal(v, [-np.inf, 0.0])


def test_second_order_gradients_of_the_new_reductions():
    for build, x in [(lambda x: gc.grad(gc.sum(gc.logsumexp(x, axis=1) ** 2), x), f64(3, 4)),
                     (lambda x: gc.grad(gc.sum(gc.prod(x, axis=0) ** 2), x), f64(3, 2)),
                     (lambda x: gc.grad(gc.std(x), x), f64(6))]:
        verify_grad(build, [x])


def test_argmax_rejects_a_tuple_of_axes_and_has_no_gradient():
    x = gc.placeholder((2, 3), dtype="float64")
    with pytest.raises(gc.GraphcError, match=r"(?s)argmax\(\(2, 3\) float64\): axis must be None "
                                             r"or one int.*test_ops_statistics.py"):
        gc.argmax(x, axis=(0, 1))
    assert gc.argmax(x, axis=1).dtype == np.int64
    g = gc.grad(gc.sum(x * gc.cast(gc.argmax(x, axis=1, keepdims=True), "float64")), x)
    np.testing.assert_allclose(g.eval({x: np.array([[0.0, 2, 1], [3, 1, 0]])}),
                               [[1, 1, 1], [0, 0, 0]])


DYNAMIC = [
    ("min", lambda x: gc.min(x, axis=0), lambda x: x.min(0)),
    ("prod", lambda x: gc.prod(x, axis=1, keepdims=True), lambda x: x.prod(1, keepdims=True)),
    ("logsumexp", lambda x: gc.logsumexp(x, axis=0), lambda x: lse(x, 0)),
    ("logsumexp", gc.logsumexp, lse),
    ("var", lambda x: gc.var(x, axis=0, ddof=1), lambda x: x.var(0, ddof=1)),
    ("std", lambda x: gc.std(x, axis=1), lambda x: x.std(1)),
]


@pytest.mark.parametrize("name,build,ref", DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_none_batch_dims(name, build, ref):
    from tests.test_ops_reduce_shape import check_dynamic
    check_dynamic(build, [(None, 3)], [away(4, 3) * 0.3], ref)
