"""probe24: random graphs over the rewrites that meet each other: updates that alias and
read each other (swaps, transposed reads, GEMM/GEMV accumulation into variables), loops
with captured values and gradients of gradients against the loop unrolled by hand,
products and scaled sums around them (the GEMM steps' forms), conv graphs (Winograd
forced). GRAPHC_PROBE24=N runs N seeds of each.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, evaluate
from tests.helpers import load_module

SEEDS = int(os.environ.get("GRAPHC_PROBE24", "0"))


# updates that alias, read each other, accumulate by GEMM; outputs that are variables ------

def random_aliasing_updates(seed: int):
    """Square variables A, B, a vector v, a scalar s, updated by random pairs from a pool:
    swaps (A <- B, B <- A), transposed reads (A <- A.T - ...), GEMM accumulations
    (A <- A - lr * x.T @ (x @ B)), GEMV ones (v <- v - lr * sum(x @ A, 0)), a mean, products
    of two updated variables; outputs: variables themselves, their transposes, new values."""
    r = np.random.default_rng(seed)
    dt = str(r.choice(["float32", "float64"], p=[0.3, 0.7]))
    n = int(r.choice([3, 4, 16]))
    x = gc.placeholder((None, n), dt, "x")
    a = gc.variable(r.standard_normal((n, n)).astype(dt) * 0.3, name="A")
    b = gc.variable(r.standard_normal((n, n)).astype(dt) * 0.3, name="B")
    v = gc.variable(r.standard_normal(n).astype(dt), name="v")
    s = gc.variable(np.asarray(0.5, dt), name="s")
    h = gc.tanh(x @ a)
    loss = gc.sum(h * h) + gc.sum((h @ b) * v)
    ga, gb, gv = gc.grad(loss, [a, b, v])
    lr = 0.01
    pool = {
        a: [b, gc.transpose(a), a - lr * ga, a - lr * (gc.transpose(x) @ (x @ b)),
            a * s + gc.transpose(b), a @ b, 0.9 * a - lr * gc.transpose(ga), a - ga * s],
        b: [a, gc.transpose(b) - lr * gb, b - lr * gc.transpose(x) @ h, gc.transpose(a) @ b,
            b + gc.expand_dims(v, 0)],
        v: [v - lr * gv, v - lr * gc.sum(x @ a, axis=0), gc.sum(a, axis=1),
            v + a @ v * 0.1, gc.mean(x, axis=0) + v],
        s: [s * 0.9 + gc.mean(a), gc.sum(v * v) * 0.01, s - lr * gc.sum(gb)],
    }
    updates = [(var, opts[int(r.integers(len(opts)))]) for var, opts in pool.items()
               if r.random() < 0.8]
    if not updates:
        updates = [(a, b), (b, a)]
    if r.random() < 0.3:
        updates = [(a, b), (b, a)] + [(var, u) for var, u in updates if var not in (a, b)]
    outs = [loss] + [[a, b, v, s, gc.transpose(a), ga, a + 0.0][int(k)]
                     for k in r.choice(7, 2, replace=False)]
    if r.random() < 0.5:                         # a new value is an output too
        outs.append(updates[int(r.integers(len(updates)))][1])
    return x, outs, updates, dt


def run_updates_seed(seed: int, folder) -> None:
    x, outs, updates, dt = random_aliasing_updates(seed)
    variables = [var for var, _ in updates]
    every = list(dict.fromkeys(variables + [n for n in Graph(outs).nodes
                                            if n.op == "variable"]))
    r = np.random.default_rng(seed + 1000)
    calls = [{x: r.standard_normal((m, x.shape[1])).astype(dt)} for m in (5, 5, 2, 5, 2)]
    start = [var.value.copy() for var in every]
    want = []
    for fd in calls:
        vals = evaluate(outs + [u for _, u in updates], fd)
        want.append(([val.copy() for val in vals[:len(outs)]],))
        for var, val in zip(variables, vals[len(outs):]):
            var.value = val
        want[-1] += ([var.value.copy() for var in every],)
    tol = dict(rtol=1e-10, atol=1e-10) if dt == "float64" else dict(rtol=2e-4, atol=2e-5)
    for optimize, check in ((False, False), (True, False), (True, True)):
        for var, val in zip(every, start):
            var.value = val.copy()
        f = gc.function([x], outs, updates=updates, optimize=optimize, check_numerics=check)
        run, state = f, None
        for k, (fd, (wo, wv)) in enumerate(zip(calls, want)):
            if k == 3 and optimize and not check:
                mod = load_module(f.export(os.path.join(str(folder), f"u{seed}.py")),
                                  f"u{seed}")
                run, state = mod.run, mod.state
            got = run(fd[x])
            what = f"seed {seed} optimize={optimize} check={check} call {k}"
            for g, w in zip(got, wo):
                assert g.shape == w.shape and g.dtype == w.dtype, what
                np.testing.assert_allclose(g, w, **tol, err_msg=what)
            for var, w in zip(every, wv):
                value = var.value if state is None else state[var.name]
                np.testing.assert_allclose(value, w, **tol, err_msg=f"{what} {var.name}")
            for g in got:             # an output is the caller's: never a variable's storage
                for var in every:
                    value = var.value if state is None else state[var.name]
                    assert not np.shares_memory(g, value), f"{what}: output is {var.name}"


@pytest.mark.parametrize("seed", range(SEEDS or 16))
def test_random_aliasing_updates_agree_everywhere(seed, tmp_path, monkeypatch):
    from graphc.runtime import blas
    monkeypatch.setattr(blas, "MIN_WORK", 0 if seed % 2 else blas.MIN_WORK)   # GEMM for all
    run_updates_seed(seed, tmp_path)


# random loops against the same loop unrolled by hand -------------------------------------

def random_loop(seed: int):
    """A random step function over a carry h (2, 3), a slice x_t and captured values: a
    variable w, values made from w outside the loop (w * w, w.T @ w, a sum), a placeholder;
    the same function run as gc.scan (maybe reversed) and unrolled in Python."""
    r = np.random.default_rng(seed)
    x = gc.placeholder((int(r.choice([1, 2, 5, 6])), 2, 3), "float64", "x")   # 5, 6: no unroll
    h0 = gc.placeholder((2, 3), "float64", "h0")
    w = gc.variable(r.standard_normal((3, 3)) * 0.4, name="w")
    b = gc.variable(r.standard_normal(3) * 0.3, name="b")
    made = [w * w, gc.transpose(w) @ w * 0.3, gc.sum(w, axis=0) + b, gc.tanh(w)]
    ops = [lambda p, q: gc.tanh(p @ q) if q.shape == (3, 3) else p * q,
           lambda p, q: p * q if q.ndim < 2 else p @ gc.transpose(q),
           lambda p, q: gc.sigmoid(p) + q if q.ndim < 2 else gc.sigmoid(p) @ q,
           lambda p, q: gc.softplus(p - 1.0) * 0.5, lambda p, q: p + q if q.ndim < 2 else p,
           lambda p, q: gc.maximum(p, 0.1 * p)]
    steps = [(int(r.integers(len(ops))), int(r.integers(6))) for _ in range(r.integers(2, 5))]
    reverse = bool(r.random() < 0.3)

    def step(h, xt):
        caps = [w, b] + made
        pool = [h + xt, h * xt]
        for k, j in steps:
            pool.append(ops[k](pool[-1], caps[j]))
        hn = gc.tanh(pool[-1] + h * 0.5)
        return hn, hn * xt
    h_last, ys = gc.scan(step, h0, x, reverse=reverse)
    h, rows = h0, []
    for t in (range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])):
        h, y = step(h, x[t])
        rows.append(y)
    rows = rows[::-1] if reverse else rows
    return r, (x, h0), (w, b), (h_last, ys), (h, gc.stack(rows))


@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_random_loops_and_their_gradients_of_gradients_equal_the_unrolled_loop(seed):
    r, (x, h0), (w, b), loop, unrolled = random_loop(seed)
    k1, k2 = (gc.constant(r.standard_normal(o.shape)) for o in loop)

    def derived(h_last, ys):
        loss = gc.sum(h_last * k1) + gc.sum(ys * k2)
        first = gc.grad(loss, [w, b, x, h0])
        penalty = gc.sum(first[2] * first[2]) + gc.sum(first[0] * first[1])
        return [h_last, ys] + first + gc.grad(penalty, [w, b, x, h0])
    outs, want_outs = derived(*loop), derived(*unrolled)
    feeds = {x: r.standard_normal(x.shape), h0: r.standard_normal((2, 3))}
    want = evaluate(want_outs, feeds)
    runs = [evaluate(outs, feeds), gc.function([x, h0], outs)(*feeds.values()),
            gc.function([x, h0], outs, optimize=False)(*feeds.values())]
    for k, got in enumerate(runs):
        for j, (g, v) in enumerate(zip(got, want)):
            np.testing.assert_allclose(g, v, rtol=1e-9, atol=1e-11,
                                       err_msg=f"seed {seed} run {k} output {j}")


def random_products(seed: int):
    """Random chains of products and scaled sums around them (k1 * c ± k2 * a @ b,
    k * v - sum(rows, 0), a mean, W - W @ V * k): the forms the GEMM/GEMV steps take, their
    operands read again later or returned, updates of W, V, b from them."""
    r = np.random.default_rng(seed)
    n = int(r.choice([3, 5, 8]))
    x = gc.placeholder((None, n), "float64", "x")
    w = gc.variable(r.standard_normal((n, n)) * 0.5, name="W")
    v = gc.variable(r.standard_normal((n, n)) * 0.5, name="V")
    b = gc.variable(r.standard_normal(n), name="b")
    rows, mats, vecs = [x, gc.tanh(x)], [w, v], [b]

    def pick(pool):
        return pool[int(r.integers(len(pool)))]

    def k():
        return float(r.choice([0.5, -2.0, 0.9, 1.0, 3.0]))
    makers = [lambda: rows.append(pick(rows) @ pick(mats)),
              lambda: mats.append(gc.transpose(pick(rows)) @ pick(rows)),
              lambda: vecs.append(gc.sum(pick(rows), axis=0)),
              lambda: rows.append(k() * pick(rows) - pick(rows) @ pick(mats)),
              lambda: mats.append(k() * pick(mats) + k() * (gc.transpose(pick(rows))
                                                            @ pick(rows))),
              lambda: vecs.append(k() * pick(vecs) - k() * gc.sum(pick(rows), axis=0)),
              lambda: rows.append(gc.tanh(pick(rows)) * k() + pick(vecs)),
              lambda: mats.append(pick(mats) - pick(mats) @ pick(mats) * k()),
              lambda: vecs.append(k() * pick(vecs) + gc.mean(pick(rows)))]
    for _ in range(r.integers(4, 10)):
        makers[int(r.integers(len(makers)))]()
    outs = [pick(pool) for pool in (rows, mats, vecs) for _ in range(2)]
    updates = [(var, pick(pool)) for var, pool in ((w, mats), (v, mats), (b, vecs))
               if r.random() < 0.6]
    return r, x, outs, updates


@pytest.mark.parametrize("seed", range(SEEDS or 24))
def test_random_products_and_scaled_sums_agree_with_eval(seed, monkeypatch):
    """Half of these seeds failed before the scratch buffer of the GEMM fallback."""
    from graphc.runtime import blas
    monkeypatch.setattr(blas, "MIN_WORK", 0)                 # every product a BLAS step
    r, x, outs, updates = random_products(seed)
    variables = [var for var, _ in updates]
    every = [n for n in Graph(outs + [u for _, u in updates]).nodes if n.op == "variable"]
    start = [var.value.copy() for var in every]
    calls = [r.standard_normal((m, x.shape[1])) for m in (4, 4, 2, 4)]
    want = []
    for a in calls:
        vals = evaluate(outs + [u for _, u in updates], {x: a})
        for var, val in zip(variables, vals[len(outs):]):
            var.value = val
        want.append((vals[:len(outs)], [var.value.copy() for var in every]))
    for optimize in (True, False):
        for var, s in zip(every, start):
            var.value = s.copy()
        f = gc.function([x], outs, updates=updates, optimize=optimize)
        for k, (a, (wo, wv)) in enumerate(zip(calls, want)):
            what = f"seed {seed} optimize={optimize} call {k}"
            for j, (g, w) in enumerate(zip(f(a), wo)):
                np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9, err_msg=f"{what} out {j}")
            for var, w in zip(every, wv):
                np.testing.assert_allclose(var.value, w, rtol=1e-9, atol=1e-9,
                                           err_msg=f"{what} {var.name}")


def random_conv_graph(seed: int):
    """Random NCHW graphs: convolutions (kernels 1-3, stride 1-2, padding 0-1) with relu or
    tanh, pools, residual convolutions, a squeeze-and-excite gate; a loss of the last map and
    another; SGD with momentum on every kernel; outputs: maps along the way, dL/dx, a new
    velocity."""
    r = np.random.default_rng(seed)
    c, h, w = int(r.choice([1, 2, 4])), int(r.choice([5, 6, 8])), int(r.choice([5, 7]))
    x = gc.placeholder((None, c, h, w), "float64", "x")
    maps, kernels = [x], []

    def kernel(shape, scale):
        kernels.append(gc.variable(r.standard_normal(shape) * scale,
                                   name=f"K{len(kernels)}"))
        return kernels[-1]
    for _ in range(r.integers(2, 5)):
        m = maps[int(r.integers(len(maps)))]
        kind, cin, small = int(r.integers(6)), m.shape[1], min(m.shape[2:])
        if kind <= 1:
            k, s, p = int(r.choice([1, 2, 3])), int(r.choice([1, 1, 2])), int(r.choice([0, 1]))
            if small + 2 * p >= k:
                y = gc.conv2d(m, kernel((int(r.choice([2, 3, 4])), cin, k, k), 0.4), stride=s,
                              padding=p)
                maps.append(gc.relu(y) if kind == 0 else gc.tanh(y))
        elif kind in (2, 3) and small >= 2:
            maps.append(gc.max_pool2d(m, 2) if kind == 2 else gc.avg_pool2d(m, 2, stride=1))
        elif kind == 4:
            maps.append(m + 0.5 * gc.conv2d(m, kernel((cin, cin, 3, 3), 0.3), padding=1))
        elif kind == 5:
            maps.append(m * gc.sigmoid(gc.mean(m, axis=(2, 3), keepdims=True)))
    if not kernels:
        maps.append(gc.conv2d(x, kernel((2, c, 3, 3), 0.4), padding=1))
    loss = gc.sum(maps[-1] * maps[-1]) * 0.01 \
        + gc.sum(gc.tanh(maps[int(r.integers(1, len(maps)))]))
    grads = gc.grad(loss, kernels + [x])
    updates = []
    for kern, g in zip(kernels, grads):
        v = gc.variable(np.zeros(kern.shape), name=f"{kern.name}/v")
        new = 0.9 * v - 0.05 * g
        updates += [(v, new), (kern, kern + new)]
    outs = [loss, grads[-1]] + [maps[int(r.integers(len(maps)))] for _ in range(2)]
    return r, x, outs + [updates[0][1]], updates


@pytest.mark.parametrize("seed", range(SEEDS or 10))
def test_random_conv_graphs_train_alike(seed, monkeypatch):
    """Over 4 calls (batches 3, 3, 1, 3), optimized and not, every product a BLAS step and,
    for odd seeds, Winograd for every 3x3 stride-1 convolution."""
    from graphc.runtime import blas, winograd
    monkeypatch.setattr(blas, "MIN_WORK", 0)
    if seed % 2:
        for name, value in (("MIN_CHANNELS", 1), ("MIN_PRODUCTS", 0), ("MAX_WORK", 100)):
            monkeypatch.setattr(winograd, name, value)
    r, x, outs, updates = random_conv_graph(seed)
    variables = [var for var, _ in updates]
    start = [var.value.copy() for var in variables]
    calls = [r.standard_normal((m,) + x.shape[1:]) for m in (3, 3, 1, 3)]
    want = []
    for a in calls:
        vals = evaluate(outs + [u for _, u in updates], {x: a})
        for var, val in zip(variables, vals[len(outs):]):
            var.value = val
        want.append((vals[:len(outs)], [var.value.copy() for var in variables]))
    tol = dict(rtol=1e-8, atol=1e-8)         # Winograd rounds ~10x more than im2col
    for optimize in (True, False):
        for var, s in zip(variables, start):
            var.value = s.copy()
        f = gc.function([x], outs, updates=updates, optimize=optimize)
        for k, (a, (wo, wv)) in enumerate(zip(calls, want)):
            what = f"seed {seed} optimize={optimize} call {k}"
            for j, (g, w) in enumerate(zip(f(a), wo)):
                assert g.shape == w.shape, what
                np.testing.assert_allclose(g, w, **tol, err_msg=f"{what} out {j}")
            for var, w in zip(variables, wv):
                np.testing.assert_allclose(var.value, w, **tol, err_msg=f"{what} {var.name}")
