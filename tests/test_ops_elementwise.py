"""Op table rows for the elementwise family: kernel vs NumPy, shape rule, finite differences."""
import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import OPS, apply
from tests.helpers import Row

rng = np.random.default_rng(0)


def f64(*shape, lo=-2.0, hi=2.0):
    return rng.uniform(lo, hi, size=shape)


def pos(*shape):
    return f64(*shape, lo=0.5, hi=2.0)


def away(*shape):
    """Values far from 0 and from each other, so kinks (relu, abs, max) are not straddled."""
    v = rng.permutation(np.arange(1, int(np.prod(shape)) + 1)) * 0.37
    return (v * rng.choice([-1, 1], size=v.size)).reshape(shape)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


ROWS = [
    Row("add", gc.add, [f64(3, 4), f64(4)], np.add),
    Row("add", gc.add, [f64(2, 1, 3), f64(4, 1)], np.add),          # both sides broadcast
    Row("sub", gc.sub, [f64(3, 4), f64(3, 1)], np.subtract),
    Row("mul", gc.mul, [f64(3, 4), f64(1, 4)], np.multiply),
    Row("div", gc.div, [f64(3, 4), pos(4)], np.divide),
    Row("neg", gc.neg, [f64(5)], np.negative),
    Row("pow", gc.pow, [pos(3, 4), f64(4)], np.power),
    Row("pow", lambda a: a ** 2, [f64(3)], lambda a: a ** 2),
    Row("exp", gc.exp, [f64(2, 3)], np.exp),
    Row("log", gc.log, [pos(2, 3)], np.log),
    Row("sqrt", gc.sqrt, [pos(2, 3)], np.sqrt),
    Row("abs", gc.abs, [away(2, 3)], np.abs),
    Row("sign", gc.sign, [away(2, 3)], np.sign),
    Row("tanh", gc.tanh, [f64(2, 3)], np.tanh),
    Row("sigmoid", gc.sigmoid, [f64(2, 3)], sigmoid),
    Row("relu", gc.relu, [away(2, 3)], lambda x: np.maximum(x, 0)),
    Row("softplus", gc.softplus, [f64(2, 3)], lambda x: np.log1p(np.exp(x))),
    Row("maximum", gc.maximum, [away(3, 4), away(4)], np.maximum),
    Row("minimum", gc.minimum, [away(3, 4), away(3, 1)], np.minimum),
    Row("greater", gc.greater, [f64(3, 4), f64(4)], np.greater, grad=False),
    Row("greater_equal", gc.greater_equal, [f64(3), f64(3)], np.greater_equal, grad=False),
    Row("less", gc.less, [f64(3, 4), f64(4)], np.less, grad=False),
    Row("less_equal", gc.less_equal, [f64(3), f64(1)], np.less_equal, grad=False),
    Row("equal", gc.equal, [np.array([1, 2, 3]), np.array([1, 0, 3])], np.equal, grad=False),
    Row("logical_not", gc.logical_not, [np.array([True, False])], np.logical_not, grad=False),
    Row("where", lambda a, b: gc.where(gc.greater(a, b), a, b), [f64(3, 4), f64(4)],
        lambda a, b: np.where(a > b, a, b), ops=("where", "greater")),
    Row("cast", lambda x: gc.cast(x, "float32"), [f64(3)], lambda x: x.astype(np.float32),
        grad=False),
    Row("cast", lambda x: gc.cast(x, "float64") * x, [f64(3)], lambda x: x * x,
        ops=("cast",)),
    Row("cast", lambda k: gc.cast(k, "float64"), [np.array([1, -2])],
        lambda k: k.astype(np.float64), grad=False),
    Row("log1p", gc.log1p, [pos(2, 3)], np.log1p),
    Row("expm1", gc.expm1, [f64(2, 3)], np.expm1),
    Row("square", gc.square, [f64(2, 3)], np.square),
]


@pytest.mark.parametrize("name", sorted(n for n, op in OPS.items()    # (other families'
                                        if op.elementwise and op.sym and n != "cast"  # own)
                                        and any(r.name == n for r in ROWS)))
def test_sympy_form_agrees_with_kernel(name):
    op = OPS[name]
    n_in = len(next(r for r in ROWS if r.name == name).inputs)
    if name == "where":
        c, a, b = sp.symbols("c a b")
        expr = op.sym(c, a, b)
        assert expr.subs({c: True, a: 1, b: 2}) == 1
        return
    symbols = sp.symbols(f"x0:{max(n_in, 1)}")
    expr = op.sym(*symbols)
    fn = sp.lambdify(symbols, expr, "numpy")
    args = [np.array(v) for v in (0.7, -0.4)[:len(symbols)]]
    want = op.kernel(*args)
    got = fn(*args)
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float),
                               rtol=1e-12)


