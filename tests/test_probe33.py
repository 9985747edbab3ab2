"""probe33: a hostile probe of what landed this session -- sigmoid as 1 / (1 + e^-x), user ops
checked against their rules, the compiled call's lock wait, fresh outputs' dtypes, probe30's
pass changes -- against eval: optimized or not, check_numerics, several calls of two batch
sizes, the standalone export, with NumPy's warnings as errors. One test per bug found, each
failing before its fix, then guards of what held.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS


@pytest.fixture
def user_op():
    """Register the test's own ops for one test only (the op table's tests want a row for
    every registered op)."""
    names = []

    def register(name, infer, kernel, **kw):
        gc.register_op(gc.OpDef(name, infer, kernel, **kw))
        names.append(name)
    try:
        yield register
    finally:
        for name in names:
            OPS.pop(name, None)


def same_rule(x, **attrs):
    return x.shape, x.dtype, attrs


# user ops in fused groups ---------------------------------------------------------------------

@pytest.mark.parametrize("kernel, got", [
    (lambda x: x[:1] * 2, "(1, 4) float32"),
    (lambda x: x.astype(np.float64), "(3, 4) float64")])
def test_a_user_kernel_that_breaks_its_rule_is_refused_inside_a_fused_group(user_op, kernel,
                                                                             got):
    """An elementwise user op fused with others: its kernel was called raw inside the group
    and its value copied into the group's buffer (casting='unsafe'), so a row broadcast over
    the batch and a float64 value were taken where eval and optimize=False refuse them."""
    user_op("probe33_bad", same_rule, kernel, vjp=lambda g, out, x: (g,), elementwise=True)
    x = gc.placeholder((None, 4), "float32", name="x")
    y = gc.exp(gc.apply("probe33_bad", x)) * 2 + x
    xv = np.ones((3, 4), np.float32)
    want = re.escape(f"the kernel of probe33_bad returned {got}, but its shape rule gives "
                     "(3, 4) float32")
    with pytest.raises(gc.GraphcError, match=want):
        y.eval({x: xv})
    for opt, check in ((False, False), (True, False), (True, True)):
        f = gc.function([x], y, optimize=opt, check_numerics=check)
        with pytest.raises(gc.GraphcError, match=want + r"[\s\S]*test_probe33.py"):
            f(xv)


def test_a_correct_user_kernel_in_fused_groups_of_one_form_runs_as_eval(user_op, tmp_path):
    """Two groups of the same form and a correct user kernel (a list, a view of its input):
    each as eval computes it, over calls of two batch sizes and in the export."""
    from tests.helpers import load_module
    user_op("probe33_neg", same_rule, lambda x: (-x).tolist(), vjp=lambda g, out, x: (-g,),
            elementwise=True)
    user_op("probe33_view", same_rule, lambda x: x, vjp=lambda g, out, x: (g,),
            elementwise=True)
    x = gc.placeholder((None, 3), "float64", name="x")
    outs = [gc.exp(gc.apply("probe33_neg", x)) * 2 + 1,
            gc.exp(gc.apply("probe33_neg", x + 1)) * 2 + 1,
            gc.apply("probe33_view", x) * 3 + x]
    f = gc.function([x], outs)
    feeds = [np.arange(6.).reshape(2, 3), np.arange(3.).reshape(1, 3)]
    for xv in feeds + feeds:
        kept = xv.copy()
        for got, want in zip(f(xv), [o.eval({x: xv}) for o in outs]):
            np.testing.assert_allclose(got, want, rtol=1e-15)
        np.testing.assert_array_equal(xv, kept)
    mod = load_module(f.export(str(tmp_path / "p33.py")), "probe33_fused_export")
    for got, want in zip(mod.run(feeds[0]), [o.eval({x: feeds[0]}) for o in outs]):
        np.testing.assert_allclose(got, want, rtol=1e-15)


def test_a_user_op_whose_shape_the_values_decide_is_refused_compiled_as_that(user_op):
    """A rule leaving a dim to the values ((None,) for x[x > 0]): the plan takes the first
    call's shape by a dry run, and a later call of the same input shape with another count
    was refused as a kernel breaking its rule ("its shape rule gives (2,)"), which it does not
    break (eval runs it). The error now says what a compiled function cannot do."""
    user_op("probe33_positives", lambda x: ((None,), x.dtype, {}), lambda x: x[x > 0])
    x = gc.placeholder((None,), "float64", name="x")
    y = gc.apply("probe33_positives", x) * 2
    first, other = np.array([1., -1, 2]), np.array([1., 2, 3])
    np.testing.assert_array_equal(y.eval({x: other}), [2., 4, 6])
    for opt in (True, False):
        f = gc.function([x], y, optimize=opt)
        np.testing.assert_array_equal(f(first), [2., 4])
        with pytest.raises(gc.GraphcError, match=re.escape(
                "the kernel of probe33_positives returned (3,), where this compiled plan has "
                "(2,): its shape rule gives (?,), a shape the values decide") +
                r"[\s\S]*test_probe33.py"):
            f(other)
        np.testing.assert_array_equal(f(first[::-1]), [4., 2])


# the compiled call's locks -----------------------------------------------------------------

@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("optimize", [True, False])
def test_a_user_kernel_calling_its_own_function_is_refused_not_wrong(user_op, optimize, fused):
    """A user's kernel calling the Function that runs it, with feeds of the same shapes: the
    locks are re-entrant, so the inner call ran the same plan and wrote over the buffers the
    outer call was still reading (its result silently wrong). Refused now, naming the user's
    line; another shape (another plan) and another Function of the same graph still run."""
    box, inner = {}, []

    def kernel(a):
        if box:
            f, feed = box.popitem()
            inner.append(f(feed))
        return a * 1.0
    user_op("probe33_calls", same_rule, kernel, elementwise=fused)
    x = gc.placeholder((None, 3), "float64", name="x")
    W = gc.variable(np.eye(3), name="W")
    t = gc.tanh(x @ W)
    row = gc.sum(t * 3, axis=1, keepdims=True) @ gc.constant(np.ones((1, 3)))
    u = gc.apply("probe33_calls", row)
    out = gc.sum(((u + 1) * 2 + t) @ W, axis=1)
    xv = np.arange(6.).reshape(2, 3) / 10
    want = out.eval({x: xv})
    f = gc.function([x], out, optimize=optimize)
    np.testing.assert_allclose(f(xv), want, rtol=1e-14)
    box[f] = np.full((2, 3), 0.5)
    with pytest.raises(gc.GraphcError, match=r"called from inside its own call[\s\S]*"
                                             r"test_probe33.py"):
        f(xv)
    np.testing.assert_allclose(f(xv), want, rtol=1e-14)     # not left refusing
    for other, feed in ((f, np.full((4, 3), 0.5)),
                        (gc.function([x], out, optimize=optimize), np.full((2, 3), 0.5))):
        box[other] = feed
        np.testing.assert_allclose(f(xv), want, rtol=1e-14)
        np.testing.assert_allclose(inner.pop(), out.eval({x: feed}), rtol=1e-14)


# dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", [">", "<"])
@pytest.mark.parametrize("dtype", ["f4", "f8", "i4", "f2"])
def test_nodes_of_arrays_in_another_byte_order_have_native_dtypes(order, dtype):
    """A '>f4' placeholder, variable or constant kept that dtype as its node's: x * 2 was
    '<f4' but sum(x) '>f4' (compiled and eval), and no update of a '>f4' variable was
    accepted ("update of 'W' (3,) float32: new value has (3,) float32")."""
    dt = np.dtype(order + dtype)
    x = gc.placeholder((None, 3), dt, name="x")
    W = gc.variable(np.arange(3).astype(dt), name="W")
    c = gc.constant(np.arange(3).astype(dt))
    native = dt.newbyteorder("=")
    assert x.dtype.str == W.dtype.str == c.dtype.str == native.str
    assert W.value.dtype.str == c.data.dtype.str == native.str
    outs = [x * W + c, gc.sum(x * c, axis=0), gc.where(gc.greater(x, c), x, W)]
    xv = np.arange(6).reshape(2, 3).astype(dt)
    start = W.value.copy()
    want = [o.eval({x: xv}) for o in outs]
    for opt in (True, False):
        W.value = start
        f = gc.function([x], outs, updates=[(W, W + c)], optimize=opt)
        for got, w in zip(f(xv), want):
            assert got.dtype.str == w.dtype.str == native.str
            np.testing.assert_array_equal(got, w)
        np.testing.assert_array_equal(W.value, start * 2)


# probe30's rules on other graphs --------------------------------------------------------------

def test_the_sum_of_a_pooling_gradient_whose_g_is_another_pool_compiles():
    """sum_pool_grad's where(top == top, g, 0) took its zero from zeros(g), None for a g of
    unknown dims that none of its inputs has (a pool of another input): the optimizer raised
    "where(..., None): constant: unsupported value of dtype object" naming the user's line."""
    x = gc.placeholder((None, 2, 5, 5), "float64", name="x")
    w = gc.placeholder((None, 2, 5, 5), "float64", name="w")
    loss = gc.sum(gc.max_pool2d(x, 2) * gc.max_pool2d(w, 2))
    out = gc.sum(gc.grad(loss, [x])[0], axis=(2, 3))
    rng = np.random.default_rng(0)
    xv, wv = rng.standard_normal((2, 3, 2, 5, 5))
    xv[0, 0, :2, :2] = np.nan
    want = out.eval({x: xv, w: wv})
    for opt in (True, False):
        got = gc.function([x, w], out, optimize=opt)(xv, wv)
        np.testing.assert_allclose(got, want, rtol=1e-14)


