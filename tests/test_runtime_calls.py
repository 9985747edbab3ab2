"""The cheap path of a compiled call: the locks a call takes (variables compiled together share
one) and the fused softmax cross-entropy's one-reduction label check."""
from __future__ import annotations

import re
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


@pytest.mark.parametrize("form", ["one", "list", "tuple"])
def test_the_usual_call_runs_by_its_plans_entry(form, monkeypatch):
    """After the first call of a signature, a call with feeds like it runs by the plan's own
    generated call (`entries`: guard, locks, errstate, run, result), never the general path;
    the values are the general path's, in the form the outputs were given, fresh arrays."""
    W = gc.variable(np.arange(6.0).reshape(3, 2), name="W")
    x = gc.placeholder((None, 3), "float64", "x")
    y = x @ W
    outs = {"one": y, "list": [y, gc.sum(y)], "tuple": (y, gc.sum(y))}[form]
    f = gc.function([x], outs, updates=[(W, W * 0.5)])
    general = []
    locked_call = f.locked_call
    monkeypatch.setattr(f, "locked_call", lambda args: general.append(1) or locked_call(args))
    a, b = RNG.normal(size=(4, 3)), RNG.normal(size=(2, 3))
    results = []
    for k, feed in enumerate([a, a, b, b, a, a[:, :2], a]):
        w0 = W.value.copy()
        if feed.shape[1] != 3:
            with pytest.raises(gc.GraphcError, match="expected shape"):
                f(feed)
            continue
        got = f(feed)
        assert type(got) is {"one": np.ndarray, "list": list, "tuple": tuple}[form]
        got = [got] if form == "one" else got
        np.testing.assert_allclose(got[0], feed @ w0, rtol=1e-12)
        if form != "one":
            assert got[1] == pytest.approx((feed @ w0).sum())
        np.testing.assert_array_equal(W.value, w0 * 0.5)
        results.append(got[0])
    assert len(general) == 4            # the first a, the first b, a again, the wrong shape
    assert f.entry is f.last_plan.entry
    assert len({id(r) for r in results}) == len(results)     # each call its own arrays


def test_a_step_failing_in_the_entry_is_named_and_frees_the_locks():
    """A run-time error on the usual path (the plan's code inlined in its entry) names the
    step as the general path does, leaves the variables as they were and the locks free."""
    ids = gc.placeholder((None, 3), dtype="int64", name="ids")
    E = gc.variable(RNG.standard_normal((10, 4)), name="E")
    cost = gc.sum(gc.exp(gc.take(gc.tanh(E) * 2.0, ids)))
    f = gc.function([ids], cost, updates=[(E, E - 0.1 * gc.grad(cost, [E])[0])])
    good, bad = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 2, 3], [4, 5, 60]])
    with pytest.raises(gc.GraphcError) as general:      # the first call: the general path
        f(bad)
    e0 = E.value.copy()
    f(good)
    e1 = E.value.copy()
    assert f.last_plan.accepts((bad,)) and "take" in f.last_plan.source
    with pytest.raises(gc.GraphcError) as usual:
        f(bad)
    assert str(usual.value) == str(general.value)
    assert re.match(r"step [1-9]\d* failed at run time: IndexError.*\n.*take.*\n"
                    r"  at .*test_runtime_calls.py", str(usual.value))
    np.testing.assert_array_equal(E.value, e1)
    free = []                  # (R)locks: another thread must be able to take them
    t = threading.Thread(target=lambda: [free.append(lock.acquire(timeout=10)) or
                                         lock.release() for lock in f.locks])
    t.start()
    t.join()
    assert free == [True] * len(f.locks)
    assert f(good) == pytest.approx(np.exp(np.tanh(e1)[[1, 2, 3, 4, 5, 6]] * 2).sum())
    assert not np.array_equal(E.value, e1) and not np.array_equal(e0, e1)


def test_ctrl_c_in_the_entry_leaves_the_updates_all_old_or_all_new():
    """The Ctrl-C test of test_runtime_threads with an array feed, which the plan's entry
    takes (a Python float takes the general path)."""
    from tests.test_runtime_threads import interrupted_training
    assert interrupted_training(rounds=30, feed=np.array(1.0)) == 30


def test_outputs_are_new_arrays_of_every_call_written_by_their_steps():
    """An output computed into a planned buffer is written by its step into an array made
    by that call (no copy out at the end); none aliases a plan buffer, a variable or another
    output (an output given twice is copied for its second place), and a later call leaves
    an earlier result alone."""
    x = gc.placeholder((None, 3), "float64", "x")
    W = gc.variable(RNG.normal(size=(3, 4)), name="W")
    b = gc.variable(RNG.normal(size=4), name="b")
    y = gc.relu(x @ W + b)
    outs = [y, y, gc.exp(y) * 2.0 + 1.0, gc.sum(y), W]
    f = gc.function([x], outs, updates=[(b, b * 0.5)])
    a, c = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
    first = f(a)
    ret = f.source.splitlines()[-1]
    assert f.source.count("= xp.empty(") == 3 and ret.count("xp.array(") == 2, f.source
    kept = [r.copy() for r in first]
    w0, b0 = W.value.copy(), b.value.copy()
    second = f(c)
    for got, want in zip(first, kept):
        np.testing.assert_array_equal(got, want)
    want = np.maximum(c @ w0 + b0, 0)
    for got, value in zip(second, [want, want, np.exp(want) * 2 + 1, want.sum(), w0]):
        np.testing.assert_allclose(got, value, rtol=1e-12)
    arrays = [v for v in f.last_plan.ns.values() if isinstance(v, np.ndarray)]
    arrays += [W.value, b.value]
    for k, r in enumerate(second):
        assert not any(np.shares_memory(r, v) for v in arrays)
        assert not any(np.shares_memory(r, s) for s in second[:k])
