"""push_scalar_factors: a constant factor moves down linear chains, values stay the same."""
from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.passes import scalars as S
from graphc.ir import Graph, evaluate
from graphc.passes import optimize, push_scalar_factors, simplify, stabilize
from tests.test_passes import listing, same_values

RNG = np.random.default_rng(3)


def rand(*shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def test_learning_rate_moves_to_the_gradient_seed():
    x = gc.placeholder((None, 5), "float32", name="x")
    w = gc.variable(rand(5, 3, dtype=np.float32), name="w")
    loss = gc.mean(gc.sum(gc.relu(x @ w), axis=1))
    (gw,) = gc.grad(loss, [w])
    graph = simplify(Graph([loss], [(w, w - 0.1 * gw)]))
    got = push_scalar_factors(graph)
    assert "\n".join(str(got).split("\n")[11:]) == listing("""
        %11 = constant(0.1)  # () float32
        %12 = div(%11, %6)  # () float32  [grad of %7]
        %13 = broadcast_to(%12, %4)  # (?,) float32  [grad of %5]
        %14 = reshape(%13, %2, keepdims_of=(1,))  # (?, 1) float32  [grad of %4]
        %15 = broadcast_to(%14, %2)  # (?, 3) float32  [grad of %4]
        %16 = where(%10, %15, %9)  # (?, 3) float32  [grad of %3]
        %17 = matmul(%8, %16)  # (5, 3) float32  [grad of %2]
        %18 = sub(%1, %17)  # (5, 3) float32
        return %7
        update %1 <- %18""")
    same_values(graph, got, {x: rand(4, 5, dtype=np.float32)})


def test_a_value_another_user_reads_unscaled_stays_put():
    x = gc.placeholder((4, 3), "float64", name="x")
    w = gc.variable(rand(3, 2), name="w")
    g = gc.transpose(x) @ gc.tanh(x @ w)             # (3, 2), also an output
    graph = Graph([g], [(w, w - 0.5 * g)])
    assert push_scalar_factors(graph) is graph       # g is kept: the product stays


def test_scaling_is_not_pushed_into_a_larger_tensor():
    x = gc.placeholder((50, 40), "float64", name="x")
    s = gc.sum(gc.tanh(x), axis=0)                    # (40,): scaling the (50, 40) is worse
    graph = Graph([s * 3.0])
    assert push_scalar_factors(graph) is graph


def test_a_shared_value_moves_only_when_every_user_agrees():
    x = gc.placeholder((4, 8), "float64", name="x")
    v = gc.variable(rand(8, 3), name="v")
    h = gc.tanh(x) @ v                                 # (4, 3) read by two scaled products
    a, b = gc.sum(h, axis=0) * 0.25, gc.transpose(h) @ x * 0.25     # (3,) and (3, 8)
    graph = Graph([a, b])
    got = push_scalar_factors(graph)                   # one (4, 3) product, not 3 + 24
    assert [n.inputs[0] for n in got.nodes if n.op == "mul"] == [h]
    same_values(graph, got, {x: rand(4, 8)})
    graph2 = Graph([a, b, h])                          # h itself is an output: no move
    assert sum(n.op == "mul" for n in push_scalar_factors(graph2).nodes) == 2


def test_mlp_step_updates_are_one_subtract():
    x = gc.placeholder((None, 6), "float32", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    w1, w2 = gc.variable(rand(6, 5, dtype=np.float32)), gc.variable(rand(5, 3, dtype=np.float32))
    loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ w1) @ w2, y))
    g1, g2 = gc.grad(loss, [w1, w2])
    graph = Graph([loss], [(w1, w1 - 0.1 * g1), (w2, w2 - 0.1 * g2)])
    opt = optimize(graph)
    assert [u.op for _, u in opt.updates] == ["sub", "sub"]
    feeds = {x: rand(7, 6, dtype=np.float32), y: RNG.integers(0, 3, 7)}
    same_values(graph, opt, feeds)


# random graphs: linear chains with shared values, scaled and unscaled users -----------

LINEAR = [lambda a, b: a @ b, lambda a, b: gc.transpose(gc.transpose(a) @ b),
          lambda a, b: gc.where(gc.greater(b, 0.0), a, 0.0),
          lambda a, b: a * b, lambda a, b: a / (1.0 + b * b), lambda a, b: -a,
          lambda a, b: gc.broadcast_to(gc.sum(a, axis=0, keepdims=True), (4, 4)),
          lambda a, b: gc.reshape(gc.reshape(a, (2, 8)), (4, 4))]


