"""Op table rows for take, take_along_axis (and their scatter-add gradients), einsum and
batched matmul; node indexing with integer arrays (E[ids])."""
import numpy as np
import pytest

import graphc as gc
from graphc.ir import apply
from tests.helpers import Row, verify_grad

rng = np.random.default_rng(5)


def f64(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


IDS = np.array([[3, 1, 3], [0, 3, 2]])          # repeated ids: gradients accumulate


def scatter_ref(g, ids, like, axis=0):
    out = np.zeros_like(like)
    moved = np.moveaxis(out, axis, 0)
    for pos in np.ndindex(*ids.shape):
        idx = (slice(None),) * axis + pos
        moved[ids[pos]] += g[idx]
    return out


def scatter_along_ref(g, ids, like, axis):
    out = np.zeros_like(like)
    for pos in np.ndindex(*ids.shape):
        target = list(pos)
        target[axis] = ids[pos]
        out[tuple(target)] += g[pos]
    return out


ROWS = [
    Row("take", gc.take, [f64(5, 4), IDS], lambda e, i: e[i]),
    Row("take", lambda e, i: e[i], [f64(5, 4), np.array([4, 4, -1, 0])], lambda e, i: e[i]),
    Row("take", lambda x, i: gc.take(x, i, axis=1), [f64(2, 4, 3), IDS],
        lambda x, i: np.take(x, i, axis=1)),
    Row("take", lambda x, i: x[:, :, i], [f64(2, 3, 4), np.array([2, 0, 2])],
        lambda x, i: x[:, :, i]),
    Row("take", lambda x: x[np.array([1, 1, 0])], [f64(3, 2)], lambda x: x[[1, 1, 0]]),
    Row("scatter_add", lambda g, i, e: apply("scatter_add", g, i, e, axis=0),
        [f64(2, 3, 4), IDS, f64(5, 4)], scatter_ref),
    Row("scatter_add", lambda g, i, x: apply("scatter_add", g, i, x, axis=1),
        [f64(2, 2, 3, 3), IDS, f64(2, 4, 3)], lambda g, i, x: scatter_ref(g, i, x, 1)),
    Row("take_along_axis", lambda x, i: gc.take_along_axis(x, i, axis=1),
        [f64(3, 4), np.array([[0, 0], [3, 1], [2, 2]])],
        lambda x, i: np.take_along_axis(x, i, axis=1)),
    Row("take_along_axis", lambda x, i: gc.take_along_axis(x, i, axis=0),
        [f64(3, 4), np.array([[2, 0, 0, 1]])], lambda x, i: np.take_along_axis(x, i, axis=0)),
    Row("scatter_add_along_axis",
        lambda g, i, x: apply("scatter_add_along_axis", g, i, x, axis=1),
        [f64(3, 2), np.array([[0, 0], [3, 1], [2, 2]]), f64(3, 4)],
        lambda g, i, x: scatter_along_ref(g, i, x, 1)),
    Row("einsum", lambda a, b: gc.einsum("ij,jk->ik", a, b), [f64(3, 4), f64(4, 2)], np.matmul),
    Row("einsum", lambda q, k: gc.einsum("bhtd,bhsd->bhts", q, k),
        [f64(2, 2, 3, 4), f64(2, 2, 5, 4)], lambda q, k: np.einsum("bhtd,bhsd->bhts", q, k)),
    Row("einsum", lambda a, b: gc.einsum("...ij,...j", a, b), [f64(2, 3, 4), f64(4)],
        lambda a, b: np.einsum("...ij,...j", a, b)),
    Row("einsum", lambda a: gc.einsum("ij->", a), [f64(3, 4)], np.sum),
    Row("einsum", lambda a, b: gc.einsum("ij,k->jk", a, b), [f64(3, 4), f64(2)],
        lambda a, b: np.einsum("ij,k->jk", a, b)),        # i only in a: broadcast back
    Row("einsum", lambda a, b, c: gc.einsum("ab,bc,cd->ad", a, b, c),
        [f64(2, 3), f64(3, 4), f64(4, 2)], lambda a, b, c: a @ b @ c),
    Row("einsum", lambda a, b: gc.einsum("i,j", a, b), [f64(3), f64(4)], np.outer),
    Row("matmul", gc.matmul, [f64(2, 2, 3, 4), f64(2, 2, 4, 3)], np.matmul),
    Row("matmul", gc.matmul, [f64(2, 1, 3, 4), f64(3, 4, 2)], np.matmul),   # broadcast batch
    Row("matmul", lambda q, k: q @ k.mT, [f64(2, 2, 3, 4), f64(2, 2, 3, 4)],
        lambda q, k: q @ np.swapaxes(k, -1, -2), ops=("matmul", "transpose")),
]


def test_embedding_gradient_with_repeated_ids_adds_up():
    E = gc.placeholder((4, 2), dtype="float64")
    ids = gc.placeholder((5,), dtype="int64")
    g = gc.grad(gc.sum(E[ids] * np.arange(10.0).reshape(5, 2)), E)
    got = g.eval({E: np.zeros((4, 2)), ids: np.array([1, 3, 1, 1, 0])})
    np.testing.assert_allclose(got, [[8, 9], [0 + 4 + 6, 1 + 5 + 7], [0, 0], [2, 3]])


def test_take_with_a_batch_of_ids_of_unknown_size():
    E = gc.placeholder((6, 3), dtype="float64")
    ids = gc.placeholder((None, 4), dtype="int32")
    out = E[ids]
    assert out.shape == (None, 4, 3)
    ev, iv = f64(6, 3), rng.integers(0, 6, size=(2, 4)).astype(np.int32)
    np.testing.assert_allclose(out.eval({E: ev, ids: iv}), ev[iv])
    verify_grad(lambda e: gc.take(e, gc.constant(iv)), [ev])


def test_out_of_range_ids_are_a_run_time_error_naming_take():
    E = gc.placeholder((3, 2))
    ids = gc.placeholder((2,), dtype="int64")
    with pytest.raises(gc.GraphcError, match=r"(?s)take.*index 3 is out of bounds for size 3"):
        E[ids].eval({E: np.zeros((3, 2), np.float32), ids: np.array([0, 3])})


def test_index_errors_hint_at_the_fix():
    x = gc.placeholder((3, 2))
    with pytest.raises(gc.GraphcError, match="indices must be integers.*gc.cast"):
        x[gc.placeholder((2,))]
    with pytest.raises(gc.GraphcError, match="boolean mask.*gc.where"):
        x[np.array([True, False, True])]
    with pytest.raises(gc.GraphcError, match="after full slices"):
        x[1, np.array([0])]


def test_einsum_errors():
    a, b = gc.placeholder((3, 4)), gc.placeholder((5, 2))
    with pytest.raises(gc.GraphcError, match=r"(?s)einsum.*letter 'j' has size 4.*and 5"):
        gc.einsum("ij,jk->ik", a, b)
    with pytest.raises(gc.GraphcError, match="repeats inside operand 'ii'"):
        gc.einsum("ii->i", gc.placeholder((3, 3)))
    with pytest.raises(gc.GraphcError, match="names 2 operands, got 1"):
        gc.einsum("ij,jk", a)
    with pytest.raises(gc.GraphcError, match="output letters 'iz'"):
        gc.einsum("ij->iz", a)


def test_einsum_spec_is_stored_explicit():
    a = gc.placeholder((2, 3, 4))
    assert gc.einsum("...ij,...jk", a, gc.placeholder((4, 5))).attrs["spec"] == "aij,jk->aik"


def test_batched_attention_matmul_gradients_second_order():
    verify_grad(lambda q, k: gc.grad(gc.sum(gc.softmax(q @ k.mT) ** 2), q),
                [f64(2, 2, 3, 4), f64(2, 2, 3, 4)])
    verify_grad(lambda q, k: gc.grad(gc.sum(gc.tanh(gc.einsum("bik,bjk->bij", q, k))), k),
                [f64(2, 3, 4), f64(2, 3, 4)])


@pytest.mark.parametrize("optimize", [False, True])
def test_attention_on_stacks_compiled_equals_eval_with_gradients(optimize):
    """(b, h, t, d) @ (b, h, d, t) with a causal mask, then batched @ 2-D with bias and
    activation (a dense-fusion candidate) and broadcast batch dims, values and gradients."""
    q = gc.placeholder((None, 2, 5, 4), dtype="float64")
    k = gc.placeholder((None, 2, 5, 4), dtype="float64")
    W = gc.variable(f64(4, 4))
    b = gc.variable(f64(4))
    W2 = gc.variable(f64(3, 1, 4, 4))
    mask = gc.constant(np.triu(np.full((5, 5), -1e9), 1))
    s = gc.softmax(q @ k.mT / 2.0 + mask)
    h = gc.relu((s @ k) @ W + b)
    h2 = gc.tanh(h[:1] @ W2 + b)
    loss = gc.sum(h * h) + gc.sum(h2)
    outs = [loss] + gc.grad(loss, [q, k, W, b, W2])
    feeds = {q: f64(3, 2, 5, 4), k: f64(3, 2, 5, 4)}
    got = gc.function([q, k], outs, optimize=optimize)(*feeds.values())
    for value, node in zip(got, outs):
        np.testing.assert_allclose(value, node.eval(feeds), rtol=1e-9, atol=1e-10)
    verify_grad(lambda q, k: gc.relu((gc.softmax(q @ k.mT + mask) @ k) @ W + b),
                [f64(2, 2, 5, 4), f64(2, 2, 5, 4)])
