"""grad and vjp: errors, disconnected inputs, tags, whole models and second order vs finite
differences (float64)."""
import sys

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import OPS, toposort
from tests.helpers import leaf_grad

rng = np.random.default_rng(42)


def check_model(cost, params, feeds, rtol=1e-4, atol=1e-7):
    """grad(cost, params) against central differences of cost.eval, param by param."""
    grads = gc.grad(cost, params)
    for p, g in zip(params, grads):
        assert g.shape == p.shape
        got = g.eval(feeds)
        want = leaf_grad(cost, p, feeds)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=repr(p))
    return grads


def var(*shape, scale=0.5, name=None):
    return gc.variable(rng.standard_normal(shape) * scale, name=name)


def test_grad_of_a_non_scalar_names_the_shape_and_suggests_a_fix():
    x = gc.placeholder((None, 3), dtype="float64", name="x")
    with pytest.raises(gc.GraphcError, match=r"(?s)cost must be a scalar, got shape \(\?, 3\)"
                                             r".*test_autodiff.py:\d+.*gc.vjp"):
        gc.grad(x * 2.0, [x])


def test_unrelated_wrt_gets_zeros_of_its_shape_or_raises_on_request():
    x = gc.placeholder((None, 3), dtype="float64", name="x")
    u = gc.variable(np.ones((2, 5)), name="u")
    cost = gc.sum(x * x)
    gx, gu = gc.grad(cost, [x, u])
    feeds = {x: np.ones((4, 3))}
    np.testing.assert_array_equal(gu.eval(feeds), np.zeros((2, 5)))
    np.testing.assert_array_equal(gx.eval(feeds), 2 * np.ones((4, 3)))
    with pytest.raises(gc.GraphcError,
                       match=r"does not depend on <Node variable 'u'.*test_autodiff"):
        gc.grad(cost, [u], disconnected="raise")


def test_integer_wrt_is_refused_and_integer_paths_get_no_gradient():
    k = gc.placeholder((3,), dtype="int64", name="k")
    x = gc.placeholder((3,), dtype="float64", name="x")
    with pytest.raises(gc.GraphcError, match="integer/bool dtype int64"):
        gc.grad(gc.sum(x), [k])
    (g,) = gc.grad(gc.sum(x * gc.cast(k, "float64")), [x])
    np.testing.assert_array_equal(g.eval({x: np.ones(3), k: np.array([1, 2, 3])}), [1, 2, 3])


def test_grad_wrt_an_intermediate_node_and_gradient_tags():
    x = gc.placeholder((3,), dtype="float64", name="x")
    h = gc.tanh(x)
    cost = gc.sum(h * h)
    gh, gx = gc.grad(cost, [h, x])
    xv = rng.standard_normal(3)
    np.testing.assert_allclose(gh.eval({x: xv}), 2 * np.tanh(xv))
    np.testing.assert_allclose(gx.eval({x: xv}), 2 * np.tanh(xv) * (1 - np.tanh(xv) ** 2))
    backward = [n for n in toposort([gx]) if n.grad_of is not None]
    assert backward and {n.grad_of.op for n in backward} <= {"sum", "mul", "tanh"}
    assert all(n.grad_of is None for n in toposort([cost]))


def test_vjp_of_a_non_scalar_output():
    x = gc.placeholder((2, 3), dtype="float64", name="x")
    y = gc.exp(x) * 3.0
    ct = rng.standard_normal((2, 3))
    (g,) = gc.vjp([y], [x], [gc.constant(ct)])
    xv = rng.standard_normal((2, 3))
    np.testing.assert_allclose(g.eval({x: xv}), ct * 3 * np.exp(xv))


def test_gradient_accumulates_over_fan_out_and_broadcast():
    x = gc.placeholder((4, 1), dtype="float64", name="x")
    b = var(3, name="b")
    cost = gc.sum(gc.sigmoid(x * b + x) * gc.sqrt(x * x + 1.0))
    check_model(cost, [b, x], {x: rng.standard_normal((4, 1))})


def test_hessian_vector_product_matches_differences_of_the_gradient():
    x = gc.placeholder((4,), dtype="float64", name="x")
    v = gc.placeholder((4,), dtype="float64", name="v")
    cost = gc.sum(gc.tanh(x) * gc.exp(x * 0.3)) + gc.sum(x * x * x)
    (g,) = gc.grad(cost, [x])
    (hv,) = gc.grad(gc.sum(g * v), [x])
    xv, vv = rng.standard_normal(4), rng.standard_normal(4)
    eps = 1e-5
    want = (g.eval({x: xv + eps * vv}) - g.eval({x: xv - eps * vv})) / (2 * eps)
    np.testing.assert_allclose(hv.eval({x: xv, v: vv}), want, rtol=1e-6, atol=1e-8)


