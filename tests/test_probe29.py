"""probe29: the rule of products stored transposed (runtime/layout.py TRANSPOSED) at 2 BLAS
threads, the count CI runs the suite at. Plans are made as at 2 threads (blas.threads patched:
the layouts are decided from it, the BLAS itself runs on the test's one thread), and one test
runs its graphs in a fresh process at OPENBLAS_NUM_THREADS=2. Every graph is compiled (with and
without the passes, check_numerics), called several times over batch sizes on both sides of
the rule (rows 1, 2, 24, 63, 64, 65) and compared with eval: transposed values read by
reshapes, slices, concatenations, transposes, sums over each axis and all, argmax, where,
comparisons, casts, gathers, softmax; trained MLPs of every activation, attention blocks,
optimizers, scan bodies, GEMM updates of variables, feeds and variables in odd layouts, plans
made at other thread counts, profile and export. GRAPHC_PROBE29=N runs N random seeds.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import evaluate
from graphc.runtime import blas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = int(os.environ.get("GRAPHC_PROBE29", "0"))


@pytest.fixture
def two(monkeypatch):
    """Plans made as at 2 BLAS threads."""
    monkeypatch.setattr(blas, "threads", lambda: 2)


def transposed(f) -> list[str]:
    """The last plan's 2-D buffers stored transposed (F-ordered, not C-ordered)."""
    return sorted(k for k, a in f.last_plan.ns.items() if k[:1] == "b"
                  and isinstance(a, np.ndarray) and a.ndim == 2 and not a.flags.c_contiguous
                  and a.flags.f_contiguous)


def same(got, want, tol, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape,
                                                                 got.dtype, want.dtype)
    tol = max(tol, {"float32": 1e-5, "float16": 1e-2}.get(got.dtype.name, 0.0))
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol,
                               atol=tol, err_msg=what)


def run_as_eval(inputs, outs, calls, updates=(), tol=1e-9,
                modes=((True, False), (False, False), (True, True))) -> int:
    """Each call's outputs and variables after its updates, compiled in each (optimize,
    check_numerics) mode, equal eval's; returns how many calls ran a transposed buffer."""
    variables = [v for v, _ in updates]
    start = [v.value.copy() for v in variables]
    want = []
    for feeds in calls:
        vals = evaluate(list(outs) + [u for _, u in updates], dict(zip(inputs, feeds)))
        for v, val in zip(variables, vals[len(outs):]):
            v.value = val
        want.append((vals[:len(outs)], [v.value.copy() for v in variables]))
    stored = 0
    for optimize, check in modes:
        for v, s in zip(variables, start):
            v.value = s.copy()
        f = gc.function(inputs, outs, updates=updates, optimize=optimize, check_numerics=check)
        for i, (feeds, (wo, wv)) in enumerate(zip(calls, want)):
            what = f"optimize={optimize} check={check} call {i} rows {len(feeds[0])}"
            got = f(*feeds)
            for j, (g, w) in enumerate(zip(got if isinstance(got, list) else [got], wo)):
                same(g, w, tol, f"{what} output {j}")
            for v, w in zip(variables, wv):
                same(v.value, w, tol, f"{what} {v.name}")
            names = transposed(f)
            stored += bool(names)
            for name in names:      # a reshape of an F-ordered buffer is a copy
                assert f"{name}.reshape" not in f.last_plan.source, (what, name)
    return stored


def product(dtype="float64", k=300, n=256, seed=0):
    """x (rows, k) @ W (k, n): stored transposed at 2 threads for 2^18 / (n k) < rows <= 64."""
    r = np.random.default_rng(seed)
    x = gc.placeholder((None, k), dtype, "x")
    w = gc.variable((r.standard_normal((k, n)) / np.sqrt(k)).astype(dtype), name="W")
    return x, x @ w


def row_calls(rows=(24, 24, 2, 65, 1, 64), k=300, dtype="float64", seed=1):
    r = np.random.default_rng(seed)
    return [[r.standard_normal((m, k)).astype(dtype)] for m in rows]


# every reader of a transposed value --------------------------------------------------------

