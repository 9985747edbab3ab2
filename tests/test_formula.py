"""Formulas: gradients agree with sympy's own derivatives; matrix formulas use the user's names."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.formula import Broadcast, formula, sigmoid
from graphc.symbolic import text

A, B = sp.symbols("a b", real=True)

# name, forward builder on scalar placeholders a, b, sample domain (a, b) positive?
SCALAR_CASES = [
    ("sigmoid", lambda a, b: gc.sigmoid(a * b)),
    ("tanh", lambda a, b: gc.tanh(a - 2 * b)),
    ("log", lambda a, b: gc.log(a * a + b)),
    ("exp", lambda a, b: gc.exp(a) * b),
    ("pow", lambda a, b: a ** b),
    ("pow_const", lambda a, b: (a + b) ** 3),
    ("product", lambda a, b: a * b * a),
    ("quotient", lambda a, b: a / (b + 1)),
    ("softplus", lambda a, b: gc.softplus(a * b - 1)),
    ("relu", lambda a, b: gc.relu(a - b)),
    ("maximum", lambda a, b: gc.maximum(a, b * b)),
    ("sqrt", lambda a, b: gc.sqrt(a + b)),
    ("chain", lambda a, b: gc.log(gc.sigmoid(a) + gc.tanh(b) ** 2)),
]


def numeric(expr, point: dict) -> float:
    return float(sp.N(expr.rewrite(sp.exp).subs(point)))


@pytest.mark.parametrize("name,build", SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES])
def test_gradient_formula_is_the_derivative_of_the_forward_formula(name, build):
    a = gc.placeholder((), "float64", name="a")
    b = gc.placeholder((), "float64", name="b")
    out = build(a, b)
    ga, gb = gc.grad(out, [a, b])
    f = formula(out)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pa, pb = rng.uniform(0.3, 2.0, size=2)        # positive: log, pow and sqrt are defined
        if name in ("relu", "maximum"):
            pb = pb + 0.05 * np.sign(pa - pb)           # keep away from the kink
        point = {A: pa, B: pb}
        for g, sym in ((ga, A), (gb, B)):
            want = numeric(sp.diff(f, sym), point)
            got = numeric(formula(g), point)
            assert got == pytest.approx(want, rel=1e-9, abs=1e-12), (name, sym)
            value = g.eval({a: np.float64(pa), b: np.float64(pb)})
            assert got == pytest.approx(float(value), rel=1e-9, abs=1e-12)


def logistic():
    w, b = gc.variable(np.float32(0.5), name="w"), gc.variable(np.float32(0.1), name="b")
    x, y = gc.placeholder((), name="x"), gc.placeholder((), name="y")
    p = gc.sigmoid(w * x + b)
    loss = -(y * gc.log(p) + (1 - y) * gc.log(1 - p))
    return loss, gc.grad(loss, [w, b])


def test_logistic_regression_gradient_reads_like_the_textbook():
    loss, (gw, gb) = logistic()
    w, b, x, y = sp.symbols("w b x y", real=True)
    assert formula(gw) == x * (sigmoid(w * x + b) - y)
    assert formula(gb) == sigmoid(w * x + b) - y
    assert formula(loss) == -y * sp.log(sigmoid(w * x + b)) - (1 - y) * sp.log(
        1 - sigmoid(w * x + b))


def test_sigmoid_derivative_is_sigma_times_one_minus_sigma():
    z = gc.placeholder((), name="z")
    (gz,) = gc.grad(gc.sigmoid(z), [z])
    s = sigmoid(sp.Symbol("z", real=True))
    assert formula(gz) == s * (1 - s)
    assert sp.latex(formula(gz)).count(r"\sigma") == 2


def test_simplification_never_changes_the_value():
    loss, (gw, _) = logistic()
    raw, tidy = formula(gw, simplify=False), formula(gw)
    w, b, x, y = sp.symbols("w b x y", real=True)
    for point in ({w: 0.3, b: -1.2, x: 2.0, y: 1.0}, {w: -2.0, b: 0.5, x: -0.7, y: 0.0}):
        assert numeric(raw, point) == pytest.approx(numeric(tidy, point), rel=1e-12)


def test_op_without_sym_is_an_undefined_function_named_after_it():
    x = gc.placeholder((), name="x")      # its attributes are part of the name
    assert formula(gc.argmax_mask(x) * x) == sp.Function("argmax_mask[axis=()]")(
        sp.Symbol("x", real=True)) * sp.Symbol("x", real=True)


# matrices --------------------------------------------------------------------------------

def mlp():
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 4), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    W1 = gc.variable(rng.normal(size=(4, 8)).astype(np.float32), name="W1")
    b1 = gc.variable(np.zeros(8, np.float32), name="b1")
    W2 = gc.variable(rng.normal(size=(8, 3)).astype(np.float32), name="W2")
    b2 = gc.variable(np.zeros(3, np.float32), name="b2")
    logits = gc.relu(x @ W1 + b1) @ W2 + b2
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    return loss, gc.grad(loss, [W1, b1, W2, b2])


def matrix_names(expr) -> set[str]:
    return {str(m) for m in expr.atoms(sp.MatrixSymbol)}


def test_matrix_formulas_name_the_users_variables():
    loss, (gW1, gb1, gW2, gb2) = mlp()
    assert {"x", "W1", "b1", "W2", "b2"} <= matrix_names(formula(loss))
    fW2 = formula(gW2)
    assert isinstance(fW2, sp.MatMul) and isinstance(fW2.args[0], sp.Transpose)
    assert fW2.shape == (8, 3)
    assert formula(gW1).shape == (4, 8)
    assert formula(gb2).shape == (1, 3)
    assert text(formula(gW1)).startswith("xᵀ·")


def test_softmax_cross_entropy_gradient_is_softmax_minus_one_hot():
    loss, (_, _, _, gb2) = mlp()
    t = text(formula(gb2))
    assert t.startswith("sum(1/n·(softmax(") and t.endswith(") - one_hot(y)), axis=0)")


def test_matrix_formula_matches_the_graph_entry_by_entry():
    rng = np.random.default_rng(1)
    x = gc.placeholder((2, 3), "float64", name="x")
    W = gc.variable(rng.normal(size=(3, 2)), name="W")
    b = gc.variable(rng.normal(size=2), name="b")
    out = gc.tanh(x @ W + b) * 2.0 - gc.sum(x @ W, axis=0)
    xv = rng.normal(size=(2, 3))
    subs = {sp.MatrixSymbol("x", 2, 3): sp.Matrix(xv), sp.MatrixSymbol("W", 3, 2):
            sp.Matrix(W.value), sp.MatrixSymbol("b", 1, 2): sp.Matrix(b.value[None])}
    got = formula(out).subs(subs).as_explicit()
    got = np.array(got.rewrite(sp.exp).evalf(), dtype=float)
    np.testing.assert_allclose(got, out.eval({x: xv}), rtol=1e-10)


def test_sum_of_a_broadcast_scalar_counts_its_copies():
    s = gc.placeholder((), name="s")
    v = gc.sum(gc.broadcast_to(s, (3,)) * 2.0)
    (gs,) = gc.grad(v, [s])
    assert formula(v) == 6 * sp.Symbol("s", real=True)
    assert formula(gs) == 6


def test_scalar_broadcast_in_a_hadamard_product_becomes_a_scalar_product():
    x = gc.placeholder((None, 3), name="x")
    f = formula(x * 3.0)
    assert f == 3 * sp.MatrixSymbol("x", sp.Symbol("n", integer=True, positive=True), 3)
    assert not f.has(Broadcast)


# explain ---------------------------------------------------------------------------------

def test_explain_names_shared_subexpressions_once():
    loss, (gw, gb) = logistic()
    out = gc.explain({"L": loss, "dL/dw": gw, "dL/db": gb})
    assert out.splitlines() == [
        "let z1 = sigmoid(b + w*x)",
        "L = -y*log(z1) - (1 - y)*log(1 - z1)",
        "dL/dw = x*(z1 - y)",
        "dL/db = z1 - y",
    ]


def test_explain_mlp_lets_read_as_matrix_algebra():
    loss, (gW1, _, gW2, gb2) = mlp()
    lines = gc.explain({"loss": loss, "dW1": gW1, "dW2": gW2, "db2": gb2}).splitlines()
    assert lines[0] == "let z1 = b1 + x·W1"
    assert lines[1] == "let z2 = relu(z1)"
    assert "dW2 = z2ᵀ·z4" in lines
    assert "dW1 = xᵀ·where(z1 > 0, z4·W2ᵀ, 0)" in lines
    assert "db2 = sum(z4, axis=0)" in lines


def test_explain_latex():
    loss, (gw, _) = logistic()
    out = gc.explain([loss, gw], latex=True)
    assert r"\sigma\left(b + w x\right)" in out and "&=" in out
    plain = gc.explain([loss, gw])
    assert plain._repr_markdown_().startswith("$$") and r"\sigma" in plain._repr_markdown_()


def test_matrix_gradient_formula_matches_the_gradient_graph_entry_by_entry():
    rng = np.random.default_rng(2)
    x = gc.placeholder((3, 2), "float64", name="x")
    t = gc.placeholder((3, 2), "float64", name="t")
    W = gc.variable(rng.normal(size=(2, 2)), name="W")
    b = gc.variable(rng.normal(size=2), name="b")
    loss = gc.mean((gc.sigmoid(x @ W + b) - t) ** 2)
    gW, gb = gc.grad(loss, [W, b])
    xv, tv = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    subs = {sp.MatrixSymbol("x", 3, 2): sp.Matrix(xv), sp.MatrixSymbol("t", 3, 2): sp.Matrix(tv),
            sp.MatrixSymbol("W", 2, 2): sp.Matrix(W.value),
            sp.MatrixSymbol("b", 1, 2): sp.Matrix(b.value[None])}
    for g in (gW, gb):
        f = formula(g)
        assert {"x", "t", "W", "b"} <= matrix_names(f)
        got = np.array(f.subs(subs).as_explicit().rewrite(sp.exp).evalf(), dtype=float)
        np.testing.assert_allclose(got.reshape(g.shape), g.eval({x: xv, t: tv}), rtol=1e-9)


def test_leaves_keep_their_names_and_repeats_or_unnamed_ones_get_numbers():
    a, a2 = gc.placeholder((), name="a"), gc.placeholder((), name="a")
    u = gc.placeholder(())
    f = formula(a * a2 + u)
    assert sorted(str(s) for s in f.free_symbols) == ["a", "a_2", "x1"]


def test_layer_variables_are_named_by_their_scope():
    nn = pytest.importorskip("graphc.nn")
    x = gc.placeholder((None, 3), name="x")
    out = nn.Dense(2, activation="tanh")(x)
    names = matrix_names(formula(out))
    assert "x" in names and any(n.endswith("/W") for n in names)


UNARY = [gc.tanh, gc.sigmoid, gc.softplus, lambda v: v * v, gc.neg]
BINARY = [gc.add, gc.sub, gc.mul, lambda p, q: p / (q * q + 1.0), gc.maximum]


def random_expression(draw, leaves, depth):
    from hypothesis import strategies as st
    if depth == 0 or draw(st.booleans()):
        return leaves[draw(st.integers(0, len(leaves) - 1))]
    if draw(st.booleans()):
        return UNARY[draw(st.integers(0, len(UNARY) - 1))](
            random_expression(draw, leaves, depth - 1))
    op = BINARY[draw(st.integers(0, len(BINARY) - 1))]
    return op(random_expression(draw, leaves, depth - 1),
              random_expression(draw, leaves, depth - 1))


def test_random_scalar_graphs_formula_and_gradient_formulas_match_the_graph():
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    @hypothesis.settings(max_examples=25, deadline=None)
    @hypothesis.given(st.data())
    def check(data):
        a = gc.placeholder((), "float64", name="a")
        b = gc.placeholder((), "float64", name="b")
        out = random_expression(data.draw, [a, b], 4) * 1.0 + a
        ga, gb = gc.grad(out, [a, b])
        feeds = {a: np.float64(0.7), b: np.float64(-1.3)}
        point = {A: 0.7, B: -1.3}
        for node in (out, ga, gb):
            want = float(node.eval(feeds))
            assert numeric(formula(node), point) == pytest.approx(want, rel=1e-9, abs=1e-12)
        assert numeric(formula(ga), point) == pytest.approx(
            numeric(sp.diff(formula(out), A), point), rel=1e-9, abs=1e-12)

    check()


def test_a_graph_too_deep_for_sympy_is_a_clear_error():
    x = gc.placeholder((), dtype="float64", name="x")
    y = x
    for _ in range(3000):
        y = gc.tanh(y) * 1.01
    with pytest.raises(gc.GraphcError, match="too deep for sympy"):
        gc.formula(y)
