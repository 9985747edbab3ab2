"""The cheap path of a compiled call: the locks a call takes (variables compiled together share
one) and the fused softmax cross-entropy's one-reduction label check."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import graphc as gc
from graphc.ir import storage_lock

RNG = np.random.default_rng(0)


def sgd_step(variables):
    x = gc.placeholder((None, 3), "float64", "x")
    loss = sum((gc.sum(x @ v) for v in variables), gc.constant(0.0))
    grads = gc.grad(loss, variables)
    return gc.function([x], loss, updates=[(v, v - 0.1 * g)
                                           for v, g in zip(variables, grads)])


def fresh(name):
    return gc.variable(RNG.normal(size=(3, 2)), name=name)


def test_variables_compiled_together_share_one_lock():
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    f = sgd_step([a, b, c])
    assert len(f.locks) == 1
    assert all(storage_lock(v) is f.locks[0] for v in (a, b, c))


def test_a_function_without_variables_has_a_lock_of_its_own():
    x = gc.placeholder((2,), "float64", "x")
    f, g = gc.function([x], x * 2.0), gc.function([x], x * 2.0)
    assert len(f.locks) == 1 and f.locks[0] is not g.locks[0]


def test_functions_sharing_variables_take_the_shared_locks_in_one_order():
    a, b, c, d = fresh("a"), fresh("b"), fresh("c"), fresh("d")
    first = sgd_step([a, b])             # a and b: one lock
    second = sgd_step([c, b])            # c: a new lock, b: first's
    third = sgd_step([d, c, a])          # d new; c's and a's locks from before
    assert second.locks == [first.locks[0], storage_lock(c)]
    assert third.locks[:2] == [first.locks[0], storage_lock(c)]
    assert storage_lock(d) is third.locks[2] and len(third.locks) == 3


def test_calls_of_functions_with_crossing_variables_never_deadlock():
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    sgd_step([a])
    sgd_step([c])                        # a and c: separate locks
    fs = [sgd_step([a, b, c]), sgd_step([c, a]), sgd_step([b, c])]
    x = RNG.normal(size=(4, 3))
    want = [v.value.copy() for v in (a, b, c)]
    counts = [20, 20, 20]     # calls of each; any order gives the serial result (each
                              # update subtracts a constant from its variables)
    grads = {id(v): 0.1 * x.sum(axis=0)[:, None] * np.ones((1, 2)) for v in (a, b, c)}
    users = {id(a): (0, 1), id(b): (0, 2), id(c): (0, 1, 2)}
    for v, w in zip((a, b, c), want):
        w -= sum(counts[i] for i in users[id(v)]) * grads[id(v)]
    threads = [threading.Thread(target=lambda f=f: [f(x) for _ in range(20)]) for f in fs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    for v, w in zip((a, b, c), want):
        np.testing.assert_allclose(v.value, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8", "uint64"])
def test_labels_of_every_integer_dtype_give_the_interpreters_values(dtype):
    z = gc.placeholder((None, 5), "float64", "z")
    y = gc.placeholder((None,), dtype, "y")
    loss = gc.mean(gc.softmax_cross_entropy(z * 1.5, y))
    outs = [loss, gc.grad(loss, z)]
    f = gc.function([z, y], outs)
    assert "xp.sce_forward" in f.source
    zv, yv = RNG.normal(size=(7, 5)), RNG.integers(0, 5, 7).astype(dtype)
    for got, want in zip(f(zv, yv), [o.eval({z: zv, y: yv}) for o in outs]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(gc.GraphcError, match="label 5 is out of range for 5 classes"):
        f(zv, np.array([0, 1, 5, 2, 0, 0, 0], dtype))
    if np.dtype(dtype).kind == "i":      # negative: huge as unsigned, caught by the one max
        with pytest.raises(gc.GraphcError, match="label -1 is out of range"):
            f(zv, np.array([0, 1, 2, -1, 0, 0, 0], dtype))


def test_an_empty_batch_of_labels_gives_an_empty_loss():
    z = gc.placeholder((None, 3), "float64", "z")
    y = gc.placeholder((None,), "int64", "y")
    f = gc.function([z, y], gc.softmax_cross_entropy(z, y))
    assert f(np.zeros((0, 3)), np.zeros(0, np.int64)).shape == (0,)


def test_the_usual_call_checks_every_feed_as_the_first_one_did():
    """A call like the last one skips the plan lookup (a guard made for the plan); a feed
    that is the updated variable's memory, one of a new shape or of an equal dtype that is not
    NumPy's own object still gets the full treatment."""
    W = gc.variable(np.arange(6.0).reshape(3, 2), name="W")
    x = gc.placeholder((None, 2), "float64", "x")
    f = gc.function([x], [x * 1.0, gc.sum(x * W[:1])], updates=[(W, W + 1.0)])
    a = RNG.normal(size=(3, 2))
    assert f(a)[1] == pytest.approx((a * np.arange(2.0)).sum())
    for feed in (lambda: W.value, lambda: W.value[:], lambda: W.value[:2]):
        w0 = W.value.copy()
        same, total = f(feed())          # x is returned after W is written: the old value
        np.testing.assert_array_equal(same, w0[:len(same)])
        assert total == pytest.approx((w0[:len(same)] * w0[:1]).sum())
        np.testing.assert_array_equal(W.value, w0 + 1.0)
    b = a.copy()
    f(b)
    b.shape = (2, 3)                     # reshaped in place
    with pytest.raises(gc.GraphcError, match=r"'x': expected shape \(\?, 2\), got \(2, 3\)"):
        f(b)
    tagged = np.dtype("float64", metadata={"unit": "m"})
    assert tagged == np.float64 and tagged is not np.dtype(np.float64)
    w0 = W.value.copy()
    assert f(a.astype(tagged))[1] == pytest.approx((a * w0[:1]).sum())