def readers(h, x):
    """Outputs reading h (B, 256), a product stored transposed at 2 threads when every reader
    keeps it so: elementwise steps of its shape stored transposed too (a chain: ReLU,
    maximum, sigmoid), sums over one axis, products. The other kinds of step read t, made
    elementwise from another product of x (C order: a value read in C order by an
    elementwise step of its shape, a cast or a mask too, is not stored transposed,
    layout.settled)."""
    r = np.random.default_rng(3)
    v = gc.variable(r.standard_normal((256, 5)).astype(h.dtype))
    w2 = gc.variable(r.standard_normal((x.shape[1], 256)).astype(h.dtype) * 0.05)
    u = gc.relu(h) * 2.0 - 0.5
    t = gc.tanh(x @ w2)
    s = gc.maximum(u, u * 0.1) + gc.sigmoid(u)
    c = gc.cast(t, "float32" if h.dtype == np.float64 else "float64") * 3.0
    idx = gc.constant(np.array([0, 7, 3, 255]))
    return [
        gc.sum(u, axis=0), gc.sum(s, axis=1), s @ v, gc.transpose(x) @ u, gc.sum(c, axis=0),
        gc.reshape(t * 2.0, (-1,)), gc.reshape(t, (-1, 128)) + 1.0, gc.flatten(t - 1.0),
        t[:, 3:10] * 1.0, t[1:, 2:] + 1.0,
        gc.concat([t, t * 2.0], axis=1), gc.concat([t, gc.exp(t)], axis=0),
        gc.transpose(t) * 1.0, gc.transpose(t) @ x,
        gc.sum(t), gc.mean(t, axis=-1),
        gc.sum(t, axis=1, keepdims=True), t - gc.sum(t, axis=0, keepdims=True),
        gc.max(t, axis=0), gc.min(t, axis=1), gc.argmax(t, axis=1), gc.argmax(t, axis=0),
        gc.where(t > 0, t, t * 0.1), t > 0.5, gc.cast(t * 4.0, "int32"),
        gc.take(t, idx, axis=1), gc.softmax(t * 3.0), gc.log_softmax(t * 2.0),
        gc.softmax(t * 1.5, axis=0), gc.cumsum(t, axis=1), gc.flip(t, axis=0) * 1.0,
    ]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_transposed_values_read_by_every_kind_of_step_compile_as_eval(dtype, two):
    x, h = product(dtype)
    outs = readers(h, x)
    stored = run_as_eval([x], outs, row_calls(dtype=dtype),
                         tol=1e-9 if dtype == "float64" else 1e-4)
    assert stored


@pytest.mark.parametrize("rows,n,k", [(1, 512, 1024), (63, 256, 300), (64, 256, 300),
                                      (65, 256, 300), (8, 2048, 32), (32, 33, 2048),
                                      (48, 2048, 4), (64, 64, 4096)])
def test_products_at_the_edges_of_the_rule_and_their_gradients(rows, n, k, two):
    x, h = product(k=k, n=n, seed=rows)
    w = [v for v in gc.Graph([h]).nodes if v.op == "variable"][0]
    v = gc.variable(np.random.default_rng(2).standard_normal((n, 7)), name="V")
    a = gc.relu(h) - 0.1
    out = a @ v
    grads = gc.grad(gc.sum(out * out), [w, v])
    calls = row_calls((rows, rows, rows + 1, max(rows - 1, 1)), k=k)
    run_as_eval([x], [out, gc.sum(a, axis=0), gc.sum(a, axis=1), *grads], calls,
                modes=((True, False), (False, False)))


# trained networks ----------------------------------------------------------------------

