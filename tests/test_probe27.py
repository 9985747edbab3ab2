"""probe27: a hostile probe of values and gradients (gradients of gradients, integer paths,
loops, ops at their edges, signed zeros through the simplifier); one test per bug found, each
failing before its fix, against finite differences in float64 and eval, compiled with and
without the passes and check_numerics.
"""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import evaluate
from tests.helpers import leaves_for, numeric_grad
from tests.test_ops import ROWS


def compiled_runs(inputs, outputs, feeds):
    """The results of every way graphc runs a graph: optimized, not, with check_numerics."""
    args = [feeds[i] for i in inputs]
    return [gc.function(inputs, outputs, optimize=opt, check_numerics=check)(*args)
            for opt, check in ((True, False), (False, False), (True, True))]


# cumprod's gradient with zeros --------------------------------------------------------------

CUMPROD_ZEROS = [
    [[1.0, 0.0, 2.0, 3.0], [0.0, 0.0, 2.0, 1.0], [1.0, 2.0, 3.0, 0.0]],
    [[0.0, 3.0, 0.0, 2.0], [2.0, -0.0, 0.0, 0.0], [1.0, 0.0, 3.0, 1.0]],
    [[1.5, 0.5, 2.0, 3.0], [0.7, -1.0, 2.0, 1.0], [1.0, 2.0, 3.0, -0.5]],
]


@pytest.mark.parametrize("axis,reverse", [(1, False), (1, True), (0, False), (-1, True)])
def test_cumprod_gradient_and_its_gradient_with_zeros_equal_finite_differences(axis, reverse):
    """cumprod's VJP was cumsum(g * out) / x: 0/0 = NaN at every zero (and NaN for every
    gradient after a NaN): [[0, nan, 0, 0], [nan, nan, 0, 0], ...] for finite differences'
    [[0, 23, 0, 0], [4, 0, 0, 0], ...]. Now the first zero's derivative is the running product
    with that zero set to 1, and 0 after it; the gradient of that gradient is right too."""
    x = gc.placeholder((3, 4), "float64", "x")
    w = gc.constant(np.arange(12.0).reshape(3, 4) - 3)
    cost = gc.sum(gc.cumprod(x, axis=axis, reverse=reverse) * w)
    (g,) = gc.grad(cost, [x])
    penalty = gc.sum(g * g * w)
    (gg,) = gc.grad(penalty, [x])
    for xv in map(np.array, CUMPROD_ZEROS):
        want = numeric_grad(lambda a: float(cost.eval({x: a})), xv.copy())
        want2 = numeric_grad(lambda a: float(penalty.eval({x: a})), xv.copy(), eps=1e-5)
        runs = [evaluate([g, gg], {x: xv})] + compiled_runs([x], [g, gg], {x: xv})
        for got, got2 in runs:
            np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(got2, want2, rtol=1e-5, atol=1e-5)



def hessian_by_differences(f, z0, eps=1e-4):
    n = z0.size
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            e1, e2 = np.eye(n)[i] * eps, np.eye(n)[j] * eps
            h[i, j] = (f(z0 + e1 + e2) - f(z0 + e1 - e2) - f(z0 - e1 + e2)
                       + f(z0 - e1 - e2)) / (4 * eps * eps)
    return h


