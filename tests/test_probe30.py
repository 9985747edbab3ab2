"""probe30: a hostile probe of the machinery between the ops -- the passes' rules at their
edges (integer factors, NaN, rounding ties), memory planning and in-place reuse, layouts --
against eval: optimized or not, check_numerics, one and two BLAS threads, several calls of one
Function, the standalone export. One test per bug found, each failing before its fix.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, evaluate
from graphc.runtime import blas


def compiled_runs(inputs, outputs, feeds, threads=(1,), monkeypatch=None, check=True):
    """Every way graphc runs a graph (optimized, not, check_numerics unless check=False, as
    for NaN feeds; at each BLAS thread count): a list of (what, results)."""
    args = [feeds[i] for i in inputs]
    out = []
    for t in threads:
        if monkeypatch is not None:
            monkeypatch.setattr(blas, "threads", lambda t=t: t)
        for opt, checked in ((True, False), (False, False), (True, True))[:3 if check else 2]:
            f = gc.function(inputs, outputs, optimize=opt, check_numerics=checked)
            out.append((f"optimize={opt} check_numerics={checked} threads={t}", f(*args)))
    return out


def assert_same(got, want, what, rtol=0.0):
    """Equal values (NaN where want has NaN), shapes and dtypes."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, equal_nan=True, err_msg=what)


# cancel: integer factors of a product with a positive divisor --------------------------------

@pytest.mark.parametrize("dtype,big", [("int8", 100), ("uint8", 100), ("int16", 300)])
def test_cancelling_a_positive_divisor_keeps_integer_factors_from_wrapping(dtype, big):
    """`a * (g / p) * p` with integer a, g and p = exp(z): stabilize's cancellation flattened
    the product to [a, g] and multiplied a * g in the integer dtype (100 * 100 in int8 wrapped
    to 16: compiled 16.0, eval 10000.0). Now an integer product is one factor and the others
    are cast to the float dtype before they are multiplied."""
    a, g = gc.placeholder((3,), dtype, "a"), gc.placeholder((3,), dtype, "g")
    z = gc.placeholder((3,), "float32", "z")
    p = gc.exp(z)
    outs = [a * (g / p) * p, (a * g) * (1.0 / p) * p, g * a / p * p]
    feeds = {a: np.array([big, 3, 120], dtype), g: np.array([big, 5, 7], dtype),
             z: np.zeros(3, np.float32)}
    want = evaluate(outs, feeds)
    assert want[0][0] == big * big
    for what, got in compiled_runs([a, g, z], outs, feeds):
        for k, (x, w) in enumerate(zip(got, want)):
            assert_same(x, w, f"{what} output {k}", rtol=1e-6)


# max pooling's gradient rules: NaN windows and ties made by rounding --------------------------

@pytest.mark.parametrize("bias", [False, True])
def test_a_sum_of_a_pooling_gradient_over_nan_windows_equals_eval(bias):
    """sum(max_pool2d_grad(g, x)) over H, W was rewritten to sum(g) ("every g lands once"),
    but a window whose maximum is NaN routes its g nowhere (eval and every kernel): the bias
    gradient of a pooled map with NaN windows was 5.0 where eval's is 0.0. Now the rule fires
    for a g already 0 at such windows (the CNN's where(pool(x) + b > 0, ., 0) mask), else
    for where(pool(x) == pool(x), g, 0)."""
    x = gc.placeholder((1, 1, 2, 4), "float64", "x")
    w = gc.placeholder((1, 1, 1, 2), "float64", "w")
    b = gc.variable(np.array(0.5), name="b") if bias else None
    pooled = gc.max_pool2d(x, 2)
    y = gc.relu(pooled + b) if bias else pooled
    (gx,) = gc.grad(gc.sum(y * w), [x])
    outs = [gc.sum(gx, axis=(2, 3)), gx]
    for xv in ([[np.nan, np.nan, 1, 2], [np.nan, np.nan, 3, np.nan]],
               [[-np.inf, -np.inf, 1, 2], [-np.inf, -np.inf, 3, np.nan]],
               [[np.nan, 1, 1, 2], [0, 0, 3, 4]]):
        feeds = {x: np.array(xv).reshape(1, 1, 2, 4), w: np.array([2.0, 3.0]).reshape(w.shape)}
        want = evaluate(outs, feeds)
        for what, got in compiled_runs([x, w], outs, feeds, check=False):
            for k, (v, u) in enumerate(zip(got, want)):
                assert_same(v, u, f"{what} output {k} at {xv}")


