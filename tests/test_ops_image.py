"""Op table rows for cumulative sums and products, argsort and the scatter ops."""
import numpy as np
import pytest

import graphc as gc
from tests.helpers import Row

rng = np.random.default_rng(5)
x = rng.uniform(0.5, 2.0, size=(3, 4))
ties = np.array([[3, 1, 3, 2], [0, 0, 5, 5]], dtype=np.int64)
idx = np.array([[1, 0, 2], [0, 2, 1]])                      # (2, 3): scatter along axis 1
upd = rng.standard_normal((2, 3))
nd_idx = np.array([[0, 1], [2, 3], [1, 0]])                  # three (row, col) pairs of x
nd_upd = rng.standard_normal(3)


def scatter_ref(data, indices, updates, axis=1):
    out = data.copy()
    for i in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            pos = [i, j]
            pos[axis] = indices[i, j]
            out[tuple(pos)] = updates[i, j]
    return out


def scatter_add_ref(data, indices, updates):
    out = data.copy()
    for i in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            out[i, indices[i, j]] += updates[i, j]
    return out


def nd_ref(data, indices, updates):
    out = data.copy()
    for (r, c), u in zip(indices, updates):
        out[r, c] = u
    return out


ROWS = [
    Row("cumsum", lambda a: gc.cumsum(a, axis=1), [x], lambda a: np.cumsum(a, axis=1)),
    Row("cumsum", lambda a: gc.cumsum(a, axis=0, reverse=True), [x],
        lambda a: np.flip(np.cumsum(np.flip(a, 0), axis=0), 0)),
    Row("cumprod", lambda a: gc.cumprod(a, axis=1), [x], lambda a: np.cumprod(a, axis=1)),
    Row("cumprod", lambda a: gc.cumprod(a, axis=1, reverse=True), [x],
        lambda a: np.flip(np.cumprod(np.flip(a, 1), axis=1), 1)),
    Row("argsort", lambda a: gc.argsort(a, axis=1), [ties],
        lambda a: np.argsort(a, axis=1, kind="stable"), grad=False),
    Row("argsort", lambda a: gc.argsort(a, axis=1, descending=True), [ties],
        lambda a: np.array([[0, 2, 3, 1], [2, 3, 0, 1]]), grad=False),   # ties: first first
    Row("scatter_elements", lambda d, i, u: gc.scatter_elements(d, i, u, axis=1),
        [x[:2], idx, upd], scatter_ref),
    Row("scatter_elements",
        lambda d, i, u: gc.scatter_elements(d, i, u, axis=1, reduction="add"),
        [x[:2], idx, upd], scatter_add_ref),
    Row("scatter_nd", gc.scatter_nd, [x, nd_idx, nd_upd], nd_ref),
    Row("gather_nd", gc.gather_nd, [x, nd_idx], lambda d, i: d[i[:, 0], i[:, 1]],
        ops=("take", "matmul", "mod")),
]


def test_scatter_with_max_has_no_silent_zero_gradient():
    d = gc.placeholder((2, 4), "float64")
    out = gc.scatter_elements(d, gc.constant(idx), gc.constant(upd), axis=1, reduction="max")
    with pytest.raises(gc.GraphcError, match="reduction='max'"):
        gc.grad(gc.sum(out), [d])


def test_scatter_index_out_of_range_is_an_error():
    d = gc.placeholder((2, 4), "float64")
    out = gc.scatter_elements(d, gc.constant(idx + 3), gc.constant(upd), axis=1)
    with pytest.raises(gc.GraphcError, match="out of range"):
        out.eval({d: x[:2]})