@pytest.mark.parametrize("reverse", [False, True])
def test_cumprod_hessian_with_up_to_three_zeros_equals_finite_differences(reverse):
    """The first fix set the gradient after the first zero to a constant 0: right values,
    but their derivatives lost (d/dv1 of dL/dv2 = v0 came out 0 at v1 = 0, a Hessian entry
    0.3 off). Every nonzero entry now keeps out / x, each of the first two zeros its own
    running product: the Hessian is exact with any number of zeros."""
    v = gc.placeholder((5,), "float64", "v")
    w = gc.constant(np.array([1.0, -2.0, 0.5, 3.0, -1.0]))
    cost = gc.sum(gc.cumprod(v, axis=0, reverse=reverse) * w) + gc.sum(v * v * v) * 0.1
    h = gc.hessian(cost, v)
    f = gc.function([v], h)
    for vv in ([0.3, 0.0, -1.2, 0.7, 2.0], [0.0, 1.5, 0.0, -0.7, 2.0],
               [0.5, 0.0, 0.0, 0.0, 1.1], [0.0, 0.0, 2.0, 0.0, 0.0], [1.0, 2.0, -1.0, 0.5, 3.0]):
        vv = np.array(vv)
        want = hessian_by_differences(lambda a: float(cost.eval({v: a})), vv)
        for got in (h.eval({v: vv}), f(vv)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("axis,keepdims", [(0, False), (None, False), ((0, 1), True),
                                           (-1, True)])
def test_prod_hessian_with_zeros_equals_finite_differences(axis, keepdims):
    """prod's VJP gave the nonzero entries of a group holding one zero, and the zeros of a
    group holding two, a constant 0: right gradients, lost second derivatives (the op table's
    prod row with zeros: Hessian-vector product 0.17 off). Now out / x where x != 0 and, at a
    zero, the product of the nonzero ones times the other zero: Hessians exact."""
    x = gc.placeholder((3, 2), "float64", "x")
    p = gc.prod(x, axis=axis, keepdims=keepdims)
    cost = gc.sum(p * gc.constant(np.linspace(-1.0, 2.0, int(np.prod(p.shape))).reshape(
        p.shape))) + gc.sum(x * x * x) * 0.1
    h = gc.hessian(cost, x)
    f = gc.function([x], h)
    for xv in ([[0.5, 0.0], [0.0, 1.5], [2.0, 0.0]], [[1.5, 0.5], [0.0, -1.0], [0.7, 2.0]],
               [[0.0, 0.0], [0.0, 1.5], [-2.0, 0.0]], [[1.0, -2.0], [0.5, 1.5], [3.0, 0.7]]):
        xv = np.array(xv)
        want = hessian_by_differences(lambda a: float(cost.eval({x: a.reshape(3, 2)})),
                                      xv.ravel()).reshape(3, 2, 3, 2)
        for got in (h.eval({x: xv}), f(xv)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)



SECOND_ORDER_ROWS = [(i, r) for i, r in ROWS if r.grad and r.inputs[0].dtype == np.float64]


@pytest.mark.parametrize("row", [r for _, r in SECOND_ORDER_ROWS],
                         ids=[i for i, _ in SECOND_ORDER_ROWS])
def test_every_op_row_second_and_third_order_equal_differences_of_the_order_below(row):
    """For each op-table row: a Hessian-vector product (and a third-order product) against
    central differences of the gradient (of the Hessian-vector product), all float inputs
    moved at once; the compiled Hessian-vector product as eval's. The rows' own test checks
    first order only: this found prod (and cumprod at zeros)."""
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    feeds = dict(zip(leaves, row.inputs))
    floats = [x for x in leaves if x.dtype == np.float64]
    if out.dtype != np.float64 or len(floats) < sum(x.dtype.kind == "f" for x in leaves):
        pytest.skip("not a float64 row")
    rng = np.random.default_rng(0)
    cost = gc.sum(out * gc.constant(rng.standard_normal(out.eval(feeds).shape)))
    grads = gc.grad(cost, floats)
    lower, derived = [grads], []
    for _ in range(2):
        vs = [rng.standard_normal(x.shape) for x in floats]
        below = lower[-1]
        derived.append((gc.grad(sum(gc.sum(g * gc.constant(v)) for g, v in zip(below, vs)),
                                floats), below, vs))
        lower.append(derived[-1][0])
    eps = 1e-5
    for above, below, vs in derived:
        up = {**feeds, **{x: feeds[x] + eps * v for x, v in zip(floats, vs)}}
        down = {**feeds, **{x: feeds[x] - eps * v for x, v in zip(floats, vs)}}
        for a, b in zip(above, below):
            np.testing.assert_allclose(a.eval(feeds), (b.eval(up) - b.eval(down)) / (2 * eps),
                                       rtol=1e-4, atol=1e-5)
    hvp = derived[0][0]
    for got, want in zip(gc.function(leaves, hvp)(*row.inputs), evaluate(hvp, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)


# the simplifier keeps the sign of zero ------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
def test_adding_or_subtracting_a_zero_keeps_the_sign_of_zero_as_eval(dtype):
    """x + 0.0, 0.0 + x and x - (-0.0) were folded to x, 0.0 - x to -x, -(x - y) to y - x,
    a float sum over an axis of size 1 to a reshape: at x = -0.0 (and x == y) the compiled
    zero had the other sign, so 1 / that was -inf where eval's was inf. Now folded only where
    exact: x + -0.0, x - 0.0, -0.0 - x, and any integer form (still no add in the code)."""
    x = gc.placeholder((4,), dtype, "x")
    y = gc.placeholder((4,), dtype, "y")
    outs = [x + 0.0, 0.0 + x, 0.0 - x, -(x - y), x - (-0.0), x + (-0.0), x - 0.0, -0.0 - x,
            gc.sum(gc.reshape(x, (4, 1)), axis=1), gc.sum(gc.reshape(x, (1, 4)), axis=0,
                                                         keepdims=True)]
    xv, yv = np.array([-0.0, 0.0, 1.0, -2.0], dtype), np.array([-0.0, 0.0, 1.0, 3.0], dtype)
    want = evaluate(outs, {x: xv, y: yv})
    assert not np.signbit(want[0][0]) and np.signbit(want[3][1])
    for run in compiled_runs([x, y], outs, {x: xv, y: yv}):
        for got, w in zip(run, want):
            np.testing.assert_array_equal(got, w)
            np.testing.assert_array_equal(np.signbit(got), np.signbit(w))
    f = gc.function([x], [x + (-0.0), x - 0.0, -0.0 - x])
    assert "add(" not in f.source and "sub(" not in f.source
    k = gc.placeholder((4,), "int32", "k")
    g = gc.function([k], [k + 0, 0 - k, -(k - k * 2), gc.sum(gc.reshape(k, (4, 1)), axis=1)])
    assert "add(" not in g.source and "sum(" not in g.source
    kv = np.array([3, -1, 0, 7], np.int32)
    for got, w in zip(g(kv), [kv, -kv, kv, kv.astype(g.graph.outputs[3].dtype)]):
        np.testing.assert_array_equal(got, w)


# reductions over an empty axis ----------------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((3, 0), -1), ((0,), 0), ((2, 0, 3), 1),
                                        ((2, 0, 3), (1, 2)), ((2, 0, 3), None)])