def test_a_float16_pooling_gradient_goes_where_eval_sends_it_when_the_bias_makes_a_tie():
    """max_pool2d_grad(g, x + b) was rewritten to max_pool2d_grad(g, x) ("the winners of
    x"), but x + b can round two values of a window to one maximum, whose first then wins:
    float16 x = [0.001, 0.0011] + 1.0 are both 1.001, eval's gradient [1, 0], compiled
    [0, 1] (a few hundred windows of a float16 CNN step). Not rewritten in float16 now."""
    x = gc.placeholder((1, 1, 2, 2), "float16", "x")
    y = gc.max_pool2d(x + gc.constant(np.full((1, 1, 1), 1.0, np.float16)), 2)
    (gx,) = gc.grad(gc.sum(y), [x])
    feeds = {x: np.array([0.001, 0.0011, 0, 0], np.float16).reshape(1, 1, 2, 2)}
    want = evaluate([gx, y], feeds)
    assert want[0].ravel().tolist() == [1, 0, 0, 0]
    for what, got in compiled_runs([x], [gx, y], feeds):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


# signed zeros between the ops ---------------------------------------------------------------

def test_a_where_with_a_negative_zero_keeps_it_compiled():
    """where(c, x, -0.0) was lowered as where(c, x, 0.0) (x's bits times c: +0.0 where c is
    False), so 1 / it was inf where eval's is -inf, optimized or not."""
    x, c = gc.placeholder((5,), "float32", "x"), gc.placeholder((5,), "bool", "c")
    outs = [1.0 / gc.where(c, x, -0.0), 1.0 / gc.where(c, x, 0.0), gc.where(c, x, -0.0)]
    feeds = {x: np.array([0.0, -0.0, 2.0, -3.0, 0.0], np.float32),
             c: np.array([True, False, True, False, False])}
    want = evaluate(outs, feeds)
    assert want[0].tolist() == [np.inf, -np.inf, 0.5, -np.inf, -np.inf]
    for what, got in compiled_runs([x, c], outs, feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")
            assert np.array_equal(np.signbit(v), np.signbit(u)), f"{what} output {k}"


def test_a_negative_scalar_factor_is_not_moved_into_a_masked_value():
    """push_scalar_factors moved -2.0 of -2.0 * where(c, broadcast(tanh v), 0) down to tanh v:
    where(c, -2.0 * ., 0) is +0.0 where c is False, -2.0 * 0.0 is -0.0, so 1 / it was +inf for
    eval's -inf (a negative factor is left where it is now; a positive one keeps every sign)."""
    v, c = gc.placeholder((3,), "float32", "v"), gc.placeholder((4, 3), "bool", "c")
    masked = gc.where(c, gc.broadcast_to(gc.tanh(v), (4, 3)), 0.0)
    outs = [1.0 / (-2.0 * masked), 1.0 / (masked * -2.0)]
    feeds = {v: np.array([0.5, -0.5, 0.0], np.float32), c: np.arange(12).reshape(4, 3) % 2 == 0}
    want = evaluate(outs, feeds)
    assert np.isneginf(want[0][0, 1]) and np.isneginf(want[1][0, 1])
    for what, got in compiled_runs([v, c], outs, feeds, check=False):
        for k, (x, u) in enumerate(zip(got, want)):
            assert_same(x, u, f"{what} output {k}", rtol=1e-6)


def test_nested_wheres_of_zeros_of_two_signs_keep_the_outer_zero():
    """where(c, where(c, x, -0.0), 0.0) was simplified to the inner where: -0.0 where eval
    gives 0.0 (1 / it: -inf for inf)."""
    x, c = gc.placeholder((4,), "float32", "x"), gc.placeholder((4,), "bool", "c")
    outs = [1.0 / gc.where(c, gc.where(c, x, -0.0), 0.0),
            1.0 / gc.where(c, gc.where(c, x, 0.0), -0.0)]
    feeds = {x: np.ones(4, np.float32), c: np.array([True, False, True, False])}
    want = evaluate(outs, feeds)
    assert want[0].tolist() == [1, np.inf, 1, np.inf]
    for what, got in compiled_runs([x, c], outs, feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


# unrolled loops -----------------------------------------------------------------------------

def test_an_unrolled_loop_reads_each_step_of_a_sequence_as_the_loop_does():
    """unroll_loops took x[t] as sum(x[t:t+1], axis=0): a float sum of one -0.0 is 0.0, so
    1 / x_t was inf where the loop's is -inf (and the final carry inf for NaN)."""
    xs, h0 = gc.placeholder((3, 2), "float32", "xs"), gc.placeholder((2,), "float32", "h0")
    h_last, ys = gc.scan(lambda h, x: (h + 1.0 / x, 1.0 / x), h0, xs)
    feeds = {xs: np.array([[-0.0, 1.0], [2.0, -0.0], [0.0, -4.0]], np.float32),
             h0: np.zeros(2, np.float32)}
    want = evaluate([h_last, ys], feeds)
    assert want[1][0, 0] == -np.inf
    for what, got in compiled_runs([xs, h0], [h_last, ys], feeds, check=False):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


@pytest.mark.parametrize("dtype", ["bool", "int8", "int32", "float16"])
def test_an_unrolled_loop_over_a_sequence_keeps_its_dtype(dtype):
    """The same x[t] as a sum turned a bool step into int64: a loop returning its bool steps
    as ys gave int64 ys ([[1, 0], ...] for [[True, False], ...]) once unrolled."""
    xs, h0 = gc.placeholder((3, 2), dtype, "xs"), gc.placeholder((2,), "float32", "h0")
    h_last, ys = gc.scan(lambda h, x: (h + gc.cast(x, "float32"), x), h0, xs)
    xv = np.arange(6).reshape(3, 2) % 2 == 0 if dtype == "bool" else \
        np.array([[1, 2], [3, 127], [100, 5]]).astype(dtype)
    feeds = {xs: xv, h0: np.ones(2, np.float32)}
    want = evaluate([h_last, ys], feeds)
    assert want[1].dtype == np.dtype(dtype)
    for what, got in compiled_runs([xs, h0], [h_last, ys], feeds):
        for k, (v, u) in enumerate(zip(got, want)):
            assert_same(v, u, f"{what} output {k}")


# random graphs aimed at the rules' preconditions and at the planner ------------------------

SEEDS = int(os.environ.get("GRAPHC_PROBE30", "0"))
SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, 0.5, np.inf, -np.inf, np.nan, 1e30, 1e-40, 3.0, -7.5]


def special_feed(r, shape, dtype):
    """Random values of dtype, 40 % of them the edges (+-0, +-inf, NaN, huge, denormal; an
    integer type's extremes)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return r.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        edges = [0, 1, 2, 100, info.max, info.min, info.max - 1] + ([-1, -100] if dtype.kind
                                                                     == "i" else [])
        return r.choice(np.array(edges, np.int64), shape).astype(dtype)
    with np.errstate(all="ignore"):
        a = r.standard_normal(shape).astype(dtype)
        hit = r.random(shape) < 0.4
        a[hit] = r.choice(np.array(SPECIAL), int(hit.sum())).astype(dtype)
    return a


def random_rule_graph(seed: int):
    """Elementwise and shape ops over two placeholders of one dtype (float16/32/64, int8,
    uint8, int32, int64, bool) and a shape with size-0 or size-1 dims, each op chosen to meet
    a rule's precondition: x +- 0.0 / -0.0, 0 - x, x * 1, x * -1, x / 1, --x, a + -b, -a * -b,
    exp(log x), T(T x), reshape(reshape x), sums over unit axes and of broadcasts, casts,
    where(c, x, x), where with constant conditions, where(c, x, +-0) (and nested), relu(x) > 0,
    constant scalar factors of masked values; outputs: three of the values made."""
    r = np.random.default_rng(seed)
    dtype = str(r.choice(["float32", "float64", "float16"] if r.random() < 0.6 else
                         ["int8", "uint8", "int32", "int64", "bool", "float32"]))
    shape = [(3, 4), (1, 4), (3, 1), (0, 4), (2, 3, 4), (4,), ()][int(r.integers(7))]
    xs = [gc.placeholder(shape, dtype, f"x{i}") for i in range(2)]
    pool = list(xs)

    def const(like, full):
        arr = special_feed(r, like.shape if full else (), like.dtype)
        return gc.constant(np.asarray(arr, like.dtype))
    zero = {"+": 0.0, "-": -0.0}
    makers = [
        lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
        lambda a, b: a + gc.constant(np.asarray(zero[r.choice(["+", "-"])], a.dtype)),
        lambda a, b: gc.constant(np.asarray(zero[r.choice(["+", "-"])], a.dtype)) - a,
        lambda a, b: a * gc.constant(np.asarray(r.choice([1, -1]), a.dtype)),
        lambda a, b: a / gc.constant(np.asarray(1, a.dtype)) if a.dtype.kind == "f" else -a,
        lambda a, b: -(-a), lambda a, b: a + (-b), lambda a, b: (-a) * (-b),
        lambda a, b: gc.exp(gc.log(gc.exp(a))) if a.dtype.kind == "f" else a - b,
        lambda a, b: gc.transpose(gc.transpose(a)) if a.ndim >= 2 else a * b,
        lambda a, b: gc.reshape(gc.reshape(a, (-1,)), a.shape) if a.ndim else a,
        lambda a, b: gc.sum(a, axis=0, keepdims=True) if a.ndim and a.shape[0] == 1 else a,
        lambda a, b: gc.sum(gc.broadcast_to(const(a, False), (2,) + a.shape), axis=0),
        lambda a, b: gc.cast(a, str(r.choice(["float32", "float64", "int8", "uint8",
                                                "int64", "bool", "float16"]))),
        lambda a, b: gc.where(a > b, a, a) if a.dtype.kind != "b" else gc.where(a, b, b),
        lambda a, b: gc.where(gc.constant(np.asarray(r.random() < 0.5)), a, b),
        lambda a, b: gc.where(a > b, a, gc.constant(np.asarray(zero[r.choice(["+", "-"])],
                                                               a.dtype))),
        lambda a, b: gc.where(b > a, gc.where(b > a, a, 0.0), -0.0) if a.dtype.kind == "f"
        else a,
        lambda a, b: gc.relu(a) > 0.0 if a.dtype.kind == "f" else a > b,
        lambda a, b: gc.constant(np.asarray(r.choice([-2.0, 0.5]), a.dtype)) * gc.where(
            a > b, gc.tanh(b), 0.0) if a.dtype.kind == "f" else a * b,
        lambda a, b: gc.maximum(a, const(a, r.random() < 0.5)),
        lambda a, b: gc.minimum(a, b) if a.dtype.kind != "b" else a,
    ]
    for _ in range(int(r.integers(3, 10))):
        a = pool[int(r.integers(len(pool)))]
        b = pool[int(r.integers(len(pool)))]
        try:
            with np.errstate(all="ignore"):
                y = makers[int(r.integers(len(makers)))](a, b if b.shape == a.shape else a)
        except gc.GraphcError:           # an op the dtype does not take (log of int8, ...)
            continue
        pool.append(y)
    outs = [pool[-1]] + [pool[int(r.integers(len(pool)))] for _ in range(2)]
    feeds = {x: special_feed(r, x.shape, x.dtype) for x in xs}
    return xs, outs, feeds


def assert_values_agree(got, want, what):
    """Same dtype and shape; NaN, +-inf and the sign of every zero where want has them; other
    values to rounding (a sum of a broadcast is a product)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    rtol = 2e-3 if want.dtype == np.float16 else 1e-6
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0, equal_nan=True, err_msg=what)
    zero = want == 0
    np.testing.assert_array_equal(np.signbit(got[zero]), np.signbit(want[zero]), err_msg=what)


