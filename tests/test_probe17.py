"""Regressions found by probing the speed work of issue 17 as a hostile user: each test
failed before its fix (values against NumPy in float64, promises of the compiled call)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc import GraphcError
from graphc.ir import OPS


# a call that raises leaves every variable as it was ---------------------------------------

@pytest.mark.parametrize("fused", [False, True], ids=["pow", "fused-pow"])
def test_integer_pow_failing_after_a_direct_update_leaves_variables_whole(fused):
    # NumPy raises on an integer to a negative integer power, whatever errstate says: the
    # update of v (one in-place add) must not be written before that step has run
    e = gc.placeholder((3,), "int64", name="e")
    v = gc.variable(np.zeros(3), name="v")
    k = gc.variable(np.array([3, 2, 3]), name="k")
    new_k = k ** e + 1 if fused else k ** e
    step = gc.function([e], [], updates=[(v, v + 1.0), (k, new_k)])
    step(np.array([1, 1, 1]))
    before_v, before_k = v.value.copy(), k.value.copy()
    with pytest.raises(GraphcError, match="pow"):
        step(np.array([2, -2, 3]))      # k[0] ** 2 was written into k before k[1] raised
    np.testing.assert_array_equal(v.value, before_v)
    np.testing.assert_array_equal(k.value, before_k)


def checked_sqrt(x):
    if (x < 0).any():
        raise ValueError("checked_sqrt: negative input")
    return np.sqrt(x)


@pytest.fixture
def user_op():
    """A user's elementwise op, registered for one test (the op table test wants a row for
    every op registered while it runs)."""
    gc.register_op(gc.OpDef("probe17_checked_sqrt", lambda x: (x.shape, x.dtype),
                            checked_sqrt, elementwise=True))
    yield "probe17_checked_sqrt"
    OPS.pop("probe17_checked_sqrt")


def test_a_user_kernel_failing_in_a_fused_group_leaves_variables_whole(user_op):
    # an elementwise op without a ufunc template runs its own kernel inside the fused step;
    # that kernel may raise, so no update may be written before it
    x = gc.placeholder((3,), "float64", name="x")
    v, k = gc.variable(np.zeros(3), name="v"), gc.variable(np.ones(3), name="k")
    new_k = gc.apply(user_op, k * x)
    step = gc.function([x], [], updates=[(v, v + 1.0), (k, new_k)])
    assert "fused" in str(step.graph)
    step(np.ones(3))
    with pytest.raises(GraphcError, match="checked_sqrt: negative input"):
        step(-np.ones(3))
    np.testing.assert_array_equal(v.value, np.ones(3))
    np.testing.assert_array_equal(k.value, np.ones(3))


# push_scalar_factors -----------------------------------------------------------------------

def test_float16_learning_rate_is_not_folded_into_an_underflowing_seed():
    # float16's smallest subnormal is 6e-8: the seed 1e-5 / 1024 (moved from the update's
    # product) is 0, so every update vanished, while 1e-5 * (gradient) is representable
    rng = np.random.default_rng(0)
    xv = rng.standard_normal((1024, 8)).astype("float16")
    want = -1e-5 * (xv.astype("float64").T @ np.ones((1024, 3))) / 1024   # tanh'(0) = 1
    for optimize in (False, True):
        x = gc.placeholder((None, 8), "float16", name="x")
        w = gc.variable(np.zeros((8, 3), "float16"), name="w")
        loss = gc.mean(gc.sum(gc.tanh(x @ w), axis=1))
        (gw,) = gc.grad(loss, [w])
        gc.function([x], loss, updates=[(w, w - 1e-5 * gw)], optimize=optimize)(xv)
        np.testing.assert_allclose(w.value.astype("float64"), want, rtol=0.05, atol=1.2e-7,
                                   err_msg=f"optimize={optimize}")


# feeds ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, value", [("int8", [300, 1]), ("int64", [1.5, 2.0]),
                                          ("uint8", [-1, 3]), ("bool", [2, 0]),
                                          ("int64", 2.5), ("float16", [1e5, 1.0])])
def test_a_python_feed_that_does_not_fit_the_dtype_is_an_error(dtype, value):
    # the same values as an array are refused ("cast it first"); as a list they were cast
    # silently (300 -> 44 in int8, label 1.5 -> 1, -1 -> 255, 1e5 -> inf in float16)
    p = gc.placeholder((None,) if isinstance(value, list) else (), dtype, name="p")
    f = gc.function([p], gc.cast(p, "float64"))
    for run in (lambda: f(value), lambda: p.eval({p: value})):
        with pytest.raises(GraphcError, match=f"placeholder 'p'.*{dtype}"):
            run()


@pytest.mark.parametrize("dtype, value", [("float32", [0.1, 2]), ("float16", [1, 2.5]),
                                          ("int8", [-128, 127]), ("bool", [True, 0]),
                                          ("int64", [2.0, -3.0]), ("float64", 3)])
def test_python_feeds_that_fit_are_converted(dtype, value):
    p = gc.placeholder((None,) if isinstance(value, list) else (), dtype, name="p")
    got = gc.function([p], gc.cast(p, "float64"))(value)
    np.testing.assert_array_equal(got, np.asarray(value, dtype).astype("float64"))


@pytest.mark.filterwarnings("ignore:the matrix subclass")
@pytest.mark.parametrize("kind", ["matrix", "masked"])
def test_an_ndarray_subclass_feed_runs_as_its_plain_array(kind):
    # np.matrix and masked arrays went through as themselves: matrix.max() refused keepdims
    # (eval: sum), a masked max skipped masked entries where the graph's max reads them all
    x = gc.placeholder((3, 4), "float64", name="x")
    w = gc.variable(np.arange(8.0).reshape(4, 2), name="w")
    outs = [gc.sum(x, axis=1), gc.max(x, axis=0), x @ w, x * x]
    plain = np.arange(12.0).reshape(3, 4)
    feed = np.matrix(plain) if kind == "matrix" else np.ma.masked_array(plain, plain > 5)
    want = [np.sum(plain, axis=1), np.max(plain, axis=0), plain @ w.value, plain * plain]
    for optimize in (True, False):
        got = gc.function([x], outs, optimize=optimize)(feed)
        for g, v in zip(got, want):
            assert type(g) is np.ndarray
            np.testing.assert_array_equal(g, v)
    for o, v in zip(outs, want):
        np.testing.assert_array_equal(o.eval({x: feed}), v)


# eval -------------------------------------------------------------------------------------

def test_eval_of_a_variable_is_a_value_that_later_updates_do_not_change():
    # eval returned the variable's storage itself (or a view of it): a snapshot taken with
    # eval followed every later in-place update, and writing into it changed the variable
    w = gc.variable(np.ones((2, 3)), name="w")
    step = gc.function([], [], updates=[(w, w + 1.0)])
    snaps = [w.eval(), gc.reshape(w, (3, 2)).eval(), gc.transpose(w).eval()]
    step()
    for s in snaps:
        np.testing.assert_array_equal(s, np.ones(s.shape))
    snaps[0][...] = 7.0
    np.testing.assert_array_equal(w.value, np.full((2, 3), 2.0))


# simplify ---------------------------------------------------------------------------------

NEG_REWRITES = {
    "sub_neg": lambda a, b: a - (-b), "add_neg": lambda a, b: a + (-b),
    "neg_add": lambda a, b: (-b) + a, "mul_neg_neg": lambda a, b: (-a) * (-b),
    "mul_minus_one": lambda a, b: b * gc.constant(np.array(-1, "int8")),
    "zero_sub": lambda a, b: gc.constant(np.array(0, "int8")) - b,
}


@pytest.mark.parametrize("rule", sorted(NEG_REWRITES))
def test_a_negation_that_wraps_before_a_widening_is_not_moved(rule):
    # -b of uint8 wraps (-1 is 255) before int8 - uint8 widens to int16: a - (-b) is not a + b
    a = gc.placeholder((4,), "int8", name="a")
    b = gc.placeholder((4,), "uint8", name="b")
    out = NEG_REWRITES[rule](a, b)
    av, bv = np.array([1, -2, 3, 100], "int8"), np.array([1, 2, 0, 200], "uint8")
    want = out.eval({a: av, b: bv})
    for optimize in (True, False):
        np.testing.assert_array_equal(gc.function([a, b], out, optimize=optimize)(av, bv), want)


# dtype rules -------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["left_shift", "right_shift", "trunc_divide"])
def test_bool_shifts_and_quotients_declare_the_dtype_their_kernel_gives(op):
    # NumPy computes True << True in int8 (2); the op declared bool, so eval gave an int8
    # array for a bool node and the compiled step failed to cast int8 into its bool buffer
    a, b = gc.placeholder((3,), "bool", name="a"), gc.placeholder((3,), "bool", name="b")
    out = gc.apply(op, a, b)
    av, bv = np.array([True, False, True]), np.array([True, True, False])
    with np.errstate(all="ignore"):            # True // False
        want = OPS[op].kernel(av, bv)
    assert out.dtype == want.dtype
    for optimize in (True, False):
        got = gc.function([a, b], out, optimize=optimize)(av, bv)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_an_exported_module_refuses_a_python_feed_that_does_not_fit(tmp_path):
    import importlib.util
    y = gc.placeholder((None,), "int64", name="y")
    f = gc.function([y], y * 2)
    f.export(tmp_path / "step17.py", np.array([1, 2]))
    spec = importlib.util.spec_from_file_location("step17", tmp_path / "step17.py")
    step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step)
    np.testing.assert_array_equal(step.run([1, 2]), [2, 4])
    with pytest.raises(Exception, match="does not fit dtype int64"):
        step.run([1.5, 2.0])                   # was label 1


# random mixed-dtype elementwise graphs ----------------------------------------------------

MIXED_DTYPES = ["int8", "uint8", "bool", "int16", "uint16", "int64", "float16", "float64"]
MIXED_BINARY = ["sub", "add", "mul", "maximum", "left_shift", "bitwise_xor", "greater"]
MIXED_UNARY = ["neg", "abs", "square", "bitwise_not", "sign", "tanh"]   # finite on finite


def edges(dtype) -> np.ndarray:
    """Values where integer arithmetic wraps (the dtype's ends) and small ones."""
    info = np.iinfo(dtype)
    return np.array([info.min, info.max, info.min + 1, 0, 1, 2, 3, -1, -2, 7], "int64")[
        [True] * 7 + [info.min < 0] * 3].astype(dtype)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(st.sampled_from(MIXED_DTYPES), min_size=3, max_size=3),
       st.lists(st.tuples(st.sampled_from(MIXED_UNARY + MIXED_BINARY), st.integers(0, 3),
                          st.integers(0, 3)), min_size=1, max_size=8),
       st.integers(0, 2 ** 32 - 1))
