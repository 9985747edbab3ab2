"""Probes of aligned plan buffers (runtime/layout.py `aligned`: every buffer a view of a uint8
block) and of GEMM/GEMV calls prepared at plan time (program.Lowering.prepared) over the plan's
own arrays: compiled values equal eval's (with and without the passes, several calls, two batch
sizes, the exported module), outputs never alias plan memory, and a variable assigned between
calls (any layout, dtype, a read-only or later-mutated array) is what the next call reads."""
from __future__ import annotations

import copy
import gc as pygc
import importlib.util
import pickle
import weakref

import numpy as np
import pytest

import graphc as gc
from graphc.listing import format_listing

RNG = np.random.default_rng(26)


def close(got, want, tol):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                               atol=tol)


# outputs, aligned buffers ------------------------------------------------------------------
def views_graph(dtype):
    x = gc.placeholder((None, 3), dtype, name="x")
    c = gc.constant(np.arange(6).reshape(2, 3).astype(dtype))
    outs = [x + x, gc.reshape(x * x, (-1,)), gc.sum(x, axis=0), c, gc.reshape(c, (3, 2)),
            gc.transpose(x * x)]
    return x, outs


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int8", "uint8", "int64"])
@pytest.mark.parametrize("optimize", [True, False])
def test_outputs_never_alias_plan_memory_nor_each_other_across_calls(dtype, optimize):
    """A user writing into one call's results changes nothing the next call returns."""
    x, outs = views_graph(dtype)
    f = gc.function([x], outs, optimize=optimize)
    for n in (4, 2, 4):
        xv = (RNG.standard_normal((n, 3)) * 3).astype(dtype)
        want = [o.eval({x: xv}) for o in outs]
        first = f(xv)
        for g, w in zip(first, want):
            close(g, w, 1e-2 if dtype == "float16" else 1e-6)
        for g in first:
            if g.flags.writeable:
                g[...] = 1
        again = f(xv)
        for g, w in zip(again, want):
            close(g, w, 1e-2 if dtype == "float16" else 1e-6)
        assert not any(np.shares_memory(a, b) for a in again for b in first)
        assert not any(np.shares_memory(a, v) for a in again for v in plan_arrays(f))


def plan_arrays(f):
    return [v for v in f.last_plan.ns.values() if isinstance(v, np.ndarray)]


@pytest.mark.parametrize("shape", [(3, 0), (0, 0), ()])
def test_zero_size_and_0d_values_compile_as_eval(shape):
    x = gc.placeholder(shape, "float32")
    outs = [x * 2.0, gc.exp(x) + x, gc.sum(x)]
    f = gc.function([x], outs)
    for _ in range(2):
        xv = RNG.standard_normal(shape).astype(np.float32)
        for g, o in zip(f(xv), outs):
            close(g, o.eval({x: xv}), 1e-6)


def test_results_and_plan_buffers_pickle_and_copy():
    x = gc.placeholder((None, 8), "float64")
    W = gc.variable(RNG.standard_normal((8, 5)))
    h = gc.relu(x @ W) * 2.0
    f = gc.function([x], [h, gc.sum(h)])
    xv = RNG.standard_normal((6, 8))
    outs = f(xv)
    for a in outs + plan_arrays(f):
        b = pickle.loads(pickle.dumps(a))
        assert b.shape == a.shape and b.dtype == a.dtype
        np.testing.assert_array_equal(copy.deepcopy(a)[~np.isnan(a)] if a.dtype.kind == "f"
                                      else copy.deepcopy(a), a[~np.isnan(a)]
                                      if a.dtype.kind == "f" else a)
    for g, w in zip(pickle.loads(pickle.dumps(outs)), [h.eval({x: xv}), gc.sum(h).eval({x: xv})]):
        close(g, w, 1e-12)


