"""The compiled runtime: same values as node.eval, simultaneous updates, feeds, numerics."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS, Graph, apply

RNG = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def compiled_equals_eval(outputs, feeds, optimize=False, rtol=1e-5, atol=1e-6):
    """Compile outputs, run on feeds; compare with the reference interpreter. Summation order
    may differ (float32): atol scales with the output's largest magnitude."""
    f = gc.function(list(feeds), outputs, optimize=optimize)
    got = f(*feeds.values())
    for o, g in zip(outputs, got):
        want = o.eval(feeds)
        assert g.shape == want.shape and g.dtype == want.dtype, o
        finite = want[np.isfinite(want)] if want.dtype.kind == "f" else np.zeros(0)
        scale = max(1.0, float(np.max(np.abs(finite), initial=0.0)))
        np.testing.assert_allclose(g, want, rtol=rtol, atol=atol * scale, err_msg=str(o))
    return f


# elementwise specifics (every op is compiled row by row in tests/test_ops_compiled.py) ------

def test_where_and_cast_compiled_equal_eval():
    a = gc.placeholder((None, 3), name="a")
    b = gc.placeholder((None, 3), name="b")
    out = gc.where(gc.greater(a, b), a * 2.0, b)
    compiled_equals_eval([out, gc.cast(out, "int32"), gc.cast(a, "float64")],
                         {a: rand(4, 3), b: rand(4, 3)})


def test_where_with_zero_masks_inf_and_nan_of_the_other_branch():
    x = gc.placeholder((None,), dtype="float64", name="x")
    y = gc.placeholder((None,), dtype="float64", name="y")
    safe_log = gc.where(gc.greater(x, 0.0), gc.log(x), 0.0)
    (gy,) = gc.grad(gc.sum(gc.pow(x, y)), [y])          # log(0) masked at a zero base
    feeds = {x: np.array([-1.0, 0.0, 2.0]), y: np.array([2.0, 1.0, 0.5])}
    compiled_equals_eval([safe_log, gy], feeds)
    for optimize in (True, False):
        out = gc.function([x, y], [safe_log, gy], optimize=optimize)(*feeds.values())
        np.testing.assert_allclose(out[0], [0.0, 0.0, np.log(2.0)])
        np.testing.assert_allclose(out[1], [0.0, 0.0, np.sqrt(2.0) * np.log(2.0)])


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_relu_gradient_masks_inf_and_keeps_huge_finite_values(dtype):
    """where(h > 0, g, 0) runs as g * mask plus a finiteness test of the product (a sum of
    squares for float32/64): inf/NaN that the mask drops, and finite values whose squares
    overflow that test, must both give where's values."""
    big = float(np.finfo(dtype).max) / 4
    h = gc.placeholder((None, 4), dtype=dtype, name="h")
    g = gc.placeholder((None, 4), dtype=dtype, name="g")
    (dh,) = gc.grad(gc.sum(gc.relu(h) * g), [h])
    hv = np.array([[1, -1, 2, -2], [3, 0, -1, 4]], dtype)
    for gv in ([[big, np.inf, -big, np.nan], [1, 2, np.inf, -big]],
               [[big, 1, -big, 2], [1, 2, 3, -big]]):
        gv = np.array(gv, dtype)
        want = np.where(hv > 0, gv, 0).astype(dtype)
        for optimize in (True, False):
            got = gc.function([h, g], dh, optimize=optimize)(hv, gv)
            np.testing.assert_array_equal(got, want)

def test_dropout_mask_advances_per_call_and_starts_at_the_seed():
    x = gc.placeholder((3, 50), name="x")
    mask = apply("dropout_mask", x, keep=0.5, seed=7)
    f = gc.function([x], mask)
    xv = np.ones((3, 50), np.float32)
    first, second = f(xv), f(xv)
    np.testing.assert_array_equal(first, mask.eval({x: xv}))     # same seed, same first draw
    assert not np.array_equal(first, second)                     # the generator advances
    assert set(np.unique(first)) == {0.0, 1.0}


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
@pytest.mark.parametrize("optimize", [False, True])
def test_cnn_gradients_compiled_equal_eval(stride, padding, optimize):
    """conv (both layouts), relu, max-pool with ties, their gradients, paired reuse."""
    x = gc.placeholder((None, 3, 9, 9), name="x")
    w1 = gc.placeholder((8, 3, 3, 3), name="w1")
    w2 = gc.placeholder((9, 8, 3, 3), name="w2")
    h = gc.relu(gc.conv2d(x, w1, stride=stride, padding=padding))
    h = gc.max_pool2d(h, 2)
    h = gc.relu(gc.conv2d(h, w2, padding=1))
    loss = gc.sum(h * h)
    grads = gc.grad(loss, [x, w1, w2])
    feeds = {x: rand(2, 3, 9, 9), w1: rand(8, 3, 3, 3), w2: rand(9, 8, 3, 3)}
    compiled_equals_eval([loss] + grads, feeds, optimize=optimize, rtol=2e-4, atol=1e-4)