# guards of what held ------------------------------------------------------------------------

SPECIAL = [-np.inf, np.inf, np.nan, -0.0, 0.0, -1e4, -120, -89, -20, -11.5, -5, -1e-8, 3, 17,
           40, 1e4]


def logistic(x):
    """sigmoid in float64, exact to rounding for every x."""
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        return np.where(x >= 0, 1 / (1 + np.exp(-x)), np.exp(x) / (1 + np.exp(x)))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_sigmoid_at_special_values_is_eval_everywhere_without_a_warning(dtype, tmp_path):
    """Alone, fused with other ops (silu, with a softplus sharing its exp), optimized or not,
    check_numerics on finite values, the export: eval's values (to rounding where a pass
    regroups them), no NumPy warning; eval within 4 ulps of the float64 logistic where that
    is a normal number (below it: 0 or a subnormal)."""
    from tests.helpers import load_module
    with np.errstate(over="ignore"):
        xv = np.array(SPECIAL, dtype)
    x = gc.placeholder((None,), dtype, name="x")
    outs = [gc.sigmoid(x), gc.silu(x) * 2 + 1, gc.softplus(x) + gc.sigmoid(x)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        want = [o.eval({x: xv}) for o in outs]
        ref = logistic(xv)
        normal = ref >= np.finfo(dtype).tiny
        err = np.abs(want[0][normal] - ref[normal]) / np.spacing(ref[normal].astype(dtype))
        assert err.max() <= 4, err
        assert not np.signbit(want[0][~np.isnan(xv)]).any()
        finite = np.isfinite(xv)
        for opt, check in ((True, False), (False, False), (True, True)):
            f = gc.function([x], outs, optimize=opt, check_numerics=check)
            for feed in ((xv[finite],) if check else (xv, xv[:4], xv)):
                ws = [o.eval({x: feed}) for o in outs]
                for got, w in zip(f(feed), ws):
                    assert got.dtype == w.dtype
                    np.testing.assert_allclose(got, w, rtol=4 * np.finfo(dtype).eps,
                                               atol=np.finfo(dtype).tiny, equal_nan=True)
        f = gc.function([x], outs)
        f(xv)
        mod = load_module(f.export(str(tmp_path / f"sig_{dtype}.py")), f"probe33_sig_{dtype}")
        for got, w in zip(mod.run(xv), f(xv)):
            np.testing.assert_array_equal(got, w)


def test_sigmoids_first_and_second_derivatives_at_large_inputs_compiled_and_eval():
    """s(1 - s) and s(1 - s)(1 - 2s) in float64 from -700 to 40 (relative to the values, tiny
    as they are), compiled and eval; finite differences where they resolve."""
    xv = np.array([-700., -100, -40, -5, -0.5, 0, 0.5, 5, 30])
    x = gc.placeholder((None,), "float64", name="x")
    g = gc.grad(gc.sum(gc.sigmoid(x)), [x])[0]
    gg = gc.grad(gc.sum(g), [x])[0]
    s = logistic(xv)
    for got in ([g.eval({x: xv}), gg.eval({x: xv})], gc.function([x], [g, gg])(xv)):
        np.testing.assert_allclose(got[0], s * (1 - s), rtol=1e-13, atol=0)
        np.testing.assert_allclose(got[1], s * (1 - s) * (1 - 2 * s), rtol=1e-12, atol=0)
    h, mid = 1e-6, np.abs(xv) < 10
    fd = (logistic(xv[mid] + h) - logistic(xv[mid] - h)) / (2 * h)
    np.testing.assert_allclose(gc.function([x], g)(xv)[mid], fd, rtol=1e-8)


def test_threads_calling_functions_whose_user_kernel_calls_another_sharing_variables(user_op):
    """f's user kernel calls g, which updates a variable f updates too (re-entrant storage
    locks, another plan); two threads call f while a third calls g: no deadlock, no update
    lost (each f call adds 2 to W, each g call 1)."""
    import threading
    G = {}
    user_op("probe33_callg", same_rule, lambda a: (G["g"](a[:1]), a * 1.0)[1])
    x = gc.placeholder((None, 2), "float64", name="x")
    W = gc.variable(np.zeros(2), name="W")
    V = gc.variable(np.zeros(2), name="V")
    G["g"] = gc.function([x], gc.sum(x + W), updates=[(W, W + 1)])
    f = gc.function([x], gc.apply("probe33_callg", x * W), updates=[(W, W + 1), (V, V + 1)])
    calls, errors = 30, []

    def run(fn):
        try:
            for _ in range(calls):
                fn(np.ones((2, 2)))
        except Exception as e:      # noqa: BLE001 (reported below)
            errors.append(e)
    threads = [threading.Thread(target=run, args=(fn,)) for fn in (f, f, G["g"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and not errors, errors
    np.testing.assert_array_equal(W.value, [5 * calls] * 2)
    np.testing.assert_array_equal(V.value, [2 * calls] * 2)


def test_onnx_save_of_a_graph_with_a_user_op_names_the_node(user_op, tmp_path):
    """The error named only the op ("no ONNX export for op(s) ['probe33_neg']"): now also its
    inputs' shapes and the user's line, as every user error does."""
    pytest.importorskip("onnx")
    import graphc.onnx as gonnx
    user_op("probe33_neg", same_rule, np.negative, elementwise=True)
    x = gc.placeholder((None, 3), "float32", name="x")
    y = gc.apply("probe33_neg", x) * 2
    with pytest.raises(gc.GraphcError, match=re.escape(
            "no ONNX export for op(s) ['probe33_neg']\n  probe33_neg((?, 3) float32) built at "
            "test_probe33.py:")):
        gonnx.save(str(tmp_path / "m.onnx"), [x], [y])
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_that_cannot_write_a_fused_user_kernel_names_the_op(user_op, tmp_path):
    """A user's kernel in a fused group has a plan name of its own (kernel_<op>_<k>): the
    export's error names the op, not that name."""
    import threading
    lock = threading.Lock()

    def kernel(x):
        with lock:
            return -x
    user_op("probe33_locked", same_rule, kernel, elementwise=True)
    x = gc.placeholder((None, 3), "float64", name="x")
    f = gc.function([x], gc.exp(gc.apply("probe33_locked", x)) * 2)
    f(np.ones((2, 3)))
    with pytest.raises(gc.GraphcError, match=re.escape("the kernel of op 'probe33_locked' holds")):
        f.export(str(tmp_path / "locked.py"))