def test_logsumexp_and_softmax_over_an_empty_axis_are_minus_inf_and_empty(shape, axis):
    """logsumexp, softmax and log_softmax over an axis of size 0 raised NumPy's 'zero-size
    array to reduction operation maximum' (as a GraphcError) in eval and compiled; PyTorch
    gives -inf (log of an empty sum) and empty results. Now as PyTorch, gradients empty."""
    x = gc.placeholder(shape, "float64", "x")
    outs = [gc.logsumexp(x, axis=axis), gc.logsumexp(x, axis=axis, keepdims=True)]
    if isinstance(axis, int):
        outs += [gc.softmax(x, axis=axis), gc.log_softmax(x, axis=axis)]
    cost = gc.sum(gc.exp(outs[1])) + sum(gc.sum(o) for o in outs[2:])
    outs += gc.grad(cost, [x])
    xv = np.zeros(shape)
    want = [np.full(np.sum(xv, axis=axis).shape, -np.inf),
            np.full(np.sum(xv, axis=axis, keepdims=True).shape, -np.inf)]
    want += [xv] * (len(outs) - 2)
    runs = [evaluate(outs, {x: xv})] + [gc.function([x], outs, optimize=opt)(xv)
                                        for opt in (True, False)]
    for run in runs:                                  # (check_numerics: -inf is an Inf)
        for g, w in zip(run, want):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g, w)


# binary cross-entropy at saturated probabilities --------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_binary_cross_entropy_of_saturated_probabilities_is_pytorchs_clamp_in_every_dtype(
        dtype):
    """Each log was log(max(q, e^-100)): e^-100 is 0 in float16, so p = 0 or 1 gave NaN
    losses and gradients there (the docstring promises none), nn.binary_cross_entropy's
    clipped p too (1 - 1e-7 is 1 in float16); in float32 e^-100 is a denormal whose log is
    -99.98, so the loss at sigmoid(-800) was 29.995 for PyTorch's 30. Now max(log q, -100)
    exactly, gradients finite, the same in eval and compiled."""
    p = gc.placeholder((6,), dtype, "p")
    y = gc.placeholder((6,), dtype, "y")
    loss = gc.binary_cross_entropy(p, y)
    (g,) = gc.grad(gc.sum(loss), [p])
    pv = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.25], dtype)
    yv = np.array([0.0, 1.0, 1.0, 1.0, 0.0, 0.3], dtype)
    want = np.array([0.0, 0.0, np.log(2.0), 100.0, 100.0,
                     -(0.3 * np.log(0.25) + 0.7 * np.log(0.75))])
    tol = 2e-3 if dtype == "float16" else 1e-6
    for run in [evaluate([loss, g], {p: pv, y: yv})] + compiled_runs([p, y], [loss, g],
                                                                     {p: pv, y: yv}):
        np.testing.assert_allclose(run[0].astype(np.float64), want, rtol=tol, atol=tol)
        assert np.isfinite(run[1]).all() and run[1].dtype == np.dtype(dtype)
    z = gc.placeholder((2,), "float32", "z")
    t = np.array([0.3, 0.3], np.float32)
    sat = gc.binary_cross_entropy(gc.sigmoid(z), gc.constant(t))
    np.testing.assert_allclose(sat.eval({z: np.array([-800.0, 800.0], np.float32)}),
                               [30.0, 70.0], rtol=1e-7)
    from graphc import nn
    q = gc.placeholder((2, 1), dtype, "q")
    mean = nn.binary_cross_entropy(q, gc.constant(np.array([[0.0], [1.0]], dtype)))
    assert np.isfinite(mean.eval({q: np.array([[1.0], [0.0]], dtype)}))


