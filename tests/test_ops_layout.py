"""Op table rows for stack, split, squeeze, expand_dims, swapaxes, flatten, tile, repeat,
tril/triu, pad, flip, stop_gradient, zeros_like/ones_like and the random ops."""
import numpy as np
import pytest

import graphc as gc
from tests.helpers import Row, ops_in

rng = np.random.default_rng(6)


def f64(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


ROWS = [
    Row("stack", lambda a, b: gc.stack([a, b]), [f64(3, 2), f64(3, 2)],
        lambda a, b: np.stack([a, b]), ops=("concat", "reshape")),
    Row("stack", lambda a, b: gc.stack([a, b, a], axis=-1), [f64(3, 2), f64(3, 2)],
        lambda a, b: np.stack([a, b, a], axis=-1)),
    Row("split", lambda x: gc.split(x, 3, axis=1)[1], [f64(2, 6)],
        lambda x: np.split(x, 3, axis=1)[1], ops=("slice",)),
    Row("split", lambda x: gc.concat(gc.split(x, [1, 3])[::-1]), [f64(4, 2)],
        lambda x: np.concatenate(np.split(x, [1, 3])[::-1])),
    Row("squeeze", gc.squeeze, [f64(3, 1, 2, 1)], np.squeeze),
    Row("squeeze", lambda x: x.squeeze(axis=-1), [f64(3, 1, 2, 1)],
        lambda x: x.squeeze(-1)),
    Row("expand_dims", lambda x: gc.expand_dims(x, 1), [f64(3, 2)],
        lambda x: np.expand_dims(x, 1)),
    Row("expand_dims", lambda x: gc.expand_dims(x, (0, -1)), [f64(3, 2)],
        lambda x: np.expand_dims(x, (0, -1))),
    Row("swapaxes", lambda x: gc.swapaxes(x, 0, -1), [f64(2, 3, 4)],
        lambda x: np.swapaxes(x, 0, -1), ops=("transpose",)),
    Row("flatten", gc.flatten, [f64(2, 3, 4)], lambda x: x.reshape(2, -1)),
    Row("flatten", lambda x: x.flatten(), [f64(2, 3, 4)], lambda x: x.flatten()),
    Row("flatten", lambda x: gc.flatten(x, 0, 1), [f64(2, 3, 4)], lambda x: x.reshape(6, 4)),
    Row("tile", lambda x: gc.tile(x, (2, 3)), [f64(2, 2)], lambda x: np.tile(x, (2, 3)),
        ops=("broadcast_to", "reshape")),
    Row("tile", lambda x: gc.tile(x, (2, 1, 2)), [f64(3)], lambda x: np.tile(x, (2, 1, 2))),
    Row("repeat", lambda x: gc.repeat(x, 2, axis=1), [f64(2, 3)],
        lambda x: np.repeat(x, 2, axis=1)),
    Row("repeat", lambda x: gc.repeat(x, 3), [f64(2, 2)], lambda x: np.repeat(x, 3)),
    Row("repeat", lambda x: gc.repeat(x, [1, 0, 2], axis=0), [f64(3, 2)],
        lambda x: np.repeat(x, [1, 0, 2], axis=0), ops=("take",)),
    Row("tril", gc.tril, [f64(3, 4)], np.tril, ops=("where",)),
    Row("tril", lambda x: gc.tril(x, -1), [f64(2, 3, 3)], lambda x: np.tril(x, -1)),
    Row("triu", lambda x: gc.triu(x, 1), [f64(2, 4, 3)], lambda x: np.triu(x, 1)),
    Row("pad", lambda x: gc.pad(x, 1), [f64(2, 3)], lambda x: np.pad(x, 1)),
    Row("pad", lambda x: gc.pad(x, ((0, 0), (2, 1)), value=-1.5), [f64(2, 3)],
        lambda x: np.pad(x, ((0, 0), (2, 1)), constant_values=-1.5)),
    Row("pad", lambda x: gc.pad(x, (0, 2)), [f64(2, 2, 1)], lambda x: np.pad(x, (0, 2))),
    Row("flip", gc.flip, [f64(2, 3)], np.flip),
    Row("flip", lambda x: gc.flip(x, axis=1), [f64(2, 3, 2)], lambda x: np.flip(x, 1)),
    Row("stop_gradient", lambda x: gc.stop_gradient(x) * x, [f64(3)], lambda x: x * x,
        grad=False),              # on purpose not the derivative: tested below
    Row("zeros_like", lambda x: gc.zeros_like(x) + x, [f64(2, 3)], lambda x: x,
        ops=("broadcast_to",)),
    Row("ones_like", lambda x: gc.ones_like(x, dtype="int32"), [f64(2, 3)],
        lambda x: np.ones_like(x, dtype=np.int32), grad=False),
    Row("random_normal", lambda x: x * 0 + gc.random_normal(x, seed=1, dtype="float64"),
        [f64(3, 2)], lambda x: np.random.default_rng(1).normal(0, 1, (3, 2))),
    Row("random_normal", lambda x: x + gc.random_normal((4,), mean=2.0, std=0.5, seed=2),
        [f64(4)], lambda x: x + np.random.default_rng(2).normal(2, 0.5, 4).astype(np.float32)),
    Row("random_uniform", lambda x: x * gc.random_uniform(x, -1, 1, seed=3, dtype="float64"),
        [f64(2, 2)], lambda x: x * np.random.default_rng(3).uniform(-1, 1, (2, 2))),
]


def test_stop_gradient_gradient_counts_only_the_other_factor():
    x = gc.placeholder((3,), dtype="float64")
    xv = f64(3)
    np.testing.assert_allclose(gc.grad(gc.sum(gc.stop_gradient(x) * x), x).eval({x: xv}), xv)


def test_shapes_with_an_unknown_batch():
    x = gc.placeholder((None, 1, 3), dtype="float64")
    xv = f64(4, 1, 3)
    cases = [(gc.squeeze(x, 1), xv[:, 0]), (gc.expand_dims(x, -1), xv[..., None]),
             (gc.flatten(x), xv.reshape(4, 3)), (gc.stack([x, x], 1), np.stack([xv, xv], 1)),
             (gc.split(x, [1], axis=0)[1], xv[1:]), (gc.pad(x, ((0, 0), (1, 1), (0, 0))),
                                                     np.pad(xv, ((0, 0), (1, 1), (0, 0)))),
             (gc.zeros_like(x), np.zeros_like(xv)), (gc.flip(x, 0), xv[::-1])]
    for node, want in cases:
        got = node.eval({x: xv})
        assert node.ndim == want.ndim and all(d in (None, n) for d, n in
                                              zip(node.shape, want.shape)), node
        np.testing.assert_allclose(got, want)
    y = gc.placeholder((None, None, 1), dtype="float64")
    np.testing.assert_allclose(gc.squeeze(y).eval({y: xv.reshape(4, 3, 1)}), xv[:, 0])
    with pytest.raises(gc.GraphcError, match=r"(?s)expand_dims.*more than one dimension of "
                                             r"unknown size.*test_ops_layout.py"):
        gc.expand_dims(y, 0)


def test_random_ops_draw_new_values_per_call_reproducibly():
    x = gc.placeholder((None, 3))
    noise = gc.random_normal(x, seed=5)
    for optimize in (True, False):
        f = gc.function([x], noise, optimize=optimize)
        a, b = f(np.zeros((2, 3), np.float32)), f(np.zeros((2, 3), np.float32))
        assert a.shape == (2, 3) and a.dtype == np.float32 and not np.allclose(a, b)
        g = gc.function([x], noise, optimize=optimize)
        np.testing.assert_array_equal(g(np.zeros((2, 3), np.float32)), a)
    u = gc.random_uniform((1000,), 2, 3, seed=0).eval()
    assert 2 <= u.min() and u.max() < 3 and ops_in(gc.random_uniform(x)) == {
        "placeholder", "random_uniform"}


def test_two_unseeded_random_nodes_are_not_merged_by_the_optimizer():
    x = gc.placeholder((50,))
    f = gc.function([x], [gc.random_uniform(x), gc.random_uniform(x)])
    a, b = f(np.zeros(50, np.float32))
    assert not np.allclose(a, b)


def test_layout_errors_name_the_op_and_the_line():
    x = gc.placeholder((2, 6))
    for bad, msg in [(lambda: gc.split(x, 4, axis=1), r"split\(\(2, 6\) float32\): 6 elements"),
                     (lambda: gc.squeeze(x, 0), "axis 0 has size 2, not 1"),
                     (lambda: gc.pad(x, -1), "pad_width -1 must be"),
                     (lambda: gc.stack([x, x.T]), "same shape"),
                     (lambda: gc.tril(gc.placeholder((3,))), "at least 2 axes"),
                     (lambda: gc.random_normal((2, None)), "expected a shape"),
                     (lambda: gc.random_uniform((2,), 1, 0), "low must be <= high")]:
        with pytest.raises(gc.GraphcError, match=f"(?s){msg}.*test_ops_layout.py"):
            bad()