ACTIVATIONS = {"relu": gc.relu, "tanh": gc.tanh, "sigmoid": gc.sigmoid, "gelu": gc.gelu,
               "silu": gc.silu, "elu": gc.elu, "leaky_relu": gc.leaky_relu,
               "softplus": gc.softplus, "abs": gc.abs, "sin": gc.sin, "erf": gc.erf,
               "clip": lambda v: gc.clip(v, -0.5, 0.5), "square": lambda v: gc.square(v) * 0.3,
               "where": lambda v: gc.where(v > 0, v, v * 0.1), "none": lambda v: v}


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_mlps_of_every_activation_train_as_eval(act, two):
    """Two hidden layers 256, 200 wide (both stored transposed at 24 rows), biases, a
    softmax cross-entropy head; SGD steps over batches 24, 24, 65, 24."""
    dtype = "float32" if act in ("relu", "gelu", "softplus") else "float64"
    r = np.random.default_rng(len(act))
    x = gc.placeholder((None, 300), dtype, "x")
    y = gc.placeholder((None,), "int64", "y")
    h, params, k = x, [], 300
    for n in (256, 200):
        params += [gc.variable((r.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)),
                   gc.variable((r.standard_normal(n) * 0.1).astype(dtype))]
        h, k = ACTIVATIONS[act](h @ params[-2] + params[-1]), n
    params.append(gc.variable((r.standard_normal((k, 10)) / np.sqrt(k)).astype(dtype)))
    loss = gc.mean(gc.softmax_cross_entropy(h @ params[-1], y))
    updates = [(p, p - 0.05 * g) for p, g in zip(params, gc.grad(loss, params))]
    calls = [[r.standard_normal((m, 300)).astype(dtype), r.integers(0, 10, m)]
             for m in (24, 24, 65, 24)]
    assert run_as_eval([x, y], [loss, gc.sum(h, axis=1)], calls, updates,
                       tol=1e-9 if dtype == "float64" else 3e-4,
                       modes=((True, False), (False, False)))


class Block(nn.Model):
    def __init__(self, act):
        super().__init__()
        self.a, self.b = nn.Dense(256, act), nn.Dense(256, "relu")
        self.norm, self.head = nn.LayerNorm(), nn.Dense(10)

    def forward(self, x, training):
        h = self.a(x)
        return self.head(h + self.b(self.norm(h)))


@pytest.mark.parametrize("opt", ["momentum", "adam", "rmsprop"])
def test_residual_nn_models_train_with_each_optimizer_as_eval(opt, two):
    model = Block("gelu")
    x = gc.placeholder((None, 300), "float64", "x")
    y = gc.placeholder((None,), "int64", "y")
    logits = model(x)
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    make = {"momentum": lambda: nn.optim.SGD(0.05, momentum=0.9),
            "adam": lambda: nn.optim.Adam(1e-3), "rmsprop": lambda: nn.optim.RMSProp(1e-3)}
    updates = list(make[opt]().updates(loss, model.params))
    r = np.random.default_rng(5)
    calls = [[r.standard_normal((m, 300)), r.integers(0, 10, m)] for m in (24, 24, 65, 24)]
    assert run_as_eval([x, y], [loss, logits], calls, updates,
                       modes=((True, False), (False, False)))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_attention_block_with_layer_norm_and_a_feed_forward_trains_as_eval(dtype, two):
    r = np.random.default_rng(11)
    x = gc.placeholder((None, 256), dtype, "x")       # tokens (T, D)
    ws = [gc.variable((r.standard_normal((256, 256)) / 16).astype(dtype), name=f"W{k}")
          for k in range(4)]
    q, k, v = x @ ws[0], x @ ws[1], x @ ws[2]
    o = gc.softmax(q @ gc.transpose(k) * (1 / 16.0)) @ v @ ws[3] + x
    z = o - gc.mean(o, axis=1, keepdims=True)
    ln = z / gc.sqrt(gc.mean(z * z, axis=1, keepdims=True) + 1e-5)
    out = gc.gelu(ln @ ws[0]) @ ws[1] + ln
    loss = gc.mean(out * out)
    updates = [(w, w - 0.01 * g) for w, g in zip(ws, gc.grad(loss, ws))]
    calls = [[r.standard_normal((m, 256)).astype(dtype)] for m in (24, 24, 64, 65, 1, 33)]
    assert run_as_eval([x], [loss, out], calls, updates,
                       tol=1e-9 if dtype == "float64" else 3e-4)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gemm_updates_read_transposed_gradients_and_activations(dtype, two):
    """W -= x.T @ g', V -= t.T @ g', b -= sum(g', 0) with t = tanh(x @ W) and g' = g * (1 -
    t^2) stored transposed: BLAS calls over F-ordered operands into C-ordered variables."""
    r = np.random.default_rng(12)
    x, g = gc.placeholder((None, 300), dtype, "x"), gc.placeholder((None, 256), dtype, "g")
    w = gc.variable(r.standard_normal((300, 256)).astype(dtype), name="W")
    v = gc.variable(r.standard_normal((256, 256)).astype(dtype), name="V")
    b = gc.variable(r.standard_normal(256).astype(dtype), name="b")
    t = gc.tanh(x @ w)
    gt = g * (1 - t * t)
    updates = [(w, w - 0.01 * (gc.transpose(x) @ gt)), (v, v - 0.01 * (gc.transpose(t) @ gt)),
               (b, b - 0.1 * gc.sum(gt, axis=0))]
    calls = [[r.standard_normal((m, 300)).astype(dtype), r.standard_normal((m, 256))
              .astype(dtype)] for m in (24, 24, 65, 24)]
    assert run_as_eval([x, g], [gc.sum(t, axis=1)], calls, updates,
                       tol=1e-8 if dtype == "float64" else 1e-3)