# gelu's tanh form at large inputs -------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gelu_tanh_gradient_is_finite_where_x_cubed_overflows(dtype):
    """gelu(x, approximate="tanh") computed x^3, which is inf in float16 from |x| = 41 on
    (float32 from ~7e12): the gradient was 0 * inf = NaN there (PyTorch computes half in
    float32: finite). x is clipped to [-10, 10] inside the tanh only (tanh is exactly +-1
    from there on in every dtype): values unchanged, gradients 1 and 0 far out."""
    big = {"float16": 6e4, "float32": 1e20, "float64": 1e200}[dtype]
    xv = np.array([-big, -800.0, -41.0, -10.5, -3.0, -0.0, 0.5, 9.9, 10.5, 41.0, 800.0, big],
                  dtype)
    x = gc.placeholder(xv.shape, dtype, "x")
    y = gc.gelu(x, approximate="tanh")
    (g,) = gc.grad(gc.sum(y), [x])
    a = xv.astype(np.float64)
    with np.errstate(over="ignore"):
        want = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a ** 3)))
    tol = 2e-3 if dtype == "float16" else 1e-6
    for run in [evaluate([y, g], {x: xv})] + compiled_runs([x], [y, g], {x: xv}):
        np.testing.assert_allclose(run[0].astype(np.float64), want, rtol=tol, atol=tol)
        assert np.isfinite(run[1]).all()
        np.testing.assert_array_equal(run[1][[0, 1, 2, -3, -2, -1]], [0, 0, 0, 1, 1, 1])


# pow's gradient at a zero exponent ------------------------------------------------------------

def test_pow_gradient_of_a_zero_exponent_at_a_zero_base_is_zero():
    """x ** k for polynomial features k = 0, 1, 2, 3 (a Vandermonde matrix) with an x = 0:
    d/dx x^0 was 0 * 0^-1 = NaN, which poisoned the whole gradient of x. a^0 is 1: the
    derivative is 0 where the exponent is 0 (PyTorch masks it so); a constant exponent still
    compiles to a plain power (the mask folds away)."""
    x = gc.placeholder((3,), "float64", "x")
    k = gc.constant(np.arange(4.0))
    w = gc.constant(np.array([0.5, -1.0, 2.0, 0.25]))
    cost = gc.sum(gc.pow(gc.reshape(x, (3, 1)), k) * w)
    (g,) = gc.grad(cost, [x])
    xv = np.array([0.0, 1.5, -2.0])
    want = numeric_grad(lambda a: float(cost.eval({x: a})), xv.copy())
    for got in [g.eval({x: xv})] + [run[0] for run in compiled_runs([x], [g], {x: xv})]:
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)
    y = gc.placeholder((2,), "float64", "y")
    gy, gx = gc.grad(gc.sum(gc.pow(x[:2], y)), [y, x])
    np.testing.assert_array_equal(gx.eval({x: xv, y: np.array([0.0, 0.0])}), [0, 0, 0])
    assert "where" not in gc.function([x], gc.grad(gc.sum(x ** 3.0), [x])).source


# softmax cross-entropy at large logits --------------------------------------------------------