def test_evicted_plans_release_their_aligned_blocks():
    fn_mod = importlib.import_module("graphc.runtime.function")
    x = gc.placeholder((None, 32), "float64")
    W = gc.variable(np.ones((32, 32)))
    f = gc.function([x], [gc.relu(x @ W) * 2.0])
    blocks = []
    for n in range(1, fn_mod.PLAN_CACHE + 6):
        f(np.ones((n * 4, 32)))
        bufs = [v for v in plan_arrays(f) if v.base is not None and v.size >= 32]
        blocks.append(weakref.ref(bufs[0].base))
    pygc.collect()
    alive = sum(r() is not None for r in blocks)
    assert alive <= fn_mod.PLAN_CACHE


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-3), ("float64", 1e-9), ("float16", 5e-2)])
def test_channels_last_cnn_compiled_exported_and_eval_agree(dtype, tol, tmp_path):
    x = gc.placeholder((None, 3, 8, 8), dtype, name="x")
    w = gc.variable((RNG.standard_normal((4, 3, 3, 3)) * .3).astype(dtype), name="w")
    b = gc.variable(np.zeros((1, 4, 1, 1), dtype), name="b")
    q = gc.relu(gc.max_pool2d(gc.relu(gc.conv2d(x, w, padding=1) + b), 2) * 2.0 - 0.1)
    loss = gc.sum(q * q)
    outs = [q, loss, *gc.grad(loss, [w, b])]
    for optimize in (True, False):
        f = gc.function([x], outs, optimize=optimize)
        for n in (2, 3, 2):
            xv = RNG.standard_normal((n, 3, 8, 8)).astype(dtype)
            for g, o in zip(f(xv), outs):
                want = o.eval({x: xv})
                close(g / (1 + np.abs(want).max()), want / (1 + np.abs(want).max()), tol)
        path = f.export(tmp_path / f"cnn{optimize}" / "step.py")
        spec = importlib.util.spec_from_file_location(f"p26_cnn_{dtype}_{optimize}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        xv = RNG.standard_normal((2, 3, 8, 8)).astype(dtype)
        for g, w_ in zip(module.run(xv), f(xv)):
            close(g, w_, 1e-12)


# prepared GEMM/GEMV calls and variables assigned between calls -----------------------------
def mlp(dtype):
    x = gc.placeholder((None, 16), dtype, name="x")
    W = gc.variable((RNG.standard_normal((16, 12)) * .3).astype(dtype), name="W")
    V = gc.variable((RNG.standard_normal((12, 8)) * .3).astype(dtype), name="V")
    b = gc.variable(np.zeros(8, dtype), name="b")
    y = gc.tanh(x @ W) @ V + b
    loss = gc.mean(y * y)
    ups = [(v, v - 0.1 * gv) for v, gv in zip((W, V, b), gc.grad(loss, [W, V, b]))]
    return x, (W, V, b), y, loss, ups


def assigned_values(dtype):
    """(kind, array of W's shape) in the ways a user may assign a variable."""
    yield "plain", RNG.standard_normal((16, 12))
    yield "fortran", np.asfortranarray(RNG.standard_normal((16, 12)))
    yield "other float dtype", RNG.standard_normal((16, 12)).astype(
        np.float32 if dtype == "float64" else np.float64)
    yield "strided", RNG.standard_normal((32, 24))[::2, ::2]
    ro = RNG.standard_normal((16, 12))
    ro.flags.writeable = False
    yield "read-only", ro
    yield "transposed", RNG.standard_normal((12, 16)).T
    user = RNG.standard_normal((16, 12))
    yield "view later mutated", user[:]
    user[...] = 7.0
    yield "integers", np.ones((16, 12), np.int16)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batches", [(5, 5), (5, 64), (64, 5)])
def test_variable_assigned_between_calls_is_read_by_prepared_steps(dtype, batches):
    """Two Functions share the variables (a step with GEMM/GEMV updates prepared at plan time
    over the variables' storage, a prediction); W is assigned between calls in every layout,
    then each is called (at a new batch size too): values as eval's of the assigned values."""
    tol = 1e-9 if dtype == "float64" else 2e-4
    x, params, y, loss, ups = mlp(dtype)
    step = gc.function([x], [y, loss], updates=ups)
    pred = gc.function([x], y)
    step(RNG.standard_normal((5, 16)).astype(dtype))
    assert "xp.gemm(" in step.source and "xp.gemv(" in step.source
    for kind, value in assigned_values(dtype):
        params[0].value = value
        for n in batches:
            xv = RNG.standard_normal((n, 16)).astype(dtype)
            want = [y.eval({x: xv}), loss.eval({x: xv})] + [u.eval({x: xv}) for _, u in ups]
            close(pred(xv), want[0], tol)
            got = step(xv)
            for g, w in zip(list(got) + [p.value for p in params], want):
                close(g, w, tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_feeds_of_every_layout_through_a_prepared_feed_gemm(dtype):
    """W - lr x.T @ g with x and g feeds (the BLAS call's address renewed per call): C order,
    Fortran order, strided, read-only, reversed, unaligned feeds, alternating."""
    tol = 1e-9 if dtype == "float64" else 1e-3
    x = gc.placeholder((None, 128), dtype)
    g = gc.placeholder((None, 128), dtype)
    W = gc.variable((RNG.standard_normal((128, 128)) * .1).astype(dtype))
    f = gc.function([x, g], [], updates=[(W, W - 0.01 * gc.matmul(gc.transpose(x), g))])

    def feed(kind, n):
        a = RNG.standard_normal((n, 128)).astype(dtype)
        if kind == "fortran":
            a = np.asfortranarray(a)
        elif kind == "strided":
            a = RNG.standard_normal((n, 256)).astype(dtype)[:, ::2]
        elif kind == "read-only":
            a.flags.writeable = False
        elif kind == "reversed":
            a = a[::-1]
        elif kind == "unaligned":
            raw = np.zeros(a.nbytes + 1, np.uint8)
            u = np.frombuffer(raw.data, dtype, a.size, offset=1).reshape(a.shape)
            u[...] = a
            a = u
        return a

    for n in (200, 33, 200):
        for kind in ("plain", "fortran", "strided", "read-only", "plain", "reversed",
                     "unaligned", "plain"):
            a, b = feed(kind, n), RNG.standard_normal((n, 128)).astype(dtype)
            want = W.value.astype(np.float64) - 0.01 * (a.T.astype(np.float64) @ b)
            f(a, b)
            np.testing.assert_allclose(W.value, want, rtol=tol, atol=tol)
    assert "xp.gemm(" in f.source


@pytest.mark.parametrize("form", ["0.9 * c - 0.1 * p", "c + p", "p - c", "-0.5 * p + c",
                                  "p * 0.25 + c * 2.0", "c - p * 3.0"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gemm_forms_of_both_input_orders_and_dtypes_in_one_plan(form, dtype):
    """One body form met twice in one plan with its inputs in other positions (and in both
    dtypes across plans): each step's own GEMM/GEMV terms (rules.body_terms per form)."""
    tol = 1e-9 if dtype == "float64" else 2e-4
    a = gc.placeholder((24, 16), dtype)
    outs, ups = [], []
    for k in range(2):
        h = gc.tanh(a * float(k + 1))                     # buffers: a fixed product
        C = gc.variable(RNG.standard_normal((16, 16)).astype(dtype), name=f"C{k}")
        c_row = gc.variable(RNG.standard_normal((16,)).astype(dtype), name=f"r{k}")
        p = gc.matmul(gc.transpose(h), h) if k == 0 else gc.matmul(gc.transpose(h), h * 1.5)
        s = gc.sum(h, axis=0)
        ups += [(C, eval(form, {"c": C, "p": p})), (c_row, eval(form, {"c": c_row, "p": s}))]
    f = gc.function([a], outs, updates=ups)
    for _ in range(3):
        av = RNG.standard_normal((24, 16)).astype(dtype)
        want = [u.eval({a: av}) for _, u in ups]
        f(av)
        for (v, _), w in zip(ups, want):
            close(v.value, w, tol)


def test_a_node_reading_one_product_twice_keeps_both_reads():
    """p read twice by one node (and by nothing else): p is kept (not folded into a GEMM that
    writes over c), the update is as eval's."""
    a = gc.placeholder((24, 16), "float64")
    C = gc.variable(RNG.standard_normal((16, 16)))
    h = gc.tanh(a)
    p = gc.matmul(gc.transpose(h), h)
    f = gc.function([a], [], updates=[(C, C - 0.1 * p + p * p)])
    for _ in range(2):
        av = RNG.standard_normal((24, 16))
        want = (C - 0.1 * p + p * p).eval({a: av})
        f(av)
        close(C.value, want, 1e-9)


# errors ------------------------------------------------------------------------------------
def test_assigning_a_wrong_shape_or_dtype_names_the_users_line():
    W = gc.variable(np.zeros((3, 2)), name="W")
    for bad in (np.ones((2, 3)), np.ones((3, 2), complex), np.full((3, 2), "a"),
                [[1.0, 2.0], [3.0]], None):
        with pytest.raises(gc.GraphcError) as e:
            W.value = bad
        assert "'W'" in str(e.value) and "test_probe26.py:" in str(e.value)
    I8 = gc.variable(np.zeros(2, np.int8), name="I8")
    with pytest.raises(gc.GraphcError) as e:
        I8.value = np.array([300, 1])
    assert "int8" in str(e.value) and "test_probe26.py:" in str(e.value)
    with pytest.raises(gc.GraphcError) as e:
        gc.constant(np.ones(2)).value = np.ones(2)
    assert "constant" in str(e.value) and "test_probe26.py:" in str(e.value)
    np.testing.assert_array_equal(W.value, np.zeros((3, 2)))


# listing notes -----------------------------------------------------------------------------
def test_listing_notes_of_unknown_dims_and_tuples():
    x = gc.placeholder((None, 4), "float32", name="x")
    y = gc.placeholder((4,), "float32", name="y")
    z = gc.placeholder((None, 4), "float64", name="z")
    g = gc.Graph([x + y, z * 2.0, x * 3.0]) if hasattr(gc, "Graph") else None
    if g is None:
        pytest.skip("no gc.Graph")
    text = format_listing(g)
    assert "# (?, 4) float32 'x'" in text and "# (4,) float32 'y'" in text
    assert "# (?, 4) float64 'z'" in text
    assert text.count("# (?, 4) float32") == 3          # x, x + y, x * 3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_scan_body_with_a_captured_variable_assigned_between_calls(dtype):
    """A loop body's own plan reads W (captured) through its products; W updated by the step
    and assigned between calls, two batch sizes: as eval's."""
    tol = 1e-9 if dtype == "float64" else 2e-4
    xs = gc.placeholder((5, None, 8), dtype, name="xs")
    h0 = gc.placeholder((None, 8), dtype, name="h0")
    W = gc.variable((RNG.standard_normal((8, 8)) * .3).astype(dtype), name="W")
    h, ys = gc.scan(lambda h, x: (gc.tanh(h @ W + x), h), h0, xs)
    loss = gc.mean(h * h) + gc.mean(ys * ys)
    (gW,) = gc.grad(loss, [W])
    f = gc.function([xs, h0], [h, loss], updates=[(W, W - 0.5 * gW)])
    for n, assign in ((4, False), (4, True), (9, False), (4, True)):
        if assign:
            W.value = np.asfortranarray(RNG.standard_normal((8, 8)) * .3)
        feeds = {xs: RNG.standard_normal((5, n, 8)).astype(dtype),
                 h0: RNG.standard_normal((n, 8)).astype(dtype)}
        want = [h.eval(feeds), loss.eval(feeds), (W - 0.5 * gW).eval(feeds)]
        got = f(feeds[xs], feeds[h0])
        for g, w in zip(list(got) + [W.value], want):
            close(g, w, tol)


def test_exported_feed_gemm_takes_feeds_of_every_layout(tmp_path):
    """The exported module starts with empty prepared calls and renews them per feed layout
    as the Function does."""
    x = gc.placeholder((None, 128), "float64")
    g = gc.placeholder((None, 128), "float64")
    W = gc.variable(RNG.standard_normal((128, 128)) * .1, name="W")
    f = gc.function([x, g], [], updates=[(W, W - 0.01 * gc.matmul(gc.transpose(x), g))])
    f(np.ones((200, 128)), np.ones((200, 128)))
    assert "xp.gemm(" in f.source
    spec = importlib.util.spec_from_file_location("p26_gemm", f.export(tmp_path / "step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    w = np.array(module.state["W"])
    for a in (RNG.standard_normal((200, 128)), np.asfortranarray(RNG.standard_normal((200, 128))),
              RNG.standard_normal((200, 256))[:, ::2], RNG.standard_normal((200, 128))[::-1]):
        b = RNG.standard_normal((200, 128))
        w = w - 0.01 * (a.T @ b)
        module.run(a, b)
        np.testing.assert_allclose(module.state["W"], w, rtol=1e-9, atol=1e-9)


def test_a_failing_call_writes_no_variable_through_a_prepared_gemm():
    """Without the raising step the GEMM/GEMV steps write V and b in place; with it (an index
    out of range) every variable is as it was after the failed call, the error names op and
    line."""
    x, params, y, loss, ups = mlp("float64")
    idx = gc.placeholder((None,), "int64", name="idx")
    E = gc.variable(RNG.standard_normal(16), name="E")
    total = loss + gc.sum(gc.take(E, idx))
    grads = gc.grad(total, list(params) + [E])
    step = gc.function([x, idx], [total], updates=[(v, v - 0.1 * g)
                                                   for v, g in zip(list(params) + [E], grads)])
    xv = RNG.standard_normal((6, 16))
    step(xv, np.array([0, 3]))
    before = [v.value.copy() for v in list(params) + [E]]
    with pytest.raises(gc.GraphcError, match=r"(?s)take.*index 99.*test_probe26.py:"):
        step(xv, np.array([1, 99]))
    for v, b in zip(list(params) + [E], before):
        np.testing.assert_array_equal(v.value, b)


def test_a_plan_that_fails_to_build_leaves_the_collector_on_and_the_function_usable():
    x = gc.placeholder((None, 3), "float64", name="x")
    y = gc.placeholder((None, 3), "float64", name="y")
    W = gc.variable(np.ones((3, 3)), name="W")
    f = gc.function([x, y], [(x + y) @ W])
    assert pygc.isenabled()
    with pytest.raises(gc.GraphcError, match="test_probe26.py:"):
        f(np.ones((2, 3)), np.ones((4, 3)))
    assert pygc.isenabled() and not f.plans
    xv, yv = RNG.standard_normal((2, 3)), RNG.standard_normal((2, 3))
    close(f(xv, yv)[0], (xv + yv) @ np.ones((3, 3)), 1e-12)


def test_pickling_or_deep_copying_a_function_is_a_graphc_error_copy_shares_it():
    x = gc.placeholder((None, 3), "float64", name="x")
    W = gc.variable(np.ones((3, 2)), name="W")
    f = gc.function([x], x @ W, updates=[(W, W * 0.5)])
    f(np.ones((2, 3)))
    for dump in (pickle.dumps, copy.deepcopy):
        with pytest.raises(gc.GraphcError, match=r"(?s)Function.*gc.save.*test_probe26.py:"):
            dump(f)
    g = copy.copy(f)
    close(g(np.ones((2, 3))), np.full((2, 2), 1.5), 1e-12)       # W is 0.5 after f's call
    np.testing.assert_array_equal(W.value, np.full((3, 2), 0.25))
    close(f(np.ones((4, 3))), np.full((4, 2), 0.75), 1e-12)