@pytest.mark.parametrize("seed", range(SEEDS or 40))
def test_random_graphs_at_the_rules_edges_compute_what_eval_computes(seed):
    xs, outs, feeds = random_rule_graph(seed)
    with np.errstate(all="ignore"):
        want = evaluate(outs, feeds)
        for what, got in compiled_runs(xs, outs, feeds, check=False):
            for k, (g, w) in enumerate(zip(got, want)):
                assert_values_agree(g, w, f"seed {seed} {what} output {k}")


def random_planner_graph(seed: int):
    """A random DAG for the memory planner over x (?, 4), three (4, 4) variables and a
    vector: products, views (transposes, reshapes, slices, rows, broadcasts) read again after
    elementwise steps that may run in place, concatenations, reductions; outputs that alias
    (one value twice, views of each other, variables); updates from that pool, so they read
    each other's variables, directly or through views, and may be outputs too."""
    r = np.random.default_rng(seed)
    dtype, n = str(r.choice(["float64", "float32"])), 4
    x = gc.placeholder((None, n), dtype, "x")
    vs = [gc.variable(r.standard_normal((n, n)).astype(dtype) * 0.5, name=f"V{i}")
          for i in range(3)]
    vec = gc.variable(r.standard_normal(n).astype(dtype), name="vec")
    rows, mats, vecs = [x, gc.tanh(x)], list(vs), [vec]

    def pick(pool):
        return pool[int(r.integers(len(pool)))]
    makers = [
        lambda: rows.append(pick(rows) @ pick(mats)),
        lambda: mats.append(gc.transpose(pick(mats))),
        lambda: mats.append(gc.reshape(gc.reshape(pick(mats), (-1,)) * 0.9, (n, n))),
        lambda: rows.append(gc.exp(pick(rows) * 0.1) - pick(rows)),
        lambda: vecs.append(gc.sum(pick(rows), axis=0)),
        lambda: mats.append(pick(mats) * gc.tanh(pick(mats)) + 0.5),
        lambda: rows.append(gc.concat([pick(rows)[:, :2], pick(rows)[:, 2:]], axis=1)),
        lambda: vecs.append(pick(mats)[1]),
        lambda: mats.append(gc.where(pick(mats) > 0.0, pick(mats), -pick(mats))),
        lambda: rows.append(pick(rows) + pick(vecs)),
        lambda: mats.append(gc.transpose(pick(rows)) @ pick(rows)),
        lambda: vecs.append(gc.max(pick(mats), axis=1) - pick(vecs)),
        lambda: mats.append(gc.broadcast_to(pick(vecs), (n, n)) * 0.7),
        lambda: rows.append(gc.relu(pick(rows)) * 0.9),
        lambda: mats.append(gc.expand_dims(pick(vecs), 1) + pick(mats)),
        lambda: mats.append(gc.flip(pick(mats), axis=1) * gc.sin(pick(mats))),
    ]
    for _ in range(int(r.integers(5, 14))):
        makers[int(r.integers(len(makers)))]()
    outs = [pick(p) for p in (rows, mats, vecs, rows, mats)]
    outs.append(outs[int(r.integers(len(outs)))])
    updates = [(v, pick(mats)) for v in vs if r.random() < 0.7]
    if r.random() < 0.5:
        updates.append((vec, pick(vecs)))
    if updates and r.random() < 0.3:
        outs.append(updates[0][1])
    calls = [r.standard_normal((m, n)).astype(dtype) for m in (3, 3, 1, 3, 5)]
    return x, outs, updates, calls, dtype