def test_mixed_dtype_graphs_agree_with_eval(dtypes, steps, seed):
    """Integer wrap-around, widening and bool arithmetic: every compiled mode gives eval's
    values and dtypes (found the negation rewrites of simplify)."""
    rng = np.random.default_rng(seed)
    inputs = [gc.placeholder((None, 3), d, name=f"p{k}") for k, d in enumerate(dtypes)]
    pool = list(inputs)
    for op, i, j in steps:
        args = (pool[i % len(pool)],) + ((pool[-1 - j % len(pool)],)     # j = 0: the last
                                         if op in MIXED_BINARY else ())
        try:
            pool.append(gc.apply(op, *args))
        except GraphcError:
            pass                                  # the op refuses these dtypes
    outs = pool[len(inputs):]
    if not outs:
        return
    feeds = [rng.random((4, 3)) < 0.5 if d == "bool" else
             rng.uniform(-3, 3, (4, 3)).astype(d) if d.startswith("float") else
             rng.choice(edges(np.dtype(d)), (4, 3)) for d in dtypes]
    want = [o.eval(dict(zip(inputs, feeds))) for o in outs]
    for optimize in (True, False):
        for g, w in zip(gc.function(inputs, outs, optimize=optimize)(*feeds), want):
            assert g.dtype == w.dtype and g.shape == w.shape
            tol = 1e-2 if g.dtype == np.float16 else 1e-6
            np.testing.assert_allclose(g.astype("float64"), w.astype("float64"), rtol=tol,
                                       atol=tol)