@pytest.mark.parametrize("optimize", [False, True])
def test_softmax_cross_entropy_forward_and_gradient_in_one_pass(optimize):
    z = gc.placeholder((None, 5), name="z")
    y = gc.placeholder((None,), dtype="int64", name="y")
    loss = gc.mean(gc.softmax_cross_entropy(z * 2.0, y))
    f = compiled_equals_eval([loss, gc.grad(loss, z)], {z: rand(6, 5), y: RNG.integers(0, 5, 6)},
                             optimize=optimize)
    assert "xp.sce_forward" in f.source and "xp.sce_backward" in f.source
    with pytest.raises(gc.GraphcError, match="label 5 is out of range"):
        f(rand(6, 5), np.array([0, 1, 2, 3, 4, 5]))


# gradients of whole models, compiled vs reference -------------------------------------------

def mlp_loss(x, y_onehot, W1, b1, W2, b2):
    h = gc.relu(gc.matmul(x, W1) + b1) if hasattr(gc, "matmul") else gc.relu(x @ W1 + b1)
    z = h @ W2 + b2
    p = gc.sigmoid(z)
    return gc.sum((p - y_onehot) * (p - y_onehot)) * 0.5


def test_training_step_matches_reference_and_updates():
    x = gc.placeholder((None, 5), name="x")
    t = gc.placeholder((None, 3), name="t")
    params = [gc.variable(rand(5, 4), name="W1"), gc.variable(rand(4), name="b1"),
              gc.variable(rand(4, 3), name="W2"), gc.variable(rand(3), name="b2")]
    loss = mlp_loss(x, t, *params)
    grads = gc.grad(loss, params)
    before = [p.value.copy() for p in params]
    feeds = {x: rand(7, 5), t: rand(7, 3)}
    want_loss = loss.eval(feeds)
    want_grads = [g.eval(feeds) for g in grads]
    step = gc.function([x, t], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    got = step(feeds[x], feeds[t])
    np.testing.assert_allclose(got, want_loss, rtol=1e-5)
    for p, b, g in zip(params, before, want_grads):
        np.testing.assert_allclose(p.value, b - np.float32(0.1) * g, rtol=1e-5, atol=1e-6)
    # the same graph through the compiled gradients
    f = gc.function([x, t], grads)
    for g, want in zip(f(feeds[x], feeds[t]), [g.eval(feeds) for g in grads]):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_outputs_keep_their_form_and_are_not_overwritten():
    x = gc.placeholder((None, 2), name="x")
    f1 = gc.function([x], x * 2.0)
    f2 = gc.function([x], [x * 2.0])
    a = f1(np.ones((1, 2), np.float32))
    assert isinstance(a, np.ndarray) and a.tolist() == [[2, 2]]
    assert isinstance(f2(np.ones((1, 2), np.float32)), list)
    f1(np.full((1, 2), 5, np.float32))
    assert a.tolist() == [[2, 2]]          # a later call does not reuse the returned array


# updates ----------------------------------------------------------------------------------

def test_updates_are_simultaneous_swap():
    a = gc.variable(np.array([1.0, 2.0], np.float32), name="a")
    b = gc.variable(np.array([3.0, 4.0], np.float32), name="b")
    swap = gc.function([], [], updates=[(a, b), (b, a)])
    swap()
    assert a.value.tolist() == [3, 4] and b.value.tolist() == [1, 2]
    storage = a.value
    swap()
    assert a.value is storage and a.value.tolist() == [1, 2]   # written in place


def test_updates_read_old_values_everywhere():
    a = gc.variable(np.array(1.0, np.float32), name="a")
    b = gc.variable(np.array(10.0, np.float32), name="b")
    f = gc.function([], a + b, updates=[(a, a + b), (b, a * b)])
    assert float(f()) == 11.0
    assert float(a.value) == 11.0 and float(b.value) == 10.0


def test_outputs_are_values_from_before_the_updates():
    a = gc.variable(np.array([1.0, 2.0], np.float32), name="a")
    f = gc.function([], [a, a * 2.0], updates=[(a, a + 1.0)])
    old, twice = f()
    assert old.tolist() == [1, 2] and twice.tolist() == [2, 4]
    assert a.value.tolist() == [2, 3]


def test_failing_call_changes_nothing():
    w = gc.variable(np.ones(3, np.float32), name="w")
    x = gc.placeholder((None, 3), name="x")
    f = gc.function([x], gc.sum(x * w), updates=[(w, w + gc.sum(gc.log(x), axis=0))],
                    check_numerics=True)
    with pytest.raises(gc.GraphcError):
        f(np.ones((2, 4), np.float32))               # bad feed
    assert w.value.tolist() == [1, 1, 1]
    with pytest.raises(gc.GraphcError, match="check_numerics"):
        f(-np.ones((2, 3), np.float32))              # log of negatives: NaN
    assert w.value.tolist() == [1, 1, 1]
    f(np.ones((2, 3), np.float32))
    assert w.value.tolist() == [1, 1, 1]             # log(1) = 0


def test_failing_call_after_in_place_updates_changes_nothing():
    """Updates written straight into variables come after every step that can raise."""
    x = gc.placeholder((None, 4), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    W = gc.variable(rand(4, 3), name="W")
    b = gc.variable(rand(3), name="b")
    loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ W + b), y))
    gW, gb = gc.grad(loss, [W, b])
    step = gc.function([x, y], loss, updates=[(W, W - 0.5 * gW), (b, b - 0.5 * gb)])
    xv, storage = rand(5, 4), W.value
    step(xv, np.array([0, 1, 2, 0, 1]))
    before = (W.value.copy(), b.value.copy())
    with pytest.raises(gc.GraphcError, match="out of range"):
        step(xv, np.array([0, 1, 7, 0, 1]))
    np.testing.assert_array_equal(W.value, before[0])
    np.testing.assert_array_equal(b.value, before[1])
    assert W.value is storage