def eval_calls(x, outs, updates, calls, every):
    """eval's outputs and variable values after each call (every update computed first)."""
    want = []
    for a in calls:
        vals = evaluate(outs + [u for _, u in updates], {x: a})
        for (var, _), val in zip(updates, vals[len(outs):]):
            var.value = val
        want.append(([np.array(v) for v in vals[:len(outs)]], [v.value.copy() for v in every]))
    return want


@pytest.mark.parametrize("seed", range(SEEDS or 24))
def test_random_planner_graphs_agree_everywhere_over_calls(seed, tmp_path, monkeypatch):
    """Optimized or not, check_numerics, two BLAS threads, the export: over five calls of
    two batch sizes, outputs and variables as eval's, the feed untouched, each call's
    results unchanged by the later calls and never a variable's memory."""
    from tests.helpers import load_module
    x, outs, updates, calls, dtype = random_planner_graph(seed)
    every = list(dict.fromkeys([v for v, _ in updates] + [
        n for n in Graph(outs).nodes if n.op == "variable"]))
    start = [v.value.copy() for v in every]
    want = eval_calls(x, outs, updates, calls, every)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)
    for opt, check, threads, export in ((False, False, 1, False), (True, False, 1, False),
                                        (True, True, 1, False), (True, False, 2, False),
                                        (True, False, 1, True)):
        monkeypatch.setattr(blas, "threads", lambda t=threads: t)
        for var, s in zip(every, start):
            var.value = s.copy()
        f = gc.function([x], outs, updates=updates, optimize=opt, check_numerics=check)
        run, state = f, None
        if export:
            for a in calls:
                f(a)                          # a plan per batch size, then the start again
            for var, s in zip(every, start):
                var.value = s.copy()
            mod = load_module(f.export(str(tmp_path / f"p{seed}.py")), f"probe30_{seed}")
            run, state = mod.run, mod.state
        kept = []
        for k, (a, (wo, wv)) in enumerate(zip(calls, want)):
            what = f"seed {seed} optimize={opt} check={check} threads={threads} " \
                   f"export={export} call {k}"
            fed = a.copy()
            got = run(a)
            np.testing.assert_array_equal(a, fed, err_msg=f"{what}: the feed was written")
            for j, (g, w) in enumerate(zip(got, wo)):
                np.testing.assert_allclose(g, w, **tol, err_msg=f"{what} output {j}")
            for var, w, s in zip(every, wv, start):
                value = var.value if state is None else state.get(var.name, s)
                np.testing.assert_allclose(value, w, **tol, err_msg=f"{what} {var.name}")
                for g in got:
                    assert not np.shares_memory(g, value), f"{what}: an output is {var.name}"
            kept.append((got, [g.copy() for g in got]))
        for k, (got, copies) in enumerate(kept):
            for g, c in zip(got, copies):
                np.testing.assert_array_equal(g, c, err_msg=f"call {k}'s result changed")
    for var, s in zip(every, start):
        var.value = s.copy()
