"""gc.scan: values against the loop unrolled by hand, gradients against finite differences
(float64), compiled against eval, optimized against unoptimized, save/load."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import Graph, evaluate
from tests.helpers import leaf_grad, numeric_grad

rng = np.random.default_rng(0)


def f64(*shape):
    return rng.standard_normal(shape)


def check_grads(cost, leaves, feeds, rtol=1e-5, atol=1e-7):
    """Gradients of cost w.r.t. placeholders and variables vs central differences."""
    grads = gc.grad(cost, leaves)
    for leaf, g in zip(leaves, grads):
        got = g.eval(feeds)
        want = leaf_grad(cost, leaf, feeds)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=leaf.label())
    return grads


def same_everywhere(inputs, outputs, feeds_list):
    """eval == compiled (optimize False / True), several calls of one Function."""
    fns = [gc.function(inputs, outputs, optimize=o) for o in (False, True)]
    for feeds in feeds_list:
        want = evaluate(outputs, dict(zip(inputs, feeds)))
        for f in fns:
            for got, w in zip(f(*feeds), want):
                np.testing.assert_allclose(got, w, rtol=1e-10, atol=1e-12)


def rnn(h0, xs, W, U, reverse=False):
    def step(h, x):
        h = gc.tanh(h @ W + x @ U)
        return h, h * h
    return gc.scan(step, h0, xs, reverse=reverse)


def test_values_match_the_loop_unrolled_by_hand():
    xs, h0 = gc.placeholder((6, 2, 3), "float64", "xs"), gc.placeholder((2, 4), "float64")
    W, U = gc.variable(f64(4, 4) * 0.5, name="W"), gc.variable(f64(3, 4), name="U")
    for reverse in (False, True):
        hT, ys = rnn(h0, xs, W, U, reverse)
        assert hT.shape == (2, 4) and ys.shape == (6, 2, 4)
        xv, hv = f64(6, 2, 3), f64(2, 4)
        h, outs = hv, [None] * 6
        for t in (reversed(range(6)) if reverse else range(6)):
            h = np.tanh(h @ W.value + xv[t] @ U.value)
            outs[t] = h * h
        np.testing.assert_allclose(hT.eval({xs: xv, h0: hv}), h, rtol=1e-12)
        np.testing.assert_allclose(ys.eval({xs: xv, h0: hv}), np.stack(outs), rtol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_through_time_match_finite_differences(reverse):
    xs, h0 = gc.placeholder((5, 2, 3), "float64", "xs"), gc.placeholder((2, 4), "float64")
    W, U = gc.variable(f64(4, 4) * 0.5, name="W"), gc.variable(f64(3, 4), name="U")
    hT, ys = rnn(h0, xs, W, U, reverse)
    cost = gc.sum(ys * gc.constant(f64(5, 2, 4))) + gc.sum(hT * hT)
    feeds = {xs: f64(5, 2, 3), h0: f64(2, 4)}
    check_grads(cost, [W, U, xs, h0], feeds)


def test_carry_tuples_integer_carry_and_captured_computed_value():
    xs = gc.placeholder((4, 3), "float64", "xs")
    a = gc.placeholder((3,), "float64", "a")
    scale = gc.exp(a) * 0.5                      # computed outside, read inside
    init = (gc.constant(np.zeros(3)), gc.constant(np.ones(3)), gc.constant(np.int64(0)))

    def step(carry, x):
        s, p, k = carry
        return (s + x * scale, p * gc.sin(x) if hasattr(gc, "sin") else p * gc.tanh(x),
                k + 1), [s, p]
    (s, p, k), (ss, ps) = gc.scan(step, init, xs)
    feeds = {xs: f64(4, 3), a: f64(3)}
    assert int(k.eval(feeds)) == 4
    cost = gc.sum(s * p) + gc.sum(ss * ps)
    check_grads(cost, [xs, a], feeds)
    same_everywhere([xs, a], [s, p, k, ss, ps, *gc.grad(cost, [xs, a])],
                    [[f64(4, 3), f64(3)], [f64(4, 3), f64(3)]])


def test_length_known_only_at_run_time_and_two_lengths_in_one_function():
    xs = gc.placeholder((None, 3), "float64", "xs")
    w = gc.variable(f64(3), name="w")
    total, ys = gc.scan(lambda c, x: (c + gc.sum(x * w), c), gc.constant(np.float64(0)), xs)
    assert ys.shape == (None,)
    cost = total + gc.sum(ys * ys)
    check_grads(cost, [w, xs], {xs: f64(7, 3)})
    (gw,) = gc.grad(cost, [w])
    same_everywhere([xs], [total, ys, gw], [[f64(7, 3)], [f64(2, 3)], [f64(7, 3)]])


def test_no_sequences_with_length_and_nested_scan():
    x = gc.placeholder((3,), "float64", "x")

    def outer(c, _):
        inner, _ = gc.scan(lambda d, _: (gc.tanh(d * x + 0.1), None), c, length=3)
        return inner, gc.sum(inner)
    c, ys = gc.scan(outer, x, length=2)
    feeds = {x: f64(3)}
    v = feeds[x]
    for _ in range(6):
        v = np.tanh(v * feeds[x] + 0.1)
    np.testing.assert_allclose(c.eval(feeds), v, rtol=1e-12)
    cost = gc.sum(c) + gc.sum(ys)
    check_grads(cost, [x], feeds)
    same_everywhere([x], [c, ys, gc.grad(cost, x)], [[f64(3)], [f64(3)]])


def test_second_order_hessian_vector_product():
    xs = gc.placeholder((4, 2), "float64", "xs")
    w = gc.placeholder((2,), "float64", "w")
    h, _ = gc.scan(lambda h, x: (gc.tanh(h * w + x), None), gc.constant(np.zeros(2)), xs)
    cost = gc.sum(h * h)
    (gw,) = gc.grad(cost, [w])
    v = gc.constant(np.array([0.3, -0.7]))
    hvp = gc.grad(gc.sum(gw * v), [w])[0]
    feeds = {xs: f64(4, 2), w: f64(2)}
    want = (numeric_grad(lambda u: float(gc.sum(gw * v).eval({**feeds, w: u})),
                         feeds[w].copy()))
    np.testing.assert_allclose(hvp.eval(feeds), want, rtol=1e-5, atol=1e-8)


def test_bad_steps_are_clear_errors():
    xs = gc.placeholder((4, 3), "float64", "xs")
    with pytest.raises(gc.GraphcError, match="returns carry 0 as .*entered as"):
        gc.scan(lambda c, x: (gc.sum(c * x), c), gc.constant(np.zeros(3)), xs)
    with pytest.raises(gc.GraphcError, match="pair"):
        gc.scan(lambda c, x: c, gc.constant(np.zeros(3)), xs)
    with pytest.raises(gc.GraphcError, match="length"):
        gc.scan(lambda c, x: (c, c), gc.constant(np.zeros(3)))
    with pytest.raises(gc.GraphcError, match="test_scan.py"):
        gc.scan(lambda c, x: (c, c), gc.constant(np.zeros(3)), [xs, xs[:2]])


def test_save_and_load_round_trip(tmp_path):
    xs, h0 = gc.placeholder((5, 2, 3), "float64", "xs"), gc.placeholder((2, 4), "float64")
    W, U = gc.variable(f64(4, 4) * 0.5, name="W"), gc.variable(f64(3, 4), name="U")
    hT, ys = rnn(h0, xs, W, U)
    cost = gc.sum(ys) + gc.sum(hT)
    outs = [cost, *gc.grad(cost, [W, U])]
    gc.save(outs, tmp_path / "rnn")
    back = gc.load(tmp_path / "rnn")
    feeds = [f64(5, 2, 3), f64(2, 4)]
    phs = {n.name: n for n in Graph(back).placeholders}
    got = evaluate(back, {phs["xs"]: feeds[0], Graph(back).placeholders[0]
                          if Graph(back).placeholders[0].name != "xs"
                          else Graph(back).placeholders[1]: feeds[1]})
    want = evaluate(outs, {xs: feeds[0], h0: feeds[1]})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


# recurrent layers ---------------------------------------------------------------------------

def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def reference(cls, params, xv, units):
    """PyTorch's formulas, by hand, one step at a time."""
    W, U, b1, b2 = params
    h = np.zeros((xv.shape[0], units))
    c = np.zeros_like(h)
    outs = []
    for t in range(xv.shape[1]):
        zx, zh = xv[:, t] @ W + b1, h @ U + b2
        blocks = lambda z: [z[:, k * units:(k + 1) * units] for k in range(z.shape[1] // units)]  # noqa
        if cls is nn.SimpleRNN:
            h = np.tanh(zx + zh)
        elif cls is nn.LSTM:
            i, f, g, o = blocks(zx + zh)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            (xr, xz, xn), (hr, hz, hn) = blocks(zx), blocks(zh)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            h = (1 - z) * np.tanh(xn + r * hn) + z * h
        outs.append(h)
    return np.stack(outs, 1), h, c


@pytest.mark.parametrize("cls", ["SimpleRNN", "LSTM", "GRU"])
def test_recurrent_layers_follow_pytorch_formulas_and_gradients(cls):
    cls = getattr(nn, cls)
    x = gc.placeholder((None, 5, 3), "float64", "x")
    layer = cls(4, return_sequences=True, return_state=True, seed=3)
    out, *state = layer(x)
    assert out.shape == (None, 5, 4) and len(state) == (2 if cls is nn.LSTM else 1)
    xv = f64(2, 5, 3)
    seq, h, c = reference(cls, [p.value for p in layer.params], xv, 4)
    np.testing.assert_allclose(out.eval({x: xv}), seq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state[0].eval({x: xv}), h, rtol=1e-10, atol=1e-12)
    if cls is nn.LSTM:
        np.testing.assert_allclose(state[1].eval({x: xv}), c, rtol=1e-10, atol=1e-12)
    cost = gc.sum(out * gc.constant(f64(5, 4))) + gc.sum(state[0])
    grads = check_grads(cost, layer.params + [x], {x: xv})
    same_everywhere([x], [cost, *grads], [[xv], [f64(3, 5, 3)]])
    last = cls(4, seed=3)(x)
    assert last.shape == (None, 4)


def test_rnn_example_learns_digits_row_by_row_and_a_character_grammar():
    from tests.test_examples import number_after, run
    out = run("rnn_digits.py", "--epochs", "4", "--char-epochs", "4", "--quiet")
    assert number_after("test accuracy", out.replace("%", "")) > 85
    assert number_after("next-character accuracy", out.replace("%", "")) > 60


def test_passes_reach_into_bodies_prune_saved_carries_and_unroll_short_loops():
    xs = gc.placeholder((None, 3), "float64", "xs")
    w = gc.variable(f64(3), name="w")
    h, ys = gc.scan(lambda h, x: (gc.tanh(h * w + x) * 1.0 + 0.0, gc.log(gc.exp(h))),
                    gc.constant(np.zeros(3)), xs)
    opt, report = gc.optimize([h, ys], report=True)
    (loop,) = [n for n in opt.nodes if n.op == "scan"]
    body_ops = [n.op for n in loop.attrs["body"].nodes if n.inputs]
    assert "log" not in body_ops and "exp" not in body_ops        # simplified inside
    assert report.rules["prune_loops"] == 1 and loop.attrs["saves"] is False
    (gw,) = gc.grad(gc.sum(ys) + gc.sum(h), [w])
    trained = gc.optimize([gw])
    assert all(n.attrs["saves"] for n in trained.nodes if n.op == "scan" and
               any(m.op == "item" and m.inputs[0] is n and m.attrs["index"] >= 2
                   for m in trained.nodes))
    same_everywhere([xs], [h, ys, gw], [[f64(6, 3)], [f64(3, 3)]])
    short = gc.placeholder((3, 3), "float64", "short")
    h3, ys3 = gc.scan(lambda h, x: (gc.tanh(h * w + x), h), gc.constant(np.zeros(3)), short,
                      reverse=True)
    (g3,) = gc.grad(gc.sum(ys3 * ys3) + gc.sum(h3), [w])
    opt = gc.optimize([h3, ys3, g3])
    assert not [n for n in opt.nodes if n.op == "scan"]
    same_everywhere([short], [h3, ys3, g3], [[f64(3, 3)], [f64(3, 3)]])


def test_a_short_loop_with_a_random_op_draws_the_same_sequence_optimized():
    """Unrolled, each step's copy of dropout would restart its generator: the same mask."""
    xs = gc.placeholder((4, 3), "float64", "xs")
    h0 = gc.placeholder((3,), "float64", "h0")
    _, ys = gc.scan(lambda h, x: (h + gc.dropout(x, 0.5, seed=3),) * 2, h0, xs)
    runs = [gc.function([xs, h0], ys, optimize=opt) for opt in (False, True)]
    for _ in range(2):
        plain, optimized = (f(np.ones((4, 3)), np.zeros(3)) for f in runs)
        np.testing.assert_array_equal(plain, optimized)
    steps = np.diff(plain, axis=0, prepend=0)
    assert len({tuple(s) for s in steps}) > 1            # a new mask per step


def test_an_optimized_training_step_runs_one_forward_and_one_backward_loop():
    x = gc.placeholder((None, 6, 3), "float64", "x")
    layer = nn.LSTM(4, seed=0)
    loss = gc.sum(layer(x))
    grads = gc.grad(loss, layer.params)
    step = gc.function([x], [loss, *grads])
    loops = [n for n in step.graph.nodes if n.op == "scan"]
    assert len(loops) == 2 and sum(n.grad_of is not None for n in loops) == 1
    assert [n.attrs["saves"] for n in loops if n.grad_of is None] == [True]
    xv = f64(2, 6, 3)
    for got, want in zip(step(xv), evaluate([loss, *grads], {x: xv})):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_explain_prints_the_recurrence_of_one_step_and_of_its_gradient():
    x = gc.placeholder((None,), "float64", "x")
    w = gc.placeholder((), "float64", "w")
    h, ys = gc.scan(lambda h, xt: (gc.tanh(w * h + xt), h * h), gc.constant(np.float64(0)), x)
    text = str(gc.explain({"h": h, "ys": ys}))
    assert text.splitlines() == ["h = L1.s1[T]", "ys = L1.y1",
                                 "loop L1, t = 1, ..., T over x[t]:", "  s1[0] = 0",
                                 "  s1[t] = tanh(s1[t-1]*w + x[t])", "  y1[t] = s1[t-1]**2"]
    grad_text = str(gc.explain({"dh/dw": gc.grad(h, w)}))
    assert "loop L2, t = T, ..., 1 over L1.s1[t-1], x[t]:" in grad_text
    assert "  s2[t] = L1.s1[t-1]*s1[t-1]*(1 - tanh(L1.s1[t-1]*w + x[t])**2) + s2[t-1]" \
        in grad_text.splitlines()
    assert "loop L1" in gc.explain({"dh/dw": gc.grad(h, w)}, latex=True)


def test_render_draws_each_loop_as_a_cluster_with_its_body_and_head():
    x = gc.placeholder((None, 5, 3), "float64", "x")
    layer = nn.GRU(4, seed=0)
    loss = gc.sum(layer(x))
    step = gc.function([x], [loss, *gc.grad(loss, layer.params)])
    source = gc.render(step).source
    heads = [ln for ln in source.splitlines() if "shape=cds" in ln]
    assert len(heads) == 2                                   # forward and backward loop
    assert "1 carry, 1 sequence" in source and "(reverse)" in source
    assert source.count("subgraph cluster_") >= 2


def test_profile_shows_the_time_per_body_step_of_each_loop():
    xs = gc.placeholder((None, 3), "float64", "xs")
    w = gc.variable(f64(3), name="w")
    h, _ = gc.scan(lambda h, x: (gc.tanh(h * w + x), h), gc.constant(np.zeros(3)), xs)
    f = gc.function([xs], h)
    table = f.profile(f64(9, 3), repeat=2)
    assert "9 steps of its body" in table and "ms per step" in table
    f(f64(5, 3))                                  # ordinary calls keep their own counts
    assert "5 steps of its body" in f.profile(f64(5, 3))