def test_a_float16_value_cast_from_a_transposed_product_and_mixed_dtypes(two):
    r = np.random.default_rng(13)
    x = gc.placeholder((None, 300), "float16", "x")
    w = gc.variable((r.standard_normal((300, 256)) / 17).astype("float16"))
    u = gc.variable((r.standard_normal((256, 300)) / 16).astype("float32"))
    v = gc.variable((r.standard_normal((300, 512)) / 16).astype("float32"))
    h = gc.relu(x @ w)
    z = gc.tanh(gc.cast(h, "float32") @ u) @ v
    outs = [gc.sum(h), gc.sum(z * z, axis=1), gc.cast(z, "float64") * 2.0]
    assert run_as_eval([x], outs, row_calls((24, 24, 2), dtype="float16"), tol=2e-2)


def test_a_scan_body_plan_stores_its_products_transposed_and_runs_as_eval(two):
    r = np.random.default_rng(14)
    xs = gc.placeholder((None, None, 300), "float64", "xs")         # (T, B, K)
    h0 = gc.placeholder((None, 256), "float64", "h0")
    w = gc.variable(r.standard_normal((300, 256)) / 17, name="W")
    u = gc.variable(r.standard_normal((256, 256)) / 16, name="U")

    def step(h, xt):
        a = gc.tanh(xt @ w + h @ u)
        z = gc.relu(a @ u) * 0.5 + a
        return z, gc.sum(z * a, axis=1)
    last, ys = gc.scan(step, h0, xs)
    loss = gc.mean(last ** 2) + gc.mean(ys)
    updates = [(p, p - 0.05 * g) for p, g in zip([w, u], gc.grad(loss, [w, u]))]
    calls = [[r.standard_normal((3, m, 300)), r.standard_normal((m, 256))]
             for m in (24, 24, 65, 1)]
    run_as_eval([xs, h0], [loss, last], calls, updates)
    f = gc.function([xs, h0], [loss])
    f(*calls[0])
    bodies = [s.fn for s in f.last_plan.loops.values()]
    assert bodies and any(transposed(b) for b in bodies)     # the plan inside the plan


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_channels_last_conv_pool_with_a_transposed_dense_head_trains_as_eval(dtype, two):
    """Both layouts in one plan: conv + bias + ReLU + max-pool stored channels-last, flattened
    (a reshape: C order), its dense layer (24 x 128 @ 128 x 300) stored transposed."""
    r = np.random.default_rng(19)
    x = gc.placeholder((None, 3, 8, 8), dtype, "x")
    y = gc.placeholder((None,), "int64", "y")
    ps = [gc.variable((r.standard_normal((8, 3, 3, 3)) * .3).astype(dtype), name="w"),
          gc.variable(np.zeros((1, 8, 1, 1), dtype), name="b"),
          gc.variable((r.standard_normal((128, 300)) / 11).astype(dtype), name="W1"),
          gc.variable((r.standard_normal((300, 10)) / 17).astype(dtype), name="W2")]
    q = gc.max_pool2d(gc.relu(gc.conv2d(x, ps[0], padding=1) + ps[1]), 2)
    h = gc.relu(gc.flatten(q) @ ps[2])
    loss = gc.mean(gc.softmax_cross_entropy(h @ ps[3], y))
    updates = [(p, p - 0.05 * g) for p, g in zip(ps, gc.grad(loss, ps))]
    calls = [[r.standard_normal((m, 3, 8, 8)).astype(dtype), r.integers(0, 10, m)]
             for m in (24, 24, 65, 7)]
    assert run_as_eval([x, y], [loss], calls, updates,
                       tol=1e-9 if dtype == "float64" else 3e-4,
                       modes=((True, False), (False, False)))