@pytest.mark.parametrize("dtype, value", [("int8", 300), ("float32", 1e300), ("int16", -70000)])
def test_assigning_values_that_do_not_fit_a_variable_is_an_error(dtype, value):
    # same-kind assignment was cast unsafely: 300 became 44 in int8, 1e300 inf in float32
    w = gc.variable(np.ones(3, dtype), name="w")
    with pytest.raises(GraphcError, match=f"'w'.*do not fit {dtype}"):
        w.value = np.full(3, value, "int64" if isinstance(value, int) else "float64")
    np.testing.assert_array_equal(w.value, np.ones(3, dtype))
    w.value = np.full(3, 2, "int64" if dtype != "float32" else "float64")   # fits: assigned
    np.testing.assert_array_equal(w.value, np.full(3, 2, dtype))


def test_a_function_of_a_python_number_is_a_graphc_error():
    x = gc.placeholder((2,), "float64", name="x")
    with pytest.raises(GraphcError, match="outputs must be a graph node"):
        gc.function([x], 3.0)


# convolution ------------------------------------------------------------------------------

def test_a_cnn_step_on_an_empty_batch_gives_the_interpreters_values():
    # reshape(n, co, -1) cannot infer -1 when n is 0: the compiled conv2d failed on an empty
    # batch (an empty shard, an empty last batch) where eval gives empty results and zeros
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 3, 7, 7), "float64", name="x")
    w1 = gc.variable(rng.standard_normal((8, 3, 3, 3)), name="w1")     # NCHW im2col path
    w2 = gc.variable(rng.standard_normal((4, 8, 2, 2)), name="w2")     # channels-last path
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1)), 2)
    out = gc.conv2d(h, w2, padding=1)
    loss = gc.sum(out * out)
    outs = [out, loss] + gc.grad(loss, [w1, w2, x])
    for n in (0, 2):
        xv = rng.standard_normal((n, 3, 7, 7))
        want = [o.eval({x: xv}) for o in outs]
        for optimize in (True, False):
            got = gc.function([x], outs, optimize=optimize)(xv)
            for g, v in zip(got, want):
                assert g.shape == v.shape
                np.testing.assert_allclose(g, v, rtol=1e-9, atol=1e-9)