@pytest.mark.parametrize("dtype,big", [("float16", 1000.0), ("float32", 3e4), ("float64", 1e15)])
def test_softmax_cross_entropy_of_large_tied_logits_is_log_2_in_eval_and_compiled(dtype, big):
    """The op's kernel (eval, and compiled with float labels) computed lse - z[y] with lse =
    log(sum(exp(z - m))) + m: adding m rounded the log away, so two tied logits of 1000 in
    float16 (3e4 in float32) gave a loss of 0 (or 2.0 for 1.862) where the runtime's own
    kernel (compiled, integer labels) gave log 2. Now m cancels first in both."""
    z = gc.placeholder((None, 3), dtype, "z")
    labels = gc.placeholder((None,), "int64", "labels")
    probs = gc.placeholder((None, 3), dtype, "probs")
    outs = [gc.softmax_cross_entropy(z, labels), gc.softmax_cross_entropy(z, probs)]
    zv = np.array([[big, big, 0.0], [big, big, big - 1.0]], dtype)
    lv = np.array([1, 2])
    pv = np.eye(3, dtype=dtype)[lv]
    want = [np.log(2.0), np.log(2.0 + np.exp(-1.0)) + 1.0]
    tol = 2e-3 if dtype == "float16" else 1e-6
    feeds = {z: zv, labels: lv, probs: pv}
    for run in [evaluate(outs, feeds)] + compiled_runs([z, labels, probs], outs, feeds):
        for got in run:
            np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol)


# the mean of small integers -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "bool"])
def test_mean_var_std_of_small_integers_do_not_wrap_around(dtype):
    """mean summed in the input's dtype, then cast to float32: the mean of uint8 pixels
    [200, 200, 200] was 29.33 ((600 mod 256) / 3), var and std too. Now summed as float32
    (the documented dtype of an integer mean): NumPy's values."""
    x = gc.placeholder((None, 3), dtype, "x")
    xv = np.array([[100, 100, 100], [120, 7, 3]] if dtype in ("int8", "bool") else
                  [[200, 200, 200], [250, 7, 3]] if dtype == "uint8" else
                  [[20000, 20000, 20000], [-32000, 7, 3]]).astype(dtype)
    outs = [gc.mean(x), gc.mean(x, axis=1), gc.mean(x, axis=0, keepdims=True),
            gc.var(x, axis=1), gc.std(x)]
    want = [xv.mean(), xv.mean(1), xv.mean(0, keepdims=True), xv.var(1), xv.std()]
    for run in [evaluate(outs, {x: xv})] + compiled_runs([x], outs, {x: xv}):
        for got, w in zip(run, want):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, w, rtol=1e-6)


@pytest.mark.parametrize("reverse", [False, True])
def test_float16_cumsum_accumulates_in_float32_as_sum_does(reverse):
    """cumsum summed float16 in float16 along the axis: 8192 values of ~0.1 came out 1.8 %
    off (sum already accumulates in float32 for this); now float32 inside, float16 out."""
    x = gc.placeholder((2, 8192), "float16", "x")
    xv = (np.random.default_rng(0).standard_normal((2, 8192)) * 0.1).astype(np.float16)
    out = gc.cumsum(x, axis=1, reverse=reverse)
    a = xv.astype(np.float64)
    want = np.cumsum(a[:, ::-1], 1)[:, ::-1] if reverse else np.cumsum(a, 1)
    for got in (out.eval({x: xv}), gc.function([x], out)(xv)):
        assert got.dtype == np.float16
        assert np.abs(got.astype(np.float64) - want).max() < 2e-3 * np.abs(want).max()


def test_cumsum_cumprod_argsort_of_a_0d_node_are_0d_as_their_shape_rule():
    """The shape rule said () (PyTorch's cumsum of a 0-d tensor is 0-d); NumPy's kernels
    returned (1,) (and the gradient came back (1,) for a () input) or raised (reverse).
    Now the kernels return x itself (argsort: 0), gradients ()."""
    x = gc.placeholder((), "float64", "x")
    outs = [gc.cumsum(x, axis=0), gc.cumsum(x, axis=-1, reverse=True),
            gc.cumprod(x, axis=0), gc.cumprod(x, axis=0, reverse=True)]
    outs += [gc.grad(gc.sum(o * x), [x])[0] for o in outs] + [gc.argsort(x)]
    want = [2.0] * 4 + [4.0] * 4 + [0]
    for run in [evaluate(outs, {x: np.array(2.0)})] + compiled_runs([x], outs,
                                                                    {x: np.array(2.0)}):
        for got, o, w in zip(run, outs, want):
            assert got.shape == () and got.dtype == o.dtype and got == w