def test_gradients_of_gradients_and_empty_batches_over_transposed_products(two):
    r = np.random.default_rng(20)
    x = gc.placeholder((None, 300), "float64", "x")
    w = gc.variable(r.standard_normal((300, 256)) / 17, name="W")
    v = gc.variable(r.standard_normal((256, 256)) / 16, name="V")
    z = gc.softplus(gc.tanh(x @ w) @ v)
    loss = gc.mean(z * z)
    gw, gv = gc.grad(loss, [w, v])
    penalty = gc.sum(gw * gw) + gc.sum(gv * gv)
    gx = gc.grad(loss, [x])[0]
    outs = [penalty, *gc.grad(penalty, [w, v]), gx, gc.grad(gc.sum(gx * gx), [w])[0]]
    assert run_as_eval([x], outs, row_calls((24, 24, 65, 2), seed=21),
                       modes=((True, False), (False, False)))
    h = gc.relu(x @ w) * 2.0
    updates = [(w, w - 0.01 * gc.grad(gc.sum(h * h), [w])[0])]
    assert run_as_eval([x], [gc.sum(h, axis=0), gc.sum(h, axis=1)],
                       row_calls((24, 0, 24, 0, 1), seed=22), updates,
                       modes=((True, False),))


# feeds, variables, thread counts, profile, export ---------------------------------------

def layer_graph(dtype="float64"):
    r = np.random.default_rng(15)
    x, c = gc.placeholder((None, 300), dtype, "x"), gc.placeholder((None, 256), dtype, "c")
    w = gc.variable((r.standard_normal((300, 256)) / 17).astype(dtype), name="W")
    v = gc.variable((r.standard_normal((256, 256)) / 16).astype(dtype), name="V")
    h = gc.tanh(x @ w + c)
    z = gc.relu(h @ v + c * 2.0) + h
    loss = gc.mean(z * z)
    updates = [(p, p - 0.1 * g) for p, g in zip([w, v], gc.grad(loss, [w, v]))]
    return [x, c], [loss, gc.sum(z, axis=0)], updates, [w, v]


def odd_layouts(rng, rows, kind, dtype="float64"):
    a, b = rng.standard_normal((rows, 300)), rng.standard_normal((rows, 256))
    if kind == "F":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    elif kind == "strided":
        a = rng.standard_normal((rows, 600))[:, ::2]
        b = rng.standard_normal((2 * rows, 256))[::2]
    return [a.astype(dtype), b.astype(dtype)]


def test_feeds_and_variables_in_other_layouts_meet_transposed_buffers(two):
    inputs, outs, updates, (w, v) = layer_graph()
    r = np.random.default_rng(16)
    calls = [odd_layouts(r, m, kind) for m, kind in
             [(24, "C"), (24, "F"), (24, "strided"), (65, "F"), (24, "C")]]
    assert run_as_eval(inputs, outs, calls, updates, modes=((True, False), (False, False)))
    f = gc.function(inputs, outs, updates=updates)
    for feeds in calls:         # variables assigned F-ordered arrays between calls
        w.value, v.value = np.asfortranarray(w.value), v.value.T.copy().T
        want = evaluate(outs + [u for _, u in updates], dict(zip(inputs, feeds)))
        got = f(*feeds)
        for g, value in zip(got + [w.value, v.value], want):
            np.testing.assert_allclose(g, value, rtol=1e-9, atol=1e-9)