def test_backward_graph_grows_linearly_and_reuses_forward_activations():
    x = gc.placeholder((None, 8), dtype="float64", name="x")
    sizes = []
    for depth in (5, 10, 20):
        h = x
        ws = []
        for i in range(depth):
            w = var(8, 8, name=f"W{i}")
            ws.append(w)
            h = gc.tanh(gc.matmul(h, w))
        cost = gc.sum(h)
        grads = gc.grad(cost, ws)
        fwd = toposort([cost])
        both = toposort([cost] + grads)
        assert set(map(id, fwd)) <= set(map(id, both))     # activations reused, not rebuilt
        assert sum(n.op == "tanh" for n in both) == depth   # no forward op recomputed
        sizes.append(len(both))
    assert sizes[2] - sizes[1] == 2 * (sizes[1] - sizes[0])   # linear in depth


# whole models ----------------------------------------------------------------------------

def test_mlp_with_softmax_cross_entropy():
    x = gc.placeholder((None, 6), dtype="float64", name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    W1, b1 = var(6, 5, name="W1"), var(5, name="b1")
    W2, b2 = var(5, 3, name="W2"), var(3, name="b2")
    h = gc.relu(x @ W1 + b1)
    loss = gc.mean(gc.softmax_cross_entropy(h @ W2 + b2, y))
    feeds = {x: rng.standard_normal((7, 6)), y: rng.integers(0, 3, 7)}
    check_model(loss, [W1, b1, W2, b2, x], feeds)


def test_cnn_with_conv_pool_reshape_matmul():
    x = gc.placeholder((2, 1, 7, 7), dtype="float64", name="x")
    y = gc.placeholder((2,), dtype="int64", name="y")
    K = var(3, 1, 3, 3, name="K")
    c = var(1, 3, 1, 1, name="c")
    W = var(27, 4, name="W")
    a = gc.relu(gc.conv2d(x, K, stride=1, padding=1) + c)
    p = gc.max_pool2d(a, 2)                                  # 7x7 -> 3x3 (floor)
    logits = gc.reshape(p, (-1, 27)) @ W
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    check_model(loss, [K, c, W], {x: rng.standard_normal((2, 1, 7, 7)), y: np.array([1, 3])})


def test_logistic_regression_with_hand_written_bce():
    x = gc.placeholder((None, 4), dtype="float64", name="x")
    y = gc.placeholder((None,), dtype="float64", name="y")
    w, b = var(4, name="w"), var(name="b")
    p = gc.sigmoid(x @ w + b)
    loss = -gc.mean(y * gc.log(p) + (1.0 - y) * gc.log(1.0 - p))
    check_model(loss, [w, b], {x: rng.standard_normal((9, 4)),
                               y: rng.integers(0, 2, 9).astype(np.float64)})


def test_layer_norm_like_expression():
    x = gc.placeholder((3, 5), dtype="float64", name="x")
    gamma, beta = var(5, name="gamma"), var(5, name="beta")
    mu = gc.mean(x, axis=-1, keepdims=True)
    var_ = gc.mean((x - mu) ** 2, axis=-1, keepdims=True)
    out = (x - mu) / gc.sqrt(var_ + 1e-5) * gamma + beta
    cost = gc.sum(out * gc.constant(rng.standard_normal((3, 5))))
    check_model(cost, [gamma, beta, x], {x: rng.standard_normal((3, 5))})


def test_concat_of_parts_with_unknown_sizes_along_the_axis_has_gradients():
    a = gc.placeholder((None, 2), dtype="float64")
    b = gc.placeholder((None, 2), dtype="float64")
    w = np.arange(1.0, 3.0)
    y = gc.concat([a * a, b], axis=0) * w
    ga, gb = gc.grad(gc.sum(y * y), [a, b])
    (hb,) = gc.grad(gc.sum(gb * gb * gb), [b])          # through the gradient of the parts
    f = gc.function([a, b], [ga, gb, hb])
    for n, m in [(3, 1), (1, 4)]:
        av, bv = np.linspace(-1, 1, 2 * n).reshape(n, 2), np.linspace(1, 2, 2 * m).reshape(m, 2)
        want = [4 * av ** 3 * w ** 2, 2 * bv * w ** 2, 24 * bv ** 2 * w ** 6]
        for got in (f(av, bv), [x.eval({a: av, b: bv}) for x in (ga, gb, hb)]):
            for g, r in zip(got, want):
                np.testing.assert_allclose(g, r)


def test_gradient_of_the_exponent_of_an_integer_base():
    k = gc.placeholder((3,), dtype="int64")
    x = gc.placeholder((3,), dtype="float32")
    (gx,) = gc.grad(gc.sum(gc.pow(k, x)), [x])
    kv, xv = np.array([0, 2, 3]), np.array([1.0, 2.0, 0.5], np.float32)
    want = np.array([0.0, 4 * np.log(2), np.sqrt(3) * np.log(3)])
    assert gx.dtype == np.float32
    np.testing.assert_allclose(gx.eval({k: kv, x: xv}), want, rtol=1e-6)
    np.testing.assert_allclose(gc.function([k, x], gx)(kv, xv), want, rtol=1e-6)


# forward mode, Jacobians, Hessians, check_grad ------------------------------------------

def numeric_jacobian(f, x, eps=1e-6):
    cols = []
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = eps
        e = e.reshape(x.shape)
        cols.append(((f(x + e) - f(x - e)) / (2 * eps)).reshape(-1))
    return np.stack(cols, axis=1)


def test_jacobian_and_jvp_agree_with_central_differences():
    rng = np.random.default_rng(7)
    x = gc.placeholder((3,), dtype="float64", name="x")
    W = gc.placeholder((2, 3), dtype="float64", name="W")
    y = gc.tanh(W @ x) * gc.sum(x * x)
    xv, Wv, tv = rng.standard_normal(3), rng.standard_normal((2, 3)), rng.standard_normal(3)
    feeds = {x: xv, W: Wv}
    want = numeric_jacobian(lambda v: np.tanh(Wv @ v) * np.sum(v * v), xv)
    J = gc.jacobian(y, x)
    assert J.shape == (2, 3)
    np.testing.assert_allclose(J.eval(feeds), want, rtol=1e-6, atol=1e-9)
    t = gc.jvp(y, x, tv)
    assert t.shape == (2,)
    np.testing.assert_allclose(t.eval(feeds), want @ tv, rtol=1e-6, atol=1e-9)
    JW = gc.jacobian(y, [x, W])[1]
    assert JW.shape == (2, 2, 3)
    want_W = numeric_jacobian(lambda v: np.tanh(v @ xv) * np.sum(xv * xv), Wv)
    np.testing.assert_allclose(JW.eval(feeds).reshape(2, 6), want_W, rtol=1e-6, atol=1e-9)


def test_jvp_of_several_outputs_and_inputs_with_an_unknown_batch():
    rng = np.random.default_rng(8)
    x = gc.placeholder((None, 3), dtype="float64")
    W = gc.variable(rng.standard_normal((3, 2)))
    outs = [gc.softmax(x @ W), gc.argmax(x, axis=1), gc.sum(x * x)]
    tx, tW = rng.standard_normal((4, 3)), rng.standard_normal((3, 2))
    jx, jarg, jsum = gc.jvp(outs, [x, W], [gc.constant(tx), tW])
    xv = rng.standard_normal((4, 3))
    eps = 1e-6
    plus = {x: xv + eps * tx}
    minus = {x: xv - eps * tx}
    W0 = W.value.copy()
    W.value = W0 + eps * tW
    up = [o.eval(plus) for o in (outs[0], outs[2])]
    W.value = W0 - eps * tW
    down = [o.eval(minus) for o in (outs[0], outs[2])]
    W.value = W0
    np.testing.assert_allclose(jx.eval({x: xv}), (up[0] - down[0]) / (2 * eps), atol=1e-8)
    np.testing.assert_allclose(jsum.eval({x: xv}), (up[1] - down[1]) / (2 * eps), rtol=1e-6)
    assert jarg.dtype == np.int64 and not jarg.eval({x: xv}).any()     # integers: no tangent


def test_jvp_compiles_and_does_not_need_the_dummy_cotangent():
    x = gc.placeholder((None, 2), dtype="float64")
    t = gc.jvp(gc.sum(gc.exp(x) * x, axis=1), x, gc.ones_like(x))
    xv = np.array([[0.5, -1.0], [2.0, 0.0]])
    want = ((np.exp(xv) * xv + np.exp(xv))).sum(1)
    for optimize in (True, False):
        np.testing.assert_allclose(gc.function([x], t, optimize=optimize)(xv), want)


def test_hessian_of_a_vector_is_symmetric_and_matches_differences():
    rng = np.random.default_rng(9)
    x = gc.placeholder((3,), dtype="float64")
    A = rng.standard_normal((3, 3))
    cost = gc.logsumexp(gc.constant(A) @ x) + gc.sum(gc.sin(x) * x)
    H = gc.hessian(cost, x)
    assert H.shape == (3, 3)
    xv = rng.standard_normal(3)
    f = lambda v: np.log(np.exp(A @ v).sum()) + np.sum(np.sin(v) * v)     # noqa: E731
    g = lambda v: numeric_jacobian(f, v, 1e-5)[0]                          # noqa: E731
    got = H.eval({x: xv})
    np.testing.assert_allclose(got, got.T, atol=1e-12)
    np.testing.assert_allclose(got, numeric_jacobian(g, xv, 1e-4), rtol=1e-4, atol=1e-6)
    for optimize in (True, False):
        np.testing.assert_allclose(gc.function([x], H, optimize=optimize)(xv), got, rtol=1e-10)


def test_hessian_formula_of_a_scalar_expression_is_the_textbook_one():
    x = gc.placeholder((), dtype="float64", name="x")
    y = gc.placeholder((), dtype="float64", name="y")
    f = x ** 2 * y + gc.sin(x * y) + gc.exp(y) / x + gc.tanh(x)
    X, Y = sp.symbols("x y", real=True)
    want = sp.hessian(X ** 2 * Y + sp.sin(X * Y) + sp.exp(Y) / X + sp.tanh(X), (X, Y))
    H = gc.hessian(f, [x, y])
    for i in range(2):
        for j in range(2):
            assert sp.simplify(gc.formula(H[i][j]) - want[i, j]) == 0
    text = gc.explain({"fxy": H[0][1]})
    assert text.splitlines()[-1].startswith("fxy = ") and "cos(" in text


def test_check_grad_reports_the_worst_entry_and_raises_on_a_wrong_rule():
    x = gc.placeholder((3,), dtype="float64", name="x")
    W = gc.variable(np.ones((2, 3)), name="W")
    report = gc.check_grad(gc.sum(gc.tanh(W @ x) ** 2), [x, W], {x: np.arange(3.0)})
    assert report.ok and report.checked == 9 and report.abs_err < 1e-8
    assert np.array_equal(W.value, np.ones((2, 3)))          # restored after perturbing
    wrong = gc.OpDef("half_square_grad_test", lambda v: (v.shape, v.dtype), lambda v: v * v,
                     lambda g, out, v: (g * v,), elementwise=True)    # should be 2 g v
    gc.register_op(wrong)
    try:
        cost = gc.sum(gc.apply("half_square_grad_test", x))
        with pytest.raises(gc.GraphcError, match=r"FAILED at 3 of 3 entries; worst entry "
                                                 r"'x'\[2\]: graphc 3 vs central differences 6"):
            gc.check_grad(cost, x, {x: np.array([1.0, 2.0, 3.0])})
        assert not gc.check_grad(cost, x, {x: np.ones(3)}, raise_error=False).ok
    finally:
        del OPS["half_square_grad_test"]
    with pytest.raises(gc.GraphcError, match="without a seed"):
        gc.check_grad(gc.sum(x * gc.random_normal(x, dtype="float64")), x, {x: np.ones(3)})


def test_gradient_nodes_carry_the_line_of_the_grad_call():
    # the walk finds that line once (ir.lines_below) instead of once per node it builds
    x = gc.placeholder((3,), "float64", name="x")
    y = gc.sum(gc.tanh(x * x) + x)
    line = sys._getframe().f_lineno + 1
    gx = gc.grad(y, x)
    built = [n for n in toposort([gx]) if n.grad_of is not None]
    assert built and {n.where for n in built} == {f"test_autodiff.py:{line}"}


def test_gradient_through_an_optimized_graph_equals_the_plain_graphs():
    """fused nodes whose inputs are computed from each other (an SGD update after fusion):
    their VJP gives partial derivatives, so no path is counted twice, and the gradient graph
    grows linearly with depth (walking back to the real inputs repeated every upstream walk)."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((5, 4), "float64", "x")
    sizes = []
    for depth in (3, 6):
        ws = [gc.variable(rng.standard_normal((4, 4)) * 0.5, name=f"w{k}") for k in range(depth)]
        h = x
        for w in ws:
            h = gc.tanh(h @ w) * 2.0 + gc.exp(-h)
        grads = gc.grad(gc.sum(h * h), ws)
        updates = [w - 0.1 * g for w, g in zip(ws, grads)]
        fused = gc.optimize(gc.Graph(updates)).outputs[0]
        assert any(n.op == "fused" for n in gc.Graph([fused]).nodes)
        plain = gc.grad(gc.sum(updates[0] * updates[0]), ws[:2])
        through = gc.grad(gc.sum(fused * fused), ws[:2])
        sizes.append(len(gc.Graph(through).nodes))
        values = gc.function([x], plain + through, optimize=False)(rng.standard_normal((5, 4)))
        for a, b in zip(values[:2], values[2:]):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)
    assert sizes[1] < 3 * sizes[0]