def test_float_only_ops_reject_integers_with_a_clear_error():
    x = gc.placeholder((3,), dtype="int64", name="k")
    with pytest.raises(gc.GraphcError, match=r"(?s)exp\(\(3,\) int64\): needs floating-point.*"
                                             r"test_ops_elementwise.py:\d+"):
        gc.exp(x)


def test_python_scalars_take_the_dtype_of_the_node():
    x = gc.placeholder((2,), dtype="float32")
    assert (x * 2.5).dtype == np.float32
    assert (2 - x).dtype == np.float32
    k = gc.placeholder((2,), dtype="int32")
    assert (k + 1).dtype == np.int32
    assert (k * 0.5).dtype == np.float64          # as NumPy 2 promotes


def test_result_dtypes_are_numpys_own_loops_including_bool():
    t = gc.placeholder((2,), dtype="bool")
    u = gc.placeholder((2,), dtype="uint8")
    tv, uv = np.array([True, False]), np.array([3, 4], np.uint8)
    for node, want in [(t ** t, tv ** tv), (gc.relu(t), tv), (t + t, tv + tv),
                       (t * u, tv * uv), (gc.abs(u), np.abs(uv))]:
        assert node.dtype == want.dtype
        for got in (node.eval({t: tv, u: uv}), gc.function([t, u], node)(tv, uv)):
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    for bad in (lambda: -t, lambda: t - t, lambda: gc.sign(t)):
        with pytest.raises(gc.GraphcError, match=r"\(2,\) bool\): .*(supported|loop)"):
            bad()


def test_arrays_are_accepted_where_a_node_is():
    x = gc.placeholder((2, 3), dtype="float64")
    b = np.arange(3.0)
    xv = np.ones((2, 3))
    np.testing.assert_allclose((b + x).eval({x: xv}), b + xv)
    np.testing.assert_allclose((x * b).eval({x: xv}), xv * b)


def test_relu_and_maximum_conventions_at_the_kink():
    x = gc.placeholder((3,), dtype="float64")
    (g,) = gc.grad(gc.sum(gc.relu(x)), [x])
    np.testing.assert_array_equal(g.eval({x: np.array([-1.0, 0.0, 2.0])}), [0, 0, 1])
    y = gc.placeholder((3,), dtype="float64")
    gx, gy = gc.grad(gc.sum(gc.maximum(x, y)), [x, y])
    feeds = {x: np.array([1.0, 2.0, 3.0]), y: np.array([1.0, 5.0, 0.0])}
    np.testing.assert_array_equal(gx.eval(feeds), [1, 0, 1])    # a tie: one winner
    np.testing.assert_array_equal(gy.eval(feeds), [0, 1, 0])


@pytest.mark.parametrize("dtype, low", [("float32", -88.0), ("float64", -708.0), ("float16", -11.0)])
def test_sigmoid_is_accurate_relative_to_its_value_on_the_negative_side(dtype, low):
    """sigmoid was (tanh(x/2) + 1) / 2: 1 + tanh cancels for x < 0 (float32: 4.5e-6 relative
    error at -5, 0 from -17 on where 1 / (1 + e^-x) gives 2e-9; float64: 0 from -38 on), so a
    log(sigmoid(x)) was -inf where PyTorch gives -17. Eval, compiled, a dense's activation and
    the export alike, to a few ulps of the exact value down to where it underflows."""
    x = gc.placeholder((None,), dtype, name="x")
    xv = np.concatenate([np.linspace(low, 30, 997), [-np.inf, np.inf, -0.0]]).astype(dtype)
    exact = 1 / (1 + np.exp(-xv.astype(np.longdouble)))
    w = gc.constant(np.ones((1, 1), dtype))
    dense = apply("dense", gc.reshape(x, (-1, 1)), w, gc.constant(np.zeros(1, dtype)),
                  activation="sigmoid")
    f = gc.function([x], [gc.sigmoid(x), gc.reshape(dense, (-1,))])
    eps = np.finfo(dtype).eps
    for got in [gc.sigmoid(x).eval({x: xv}), *f(xv)]:
        assert got.dtype == dtype
        np.testing.assert_allclose(got, exact.astype(np.float64), rtol=8 * eps, atol=0)