def test_plans_made_at_other_thread_counts_in_one_function(monkeypatch):
    """Each plan keeps the layouts of the thread count it was made at, whichever plan the
    next call picks: 2, 1, 2 threads over batch sizes 24, 32, 40 and back."""
    inputs, outs, updates, params = layer_graph("float32")
    f = gc.function(inputs, outs, updates=updates)
    r = np.random.default_rng(17)
    for threads, rows in [(2, 24), (1, 32), (2, 40), (1, 24), (2, 32), (1, 40)]:
        monkeypatch.setattr(blas, "threads", lambda t=threads: t)
        feeds = odd_layouts(r, rows, "C", "float32")
        want = evaluate(outs + [u for _, u in updates], dict(zip(inputs, feeds)))
        got = f(*feeds)
        for g, value in zip(got + [p.value for p in params], want):
            np.testing.assert_allclose(g, value, rtol=1e-4, atol=1e-5)
        assert bool(transposed(f)) == (rows != 32), (threads, rows)   # made at 2, 1, 2


def test_profile_source_and_export_of_a_transposed_plan(two, tmp_path):
    from tests.test_export import check_export
    inputs, outs, updates, params = layer_graph("float32")
    r = np.random.default_rng(18)
    calls = [odd_layouts(r, 24, "C", "float32") for _ in range(4)]
    f = gc.function(inputs, outs, updates=updates)
    start = [p.value.copy() for p in params]
    want = []
    for feeds in calls[:2]:
        vals = evaluate(outs + [u for _, u in updates], dict(zip(inputs, feeds)))
        for p, value in zip(params, vals[len(outs):]):
            p.value = value
        want.append([p.value.copy() for p in params])
    for p, s in zip(params, start):
        p.value = s
    f(*calls[0])
    table = f.profile(*calls[1])        # runs the updates, with a timer per step
    assert "matmul" in str(table) and "total" in str(table)
    for p, value in zip(params, want[1]):
        np.testing.assert_allclose(p.value, value, rtol=1e-4, atol=1e-5)
    assert transposed(f) and "[stored transposed]" in f.source
    check_export(f, [], calls[2:], tmp_path, params, rtol=1e-4)


# random graphs --------------------------------------------------------------------------