# shapes per signature -----------------------------------------------------------------------

def test_varying_batch_sizes_get_their_own_plans():
    x = gc.placeholder((None, 3), name="x")
    W = gc.variable(rand(3, 2), name="W")
    out = gc.relu(x @ W) * 2.0
    f = gc.function([x], out)
    for n in (5, 2, 5, 1):
        xv = rand(n, 3)
        np.testing.assert_allclose(f(xv), out.eval({x: xv}), rtol=1e-6)
    assert sorted(s[0][0] for s in f.plans) == [1, 2, 5]


# errors -------------------------------------------------------------------------------------

def test_numerics_check_names_the_step_and_line():
    x = gc.placeholder((3,), name="x")
    y = gc.log(x)    # the line the error must name
    f = gc.function([x], y * 2.0, check_numerics=True, optimize=False)
    with pytest.raises(gc.GraphcError) as e:
        f(np.array([1, 0, 2], np.float32))
    msg = str(e.value)
    assert "step 0" in msg and "log(" in msg and "Inf" in msg
    assert "test_runtime.py" in msg and y.where in msg


def test_wrong_feeds_give_clear_errors():
    x = gc.placeholder((None, 3), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    f = gc.function([x, y], gc.sum(x) + gc.cast(gc.sum(y), "float32"))
    good = np.ones((2, 3), np.float32)
    with pytest.raises(gc.GraphcError, match="takes 2 inputs"):
        f(good)
    with pytest.raises(gc.GraphcError, match="'x'.*shape.*\\(\\?, 3\\).*\\(2, 4\\)"):
        f(np.ones((2, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(gc.GraphcError, match="'x'.*shape"):
        f(np.ones(3, np.float32), np.zeros(2, np.int64))
    with pytest.raises(gc.GraphcError, match="'x'.*float32.*float64"):
        f(np.ones((2, 3)), np.zeros(2, np.int64))
    with pytest.raises(gc.GraphcError, match="'y'.*int64.*float32"):
        f(good, np.zeros(2, np.float32))
    assert float(f(good, np.ones(2, np.int32))) == 8.0          # safe cast int32 -> int64
    g = gc.function([x, y], gc.sum(x), cast_feeds=True)
    assert float(g(np.ones((2, 3)), np.zeros(2, np.int64))) == 6.0   # float64 -> float32


def test_missing_input_and_bad_updates_are_reported():
    x = gc.placeholder((2,), name="x")
    z = gc.placeholder((2,), name="z")
    with pytest.raises(gc.GraphcError, match="'z'"):
        gc.function([x], x + z)
    w = gc.variable(np.zeros(2, np.float32), name="w")
    with pytest.raises(gc.GraphcError, match="update of 'w'"):
        gc.function([x], x, updates=[(w, gc.sum(x))])
    with pytest.raises(gc.GraphcError, match="'w' is updated twice"):
        gc.function([x], x, updates=[(w, w + x), (w, w - x)])


# looking inside -----------------------------------------------------------------------------

def test_source_has_node_comments_and_profile_is_a_table():
    x = gc.placeholder((None, 4), name="x")
    W = gc.variable(rand(4, 2), name="W")
    f = gc.function([x], gc.sum(gc.relu(x @ W)), optimize=False)
    src = f.source
    assert src.startswith("def run(x0):")
    assert "# %2 = matmul(%0, %1)  # (?, 2) float32" in src
    assert "xp.matmul(x0, w1, out=b0)" in src
    assert "# %3 = relu(%2)" in src
    table = f.profile(rand(8, 4))
    assert "matmul" in table and "relu" in table and "total" in table


def test_fused_and_dense_ops_compile_to_the_same_values():
    if "fused" not in OPS or "dense" not in OPS:
        pytest.skip("the passes package does not register fused/dense yet")
    a = gc.placeholder((None, 4), name="a")
    b = gc.placeholder((4,), name="b")
    i0 = gc.placeholder((None, 4), name="in0")
    i1 = gc.placeholder((4,), name="in1")
    expr = gc.tanh(gc.exp(i0) * i1 + i0) * gc.sigmoid(i1 - 1.0)
    try:
        from graphc.ops.fused import Body
        body = Body([i0, i1], expr)
    except ImportError:
        body = Graph([expr])
    fused = apply("fused", a, b, body=body)
    W = gc.placeholder((4, 3), name="W")
    bias = gc.placeholder((3,), name="bias")
    outs = [fused]
    for act in (None, "relu", "sigmoid", "tanh"):
        outs.append(apply("dense", a, W, bias, activation=act, transpose_a=False,
                          transpose_b=False))
    outs.append(apply("dense", a, a, activation=None, transpose_a=True, transpose_b=False))
    compiled_equals_eval(outs, {a: rand(5, 4), b: rand(4), W: rand(4, 3), bias: rand(3)})


def test_overlapping_max_pool_gradient_compiled_equals_eval():
    x = gc.placeholder((None, 2, 7, 7), name="x")
    g = gc.placeholder((None, 2, 3, 3), name="g")
    xv = np.round(rand(3, 2, 7, 7))                  # many ties
    out = apply("max_pool2d_grad", g, x, size=3, stride=2)
    compiled_equals_eval([gc.max_pool2d(x, 3, stride=2), out], {x: xv, g: rand(3, 2, 3, 3)})


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("optimize", [False, True])
def test_random_elementwise_graphs_compiled_equal_eval(seed, optimize):
    """Buffer reuse, in-place steps and fusion on random DAGs (several outputs, updates)."""
    rng = np.random.default_rng(seed)
    a = gc.placeholder((None, 4), name="a")
    b = gc.placeholder((4,), name="b")
    w = gc.variable(rand(5, 4), name="w")
    nodes = [a, b, w, a * 0.5]
    ops = [gc.add, gc.sub, gc.mul, gc.maximum, gc.minimum]
    for _ in range(14):
        x, y = (nodes[i] for i in rng.integers(0, len(nodes), 2))
        kind = rng.integers(0, 4)
        if kind == 0:
            nodes.append(ops[rng.integers(0, len(ops))](x, y))
        elif kind == 1:
            nodes.append([gc.tanh, gc.sigmoid, gc.relu, gc.neg, gc.softplus][rng.integers(0, 5)](x))
        elif kind == 2:
            nodes.append(gc.where(gc.greater(x, y), x, 0.0))
        else:
            nodes.append(gc.sum(x, axis=0) + y if x.ndim == 2 else x * 2.0)
    outs = nodes[-4:]
    feeds = {a: rand(5, 4), b: rand(4)}
    last = nodes[-1] if nodes[-1].shape == w.shape else w + gc.sum(nodes[-1])
    want_update, want = last.eval(feeds), [o.eval(feeds) for o in outs]
    compiled_equals_eval(outs, feeds, optimize=optimize)
    g = gc.function([a, b], outs, updates=[(w, last)], optimize=optimize)
    for got, expected in zip(g(feeds[a], feeds[b]), want):     # values from before the update
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.value, want_update, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [(0, 2, 3), (0,), (1, 2, 3), (0, 1), (3,), (1, 2), None])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sums_over_leading_and_trailing_axes(axis, keepdims):
    x = gc.placeholder((None, 3, 4, 5), name="x")
    y = gc.sum(x * 2.0, axis=axis, keepdims=keepdims)         # a buffer input
    z = gc.sum(gc.transpose(x, (0, 1, 3, 2)), axis=axis, keepdims=keepdims)   # a view input
    compiled_equals_eval([y, z], {x: rand(6, 3, 4, 5)})


@pytest.mark.parametrize("size,stride", [(2, 2), (3, 2)])
def test_conv_pool_gradients_share_channels_last_copies(size, stride):
    """Unoptimized, the two conv gradients share one channels-last copy of g; optimized
    (the pool reads the conv directly), pooling and its gradient use the conv's own
    channels-last result. Image 0 is all zeros: every window is a tie."""
    x = gc.placeholder((None, 8, 7, 7), name="x")
    w = gc.placeholder((4, 8, 3, 3), name="w")
    b = gc.placeholder((1, 4, 1, 1), name="b")
    h = gc.relu(gc.max_pool2d(gc.conv2d(x, w) + b, size, stride=stride))
    loss = gc.sum(h * h)
    xv = rand(3, 8, 7, 7)
    xv[0] = 0.0
    feeds = {x: xv, w: rand(4, 8, 3, 3), b: rand(1, 4, 1, 1)}
    outs = [loss] + gc.grad(loss, [x, w, b])
    f = compiled_equals_eval(outs, feeds, rtol=2e-4, atol=1e-4)
    assert "fill=True" in f.source and "fill=False" in f.source
    f = compiled_equals_eval(outs, feeds, optimize=True, rtol=2e-4, atol=1e-4)
    assert "top_shadow=" in f.source and "gT=" in f.source
    assert f.source.count("nchw=False") == 2       # no NCHW copy nobody reads
    c = gc.conv2d(x, w)                            # returned too: its NCHW copy is written
    f = compiled_equals_eval(outs + [c], feeds, optimize=True, rtol=2e-4, atol=1e-4)
    assert f.source.count("nchw=False") == 1
    checked = gc.function(list(feeds), outs, check_numerics=True)   # checks every buffer
    assert "nchw=False" not in checked.source
    for got, want in zip(checked(*feeds.values()), f(*feeds.values())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_function_keeps_the_graph_as_built_and_the_optimize_report():
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones((3, 2), np.float32), name="w")
    out = gc.sum(gc.relu(x @ w * 1.0 - 0.0))
    f = gc.function([x], out, updates=[(w, w - 0.1 * gc.grad(out, w))])
    assert isinstance(f.original, Graph) and f.original.outputs[0] is out
    assert f.original.updates[0][0] is w and len(f.original.nodes) > len(f.graph.nodes)
    assert f.report.rules["mul_one"] >= 1 and f.report.rules["sub_zero"] >= 1
    names = [p[0] for p in f.report.passes]
    assert names[0] == "eliminate_dead_code" and "fuse_elementwise" in names
    assert f.report.passes[-1][2] == len(f.graph.nodes)
    assert "mul_one" in str(f.report)
    plain = gc.function([x], out, optimize=False)
    assert plain.report is None and plain.graph.outputs[0] is out


def test_function_repr_svg_draws_the_compiled_graph():
    pytest.importorskip("graphviz")
    x = gc.placeholder((None, 3), name="x")
    f = gc.function([x], gc.sum(gc.tanh(x) * 2.0))
    svg = f._repr_svg_()
    if svg is None:             # no `dot` binary: Jupyter falls back to the repr
        pytest.skip("graphviz `dot` is not installed")
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


def test_outputs_come_back_in_the_form_given():
    x = gc.placeholder((None, 2), name="x")
    xv = np.ones((3, 2), np.float32)
    assert isinstance(gc.function([x], x * 2.0)(xv), np.ndarray)
    assert isinstance(gc.function([x], [x * 2.0])(xv), list)
    pair = gc.function([x], (x * 2.0, x + 1.0))(xv)
    assert isinstance(pair, tuple) and np.array_equal(pair[1], xv + 1)


def test_a_placeholder_given_twice_as_input_is_refused():
    x = gc.placeholder((2,), name="x")
    with pytest.raises(gc.GraphcError, match="placeholder 'x' is an input twice"):
        gc.function([x, x], x * 2.0)


def test_a_call_silences_floating_point_warnings_and_restores_the_callers_state():
    import warnings
    x = gc.placeholder((3,), "float32", name="x")
    f = gc.function([x], gc.exp(x) / x)
    before = np.geterr()
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(2):                  # the first call builds the plan, the next is fast
            out = f(np.array([1e4, 0.0, 1.0], np.float32))
        inside = np.geterr()
    assert np.isinf(out[:2]).all() and np.isclose(out[2], np.e)      # overflow, 1 / 0
    assert inside["over"] == "raise" and np.geterr() == before