def random_graph(choices, scaled, outputs) -> tuple:
    x = gc.placeholder((4, 4), "float64", name="x")
    v = gc.variable(rand(4, 4), name="v")
    pool = [x, v, gc.tanh(x)]
    for kind, i, j in choices:
        a, b = pool[i % len(pool)], pool[j % len(pool)]
        pool.append(LINEAR[kind](a, b) if kind < len(LINEAR) else gc.tanh(a + b))
    outs = [pool[i % len(pool)] * c for i, c in scaled] + pool[len(pool) - outputs:]
    return x, Graph(outs[:-1], [(v, v - outs[-1])])


GRAPHS = (st.lists(st.tuples(st.integers(0, 9), st.integers(0, 30), st.integers(0, 30)),
                   min_size=1, max_size=10),
          st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.1, -2.0, 0.5, 0.1])),
                   min_size=1, max_size=4),
          st.integers(0, 3))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(*GRAPHS)
def test_stays_put_only_where_the_full_analysis_moves_nothing(choices, scaled, outputs):
    _, graph = random_graph(choices, scaled, outputs)
    for group in S.sinks_by_factor(graph).values():
        with mock.patch.object(S, "stays_put", return_value=False):
            moved = S.push_one(graph, group) is not graph
        assert not (moved and S.stays_put(graph, group))


def test_stays_put_on_the_scale_benchmark_graphs():
    # bench/scale.py's chain and wide graphs: nothing moves, and the cheap test shows it
    x = gc.placeholder((None, 4), name="x")
    ws = [gc.variable(np.full(4, 0.5, np.float32), name=f"w{i}") for i in range(6)]
    h = x
    for w in ws:
        h = gc.tanh(h * w) + 0.5 * h
    ys = [gc.tanh(x * w) for w in ws]
    wide = ((ys[0] + ys[1]) + (ys[2] + ys[3])) + (ys[4] + ys[5])
    for y in (h, wide):
        loss = gc.mean(y * y)
        g = Graph([loss], [(w, w - 0.01 * d) for w, d in zip(ws, gc.grad(loss, ws))])
        g = optimize(g, passes=[stabilize, simplify])
        groups = list(S.sinks_by_factor(g).values())
        assert groups and all(S.stays_put(g, group) for group in groups)
        assert push_scalar_factors(g) is g


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 30), st.integers(0, 30)),
                min_size=1, max_size=10),
       st.lists(st.tuples(st.integers(0, 30), st.sampled_from([0.1, -2.0, 0.5])),
                min_size=1, max_size=4),
       st.integers(0, 3))
def test_random_graphs_keep_their_values(choices, scaled, outputs):
    x, graph = random_graph(choices, scaled, outputs)
    got = push_scalar_factors(graph)
    same_values(graph, got, {x: rand(4, 4)}, rtol=1e-9, atol=1e-9)
    sizes = lambda g: sum(n.op == "mul" and any(i.op == "constant" for i in n.inputs)  # noqa
                          for n in g.nodes)
    assert sizes(got) <= sizes(graph) + len(scaled)    # never a runaway of new products
    want = evaluate(list(graph.outputs), {x: np.ones((4, 4))})
    assert all(w.shape == g.shape for w, g in zip(want, got.outputs))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("lr, decay, pool", [(0.1, 0.0, "max"), (-2.0, 1e-3, "avg"),
                                             (1e3, 0.5, "max")])
def test_factors_through_conv_pool_and_cross_entropy_gradients(dtype, lr, decay, pool):
    """A CNN step's factors (learning rate, weight decay, the loss's 0.5, a / 3) moved through
    conv2d_grad_*, max/avg_pool2d_grad and the softmax-CE gradient: the optimized step gives
    the unoptimized one's loss and weights (negative and large factors too)."""
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((3, 3, 8, 8)).astype(dtype)
    yv = rng.integers(0, 4, 3)
    inits = [rng.standard_normal((8, 3, 3, 3)) * 0.3, rng.standard_normal((72, 4)) * 0.3]
    results = []
    for opt in (True, False):
        x = gc.placeholder((None, 3, 8, 8), dtype, name="x")
        y = gc.placeholder((None,), "int64", name="y")
        w1, w2 = (gc.variable(w.astype(dtype)) for w in inits)
        h = gc.relu(gc.conv2d(x, w1, padding=1))
        h = gc.max_pool2d(h, 3, 2) if pool == "max" else gc.avg_pool2d(h, 3, 2)
        loss = gc.mean(gc.softmax_cross_entropy(gc.reshape(h, (-1, 72)) @ w2, y)) * 0.5 \
            + decay * gc.sum(w2 * w2)
        g1, g2 = gc.grad(loss, [w1, w2])
        step = gc.function([x, y], loss, optimize=opt, updates=[
            (w1, w1 - lr * g1), (w2, w2 * (1 - lr * decay) - lr * g2 / 3.0)])
        results.append([step(xv, yv), step(xv, yv), w1.value.copy(), w2.value.copy()])
    tol = 1e-9 if dtype == "float64" else 1e-4
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))