def random_graph(seed: int):
    """Products of random widths (a weight or a transposed one, a bias or not), activations,
    sums and products of values of one width, and row-wise steps (softmax, normalizing by
    a row's sum, a column's sum, reshapes and transposes there and back, halves
    concatenated, cumsum, masks, one-hot argmax, gathers, a reshape to 3-D and a slice of
    it); a loss reading each, SGD on every weight; batch sizes from both sides of the rule.
    """
    r = np.random.default_rng(2900 + seed)
    dtype = str(r.choice(["float64", "float32"]))
    widths = [int(c) for c in r.choice([64, 96, 200, 256, 300, 512], size=3, replace=False)]
    k0 = int(r.choice(widths))
    x = gc.placeholder((None, k0), dtype, "x")
    pool, params = {k0: [x]}, []

    def var(shape, fan):
        params.append(gc.variable((r.standard_normal(shape) / np.sqrt(fan)).astype(dtype),
                                  name=f"p{len(params)}"))
        return params[-1]

    def pick():
        w = int(r.choice(list(pool)))
        return w, pool[w][int(r.integers(len(pool[w])))]

    def add(v):
        pool.setdefault(int(v.shape[1]), []).append(v)

    def product():
        w, h = pick()
        n = int(r.choice(widths))
        y = h @ gc.transpose(var((n, w), w)) if r.random() < 0.3 else h @ var((w, n), w)
        add(y + var((n,), 10) if r.random() < 0.5 else y)

    def activation():
        f = [gc.relu, gc.tanh, gc.sigmoid, gc.gelu, gc.silu, gc.elu, gc.softplus, gc.abs,
             lambda v: gc.clip(v, -1.0, 1.0), lambda v: v * 0.5 + 1.0, gc.leaky_relu,
             lambda v: gc.where(v > 0, v, v * 0.1), lambda v: gc.maximum(v, 0.2 * v),
             lambda v: gc.square(v) * 0.1][int(r.integers(14))]
        add(f(pick()[1]))

    def binary():
        w = int(r.choice([k for k in pool if len(pool[k]) > 1] or list(pool)))
        a, b = r.choice(len(pool[w]), 2)
        op = [gc.add, gc.sub, gc.mul, lambda p, q: p * gc.sigmoid(q)][int(r.integers(4))]
        add(op(pool[w][a], pool[w][b]))

    def rowwise():
        w, v = pick()
        f = [gc.softmax, gc.log_softmax, lambda v: v - gc.mean(v, axis=1, keepdims=True),
             lambda v: v / (gc.sum(v * v, axis=1, keepdims=True) + 1.0),
             lambda v: v * gc.sum(v, axis=0, keepdims=True) * 0.01,
             lambda v: gc.reshape(gc.reshape(v, (-1,)) * 1.0, (-1, w)),
             lambda v: gc.transpose(gc.transpose(v) * 2.0),
             lambda v: gc.concat([v[:, :w // 2], v[:, w // 2:] * 2.0], axis=1),
             lambda v: gc.flip(v, axis=1), lambda v: gc.cumsum(v, axis=1) * 0.01,
             lambda v: gc.cast(v > 0, dtype) * v,
             lambda v: gc.one_hot(gc.argmax(v, axis=1), w, dtype=dtype) + v,
             lambda v: gc.take(v, gc.constant(np.arange(w)[::-1].copy()), axis=1),
             lambda v: gc.reshape(v, (-1, 2, w // 2))[:, 0, :] * 1.0][int(r.integers(14))]
        add(f(v))

    makers = [product] * 4 + [activation] * 3 + [binary] * 2 + [rowwise] * 3
    product()
    for _ in range(int(r.integers(4, 12))):
        makers[int(r.integers(len(makers)))]()
    terms = [gc.mean(gc.tanh(v) * gc.constant(r.standard_normal(w).astype(dtype)))
             for w, vals in pool.items() for v in vals if v is not x]
    loss = terms[0]
    for t in terms[1:]:
        loss = loss + t
    updates = [(p, p - 0.05 * g) for p, g in zip(params, gc.grad(loss, params))]
    rows = [int(v) for v in r.choice([1, 2, 24, 32, 40, 63, 64, 65], size=2, replace=False)]
    calls = [[r.standard_normal((m, k0)).astype(dtype)] for m in (rows[0], rows[0], rows[1])]
    return [x], [loss, pick()[1]], updates, calls, dtype


@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_random_graphs_around_transposed_products_train_as_eval(seed, two):
    inputs, outs, updates, calls, dtype = random_graph(seed)
    run_as_eval(inputs, outs, calls, updates, tol=1e-8 if dtype == "float64" else 3e-4,
                modes=((True, False), (False, False)))


# at two BLAS threads for real, in a fresh process -----------------------------------------

SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, "tests")
import test_probe29 as t
from graphc.runtime import blas
assert blas.threads() == 2, blas.threads()
x, h = t.product("float32")
print(t.run_as_eval([x], t.readers(h, x), t.row_calls(dtype="float32"), tol=1e-4))
inputs, outs, updates, params = t.layer_graph("float32")
calls = [t.odd_layouts(np.random.default_rng(3), m, "C", "float32") for m in (24, 24, 65)]
print(t.run_as_eval(inputs, outs, calls, updates, tol=1e-4))
for seed in range(4):
    inputs, outs, updates, calls, dtype = t.random_graph(seed)
    t.run_as_eval(inputs, outs, calls, updates, tol=1e-8 if dtype == "float64" else 3e-4,
                  modes=((True, False),))
print("done")
"""


def test_at_two_blas_threads_for_real_compiled_equals_eval():
    """OpenBLAS at 2 threads (as CI runs): the rule decides from blas.threads() itself."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2")
    run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    if "blas.threads()" in run.stderr and blas.GET_THREADS is None:
        pytest.skip("NumPy's BLAS does not say its thread count")
    assert run.returncode == 0, run.stderr[-3000:]
    first, second, last = run.stdout.split()
    assert int(first) > 0 and int(second) > 0 and last == "done"
