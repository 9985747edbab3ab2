"""probe21: a hostile probe of the newest parts (the compiled call's feed guard, fused groups
mixing float widths, Winograd forced on random stacks, shared step functions, nn models as a
PyTorch user writes them, ONNX round trips, the CLI); one test per bug found, each failing
before its fix.

GRAPHC_PROBE21=N runs N seeds of each generator (mixed-dtype elementwise graphs, feeds of every
kind) instead of 24 and 12: `GRAPHC_PROBE21=500 python3 -m pytest -q tests/test_probe21.py -k
"random_mixed or every_kind"`.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS
from tests.helpers import load_module

SEEDS = int(os.environ.get("GRAPHC_PROBE21", "0"))


class Bounds:
    """A user's settings class that a user op's kernel reads (exported with its source)."""
    low, high = -1.0, 1.0


def clip_kernel(x):
    return np.clip(x, Bounds.low, Bounds.high)


def test_exporting_a_kernel_that_reads_a_class_gives_no_numpy_warning(tmp_path):
    # the export writes a class after its bases; it looked the base `object` up as
    # np.object first, a deprecated name: NumPy warned (FutureWarning) in the user's export
    # call (probe21 met it through a fused group run by the interpreter, fixed below)
    gc.register_op(gc.OpDef("clip_probe21", lambda x: (x.shape, x.dtype), clip_kernel))
    try:
        x = gc.placeholder((None, 3), "float64", name="x")
        y = gc.apply("clip_probe21", x * 2.0)
        f = gc.function([x], y)
        xv = np.array([[0.2, -3.0, 0.7]])
        f(xv)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            path = f.export(tmp_path / "m.py")
        mod = load_module(path, "probe21_m")
        np.testing.assert_array_equal(mod.run(xv), [[0.4, -1.0, 1.0]])
    finally:
        OPS.pop("clip_probe21", None)


def test_fused_groups_with_mixed_dtype_comparisons_compile_and_export(tmp_path):
    # a float32 model comparing with a float64 or int64 value (a mask, a threshold), or a
    # where over float16 and float32 branches: the fused group ran through the interpreter
    # (evaluate over its body), and Function.export refused it with "holds a count object,
    # which cannot be written as Python source"
    c = gc.placeholder((None, 3), "float32", name="c")
    d = gc.placeholder((None, 3), "float64", name="d")
    e = gc.placeholder((None, 3), "float16", name="e")
    i = gc.placeholder((None, 3), "int64", name="i")
    u = gc.placeholder((None, 3), "uint64", name="u")
    outs = [gc.where(c > d, c * 2.0, c), gc.where(c > 0, e, c) * 3.0,
            gc.where(c > i, c, 1.0) * 2.0, gc.cast(gc.equal(i, u), "float32") + c,
            gc.where(i < u, e, 2.0) - 1.0]
    f = gc.function([c, d, e, i, u], outs)
    rng = np.random.default_rng(0)
    calls = []
    for n in (3, 1, 3):
        calls.append([rng.normal(size=(n, 3)).astype(np.float32), rng.normal(size=(n, 3)),
                      rng.normal(size=(n, 3)).astype(np.float16),
                      rng.integers(-2, 3, (n, 3)),
                      np.array([2 ** 63 + 1, 1, 0] * n, np.uint64).reshape(n, 3)])
        calls[-1][3][0, 0] = -1         # -1 < 2**63 + 1 as NumPy compares it, exactly
        want = gc.ir.evaluate(outs, dict(zip([c, d, e, i, u], calls[-1])))
        for got, w in zip(f(*calls[-1]), want):
            assert got.dtype == w.dtype
            np.testing.assert_array_equal(got, w)
    assert "interpreter" not in f.plan_report()
    mod = load_module(f.export(tmp_path / "cmp.py"), "probe21_cmp")
    for got, w in zip(mod.run(*calls[-1]), want):
        np.testing.assert_array_equal(got, w)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "longdouble"])
def test_where_zero_gives_positive_zeros_as_eval(dtype):
    # where(c, g, 0) compiled as g * c gave -0.0 where c is False and g < 0: 1 / where(...)
    # was -inf where eval has inf, exp(-1 / where(...)) inf where eval has 0 (wrong values);
    # g's bits times c as integers keeps every bit of g where c holds and is +0.0 elsewhere
    x = gc.placeholder((None, 5), dtype, name="x")
    c = gc.placeholder((None, 5), "bool", name="c")
    outs = [1.0 / gc.where(c, x, 0.0), gc.exp(-1.0 / gc.where(x > 0, x, 0.0)),
            gc.where(c, x, 0.0), gc.sum(gc.where(c, x * 2.0, 0.0), axis=0)]
    xv = np.array([[-1.0, 2.0, -0.0, 4.0, -2.0], [-3.0, -0.0, 0.5, -1.0, 1.0],
                   [-1.0, 2.0, -0.0, np.inf, np.nan], [-3.0, -0.0, np.nan, -np.inf, 1.0]],
                  dtype)      # finite (g * c kept its -0.0), then inf and NaN (masked or not)
    cv = np.array([[False, True, True, False, False], [False, False, True, True, True]] * 2)
    for optimize in (True, False):
        f = gc.function([x, c], outs, optimize=optimize)
        for rows in (slice(0, 2), slice(1, 2), slice(2, 4)):
            want = gc.ir.evaluate(outs, {x: xv[rows], c: cv[rows]})
            for got, w in zip(f(xv[rows], cv[rows]), want):
                np.testing.assert_array_equal(got, w)
                assert (np.signbit(got) == np.signbit(w)).all()


def test_where_zero_of_integers_bools_and_long_doubles_compiles_as_eval():
    # a long double has no integer of its width to multiply its bits by: the relu gradient of a
    # float128 variable failed at run time ("data type 'i16' not understood"); integers and
    # bools are g * c
    w = gc.variable(np.array([1.0, -2.0, 3.0, -0.5], np.longdouble), name="w")
    i = gc.placeholder((None,), "int32", name="i")
    b = gc.placeholder((None,), "bool", name="b")
    c = i > 0
    outs = [gc.grad(gc.sum(gc.relu(w) * gc.relu(w)), [w])[0], gc.where(c, i * 3, 0),
            gc.where(c, b, False)]
    f = gc.function([i, b], outs)
    for n in (4, 1, 4):
        iv, bv = np.arange(n, dtype=np.int32) - 1, np.arange(n) % 2 == 0
        want = gc.ir.evaluate(outs, {i: iv, b: bv})
        for got, expect in zip(f(iv, bv), want):
            assert got.dtype == expect.dtype
            np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(want[0], [2.0, 0.0, 6.0, 0.0])


# the command line -------------------------------------------------------------------------

def test_render_and_inspect_refuse_to_write_over_the_graph_they_read(tmp_path, capsys,
                                                                     monkeypatch):
    # `graphc render g.json -o g.json` wrote graphviz's JSON (one of its formats) over the
    # saved graph and said "wrote g.json"; `inspect g.json -o g.npz` wrote the page over its
    # parameters
    from graphc.cli import main
    monkeypatch.chdir(tmp_path)
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones((3, 2), np.float32), name="W")
    gc.save([gc.sum(gc.tanh(x @ w))], "g.json")
    before = [(tmp_path / n).read_bytes() for n in ("g.json", "g.npz")]
    for argv in (["render", "g.json", "-o", "g.json"], ["render", "g", "-o", "./g.json"],
                 ["inspect", "g.json", "-o", "g.json"], ["inspect", "g.json", "-o", "g.npz"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"graphc {argv[0]}: error: the output ") and "-o" in err, err
    assert [(tmp_path / n).read_bytes() for n in ("g.json", "g.npz")] == before
    assert main(["render", "g.json", "-o", "g.dot"]) == 0
    assert gc.load("g.json") is not None


def test_demo_refuses_a_negative_seed_as_one_line(capsys):
    # `graphc demo --seed -1` ended in NumPy's bare ValueError traceback
    from graphc.cli import main
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--seed", "-1"])
    assert stop.value.code == 2
    assert "--seed: expected a whole number >= 0, got '-1'" in capsys.readouterr().err


# ONNX round trips of nn models ------------------------------------------------------------

@pytest.mark.parametrize("layer", ["LSTM", "GRU"])
def test_an_rnn_over_sequences_of_any_length_loads_back_from_its_onnx_export(layer, tmp_path):
    # graphc.onnx.load refused graphc's own export of nn.LSTM/GRU over (batch, None, features):
    # the zero state is shaped by the first step, x[0:1] of the unknown time axis, and the
    # importer took only [k:] there
    pytest.importorskip("onnx")
    import graphc.onnx
    from graphc import nn
    x = gc.placeholder((None, None, 3), "float64", name="x")
    rnn = getattr(nn, layer)(4, return_sequences=True, return_state=True, seed=1)
    outs = rnn(x)
    path = str(tmp_path / "rnn.onnx")
    graphc.onnx.save(path, {"x": x}, {f"o{k}": o for k, o in enumerate(outs)})
    m = graphc.onnx.load(path)
    f = gc.function([m.inputs["x"]], [m.outputs[f"o{k}"] for k in range(len(outs))])
    rng = np.random.default_rng(0)
    for shape in ((2, 5, 3), (1, 1, 3), (3, 2, 3)):
        xv = rng.standard_normal(shape)
        for got, o in zip(f(xv), outs):
            np.testing.assert_allclose(got, o.eval({x: xv}), rtol=1e-12, atol=1e-14)
    for got, o in zip(f(np.zeros((2, 0, 3))), outs):     # time 0 (probe22): the zero state
        np.testing.assert_array_equal(got, o.eval({x: np.zeros((2, 0, 3))}))   # is x[0:0]


# the standalone export ----------------------------------------------------------------------

def test_export_with_example_feeds_of_a_new_shape_plans_the_loop_bodies(tmp_path):
    # step.export(path, x, y) for shapes not called yet ("shapes only, nothing runs") of a
    # step with a loop (a GRU, and its backward loop) raised "a loop whose body has not been
    # compiled yet: call the Function once before exporting it", also after calls with other
    # shapes
    from graphc import nn
    x = gc.placeholder((None, None, 3), "float64", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    model = nn.Sequential([nn.GRU(5), nn.Dense(3)], seed=0)
    loss = gc.mean(gc.softmax_cross_entropy(model(x), y))
    step = gc.function([x, y], loss, updates=nn.SGD(0.1).updates(loss, model.params))
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((4, t, 3)), rng.integers(0, 3, 4)) for t in (5, 7, 7, 5)]
    step(*data[0])
    path = step.export(tmp_path / "gru_step.py", *data[1])     # T = 7 never ran
    mod = load_module(path, "probe21_gru")
    want = [step(*d) for d in data[1:]]
    got = [mod.run(*d) for d in data[1:]]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    for v in model.params:
        np.testing.assert_allclose(mod.state[v.name], v.value, rtol=1e-12, atol=1e-15)


def test_the_export_of_a_function_with_cast_feeds_casts_as_it_does(tmp_path):
    # gc.function(..., cast_feeds=True) takes a float64 batch for a float32 input; its
    # exported module refused it ("expected dtype float32, got float64")
    x = gc.placeholder((None, 3), "float32", name="x")
    w = gc.variable(np.ones((3, 2), np.float32), name="W")
    f = gc.function([x], gc.log(x @ w), updates=[(w, w * 1.5)], cast_feeds=True)
    mod = load_module(f.export(tmp_path / "cast.py", np.ones((2, 3), np.float32)),
                      "probe21_cast")
    for v in (np.full((2, 3), 2.0), np.ones((2, 3), np.int64)):
        np.testing.assert_array_equal(mod.run(v), f(v))
    strict = gc.function([x], gc.log(x @ w))
    mod = load_module(strict.export(tmp_path / "strict.py", np.ones((2, 3), np.float32)),
                      "probe21_strict")
    with pytest.raises(mod.GraphcError, match="expected dtype float32, got float64"):
        mod.run(np.full((2, 3), 2.0))          # the module's own GraphcError


def hostile_model(node, consts: dict):
    """A one-node ONNX model over x (1, 1, 4, 4) -> y, its other inputs initializers."""
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    graph = helper.make_graph(node, "g", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_hostile_onnx_model_is_a_graphc_error_naming_its_node():
    # values that NumPy refuses while the import folds constants were bare errors: a
    # ConstantOfShape of [-3, 4] (ValueError) or of 2**62 elements, a Range of 10**18
    # (MemoryError); and Reshape to [-1, -1] (invalid ONNX) imported as (16, 1)
    pytest.importorskip("onnx")
    import graphc.onnx
    from onnx import TensorProto, helper
    one = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    cases = {
        "ConstantOfShape": ([helper.make_node("ConstantOfShape", ["s"], ["c"], value=one),
                             helper.make_node("Add", ["x", "c"], ["y"])],
                            {"s": np.array([1, 1, 4, -3], np.int64)}, "ValueError"),
        "ConstantOfShape ": ([helper.make_node("ConstantOfShape", ["s"], ["c"], value=one),
                              helper.make_node("Add", ["x", "c"], ["y"])],
                             {"s": np.array([2 ** 31, 2 ** 31, 1, 4], np.int64)}, "Error"),
        "Range": ([helper.make_node("Range", ["a", "b", "c"], ["r"]),
                   helper.make_node("Cast", ["r"], ["r2"], to=TensorProto.FLOAT),
                   helper.make_node("Add", ["x", "r2"], ["y"])],
                  {"a": np.array(0, np.int64), "b": np.array(10 ** 18, np.int64),
                   "c": np.array(1, np.int64)}, "Error"),
        "Reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"])],
                    {"s": np.array([-1, -1], np.int64)}, "at most one -1"),
    }
    for op, (nodes, consts, words) in cases.items():
        with pytest.raises(gc.GraphcError, match=rf"ONNX node '{op.strip()}_0' "
                                                 rf"\({op.strip()}\): .*{words}"):
            graphc.onnx.load(hostile_model(nodes, consts))


# nn --------------------------------------------------------------------------------------

def test_fit_on_empty_data_says_so():
    # fit(model, ..., x[:0], y[:0]) said "0 examples but 0 targets", as if they disagreed
    from graphc import nn
    model = nn.Sequential([nn.Dense(3)], seed=0)
    with pytest.raises(gc.GraphcError, match=r"fit: no examples \(x and y are empty\)"):
        nn.fit(model, "softmax_cross_entropy", nn.SGD(0.1), np.zeros((0, 4), np.float32),
               np.zeros(0, np.int64), epochs=1, verbose=0)
    with pytest.raises(gc.GraphcError, match="fit: 10 examples but 7 targets"):
        nn.fit(model, "softmax_cross_entropy", nn.SGD(0.1), np.zeros((10, 4), np.float32),
               np.zeros(7, np.int64), epochs=1, verbose=0)


def test_grad_of_something_not_a_node_names_the_users_line():
    # gc.grad([loss], [w]) and gc.grad(loss, [3]) named no line of the user's
    x = gc.placeholder((None, 4), name="x")
    for call in (lambda: gc.grad([gc.sum(x)], [x]), lambda: gc.grad(gc.sum(x), [3]),
                 lambda: gc.vjp([x], [x], []), lambda: gc.jacobian(3, x)):
        with pytest.raises(gc.GraphcError, match=r"\n  at test_probe21\.py:\d+"):
            call()


def test_nn_errors_name_the_users_line():
    # Dense(0), an unknown activation or loss, heads that do not split the embedding, a
    # Sequential item that is not a layer, an optimizer given nothing or placeholders named
    # no line of the user's; Sequential(Dense(3)) (no list) was a bare TypeError
    from graphc import nn
    x = gc.placeholder((None, 5, 8), name="x")
    calls = [lambda: nn.Dense(0), lambda: nn.Dense(3, "reluu"), lambda: nn.Adam(-1.0),
             lambda: nn.MultiHeadAttention(3)(x), lambda: nn.Sequential([gc.relu]),
             lambda: nn.Sequential(nn.Dense(3)), lambda: nn.Adam().updates(gc.sum(x), []),
             lambda: nn.SGD(0.1).updates(gc.sum(x), [x]),
             lambda: nn.fit(nn.Sequential([nn.Dense(2)]), "crossentropy", nn.SGD(0.1),
                            np.zeros((4, 3), np.float32), np.zeros(4, np.int64), verbose=0)]
    for call in calls:
        with pytest.raises(gc.GraphcError, match=r"\n  at test_probe21\.py:\d+"):
            call()


def test_a_batch_of_one_leaves_the_batchnorm_running_statistics():
    # a training batch with one value per channel has no spread: its unbiased variance was
    # taken as 0 and the running variance decayed toward it (fit on 65 examples with
    # batch_size=32: 35 % too small after 30 epochs, so evaluation normalized wrongly);
    # PyTorch refuses such a batch, graphc now leaves the running statistics as they are
    from graphc import nn
    rng = np.random.default_rng(0)
    xs = (rng.standard_normal((65, 4)) * 3).astype(np.float32)
    model = nn.Sequential([nn.BatchNorm(), nn.Dense(3)], seed=0)
    nn.fit(model, "softmax_cross_entropy", nn.SGD(0.0), xs, rng.integers(0, 3, 65),
           epochs=30, batch_size=32, verbose=0)
    np.testing.assert_allclose(model.layers[0].running_var.value, xs.var(0), rtol=0.1)
    for shape in ((None, 4), (1, 4)):              # the batch size known at run time or now
        bn = nn.BatchNorm(momentum=0.5)
        x = gc.placeholder(shape, "float32", name="x")
        y = bn(x)
        step = gc.function([x], y, updates=bn.state_updates)
        step(np.ones((1, 4), np.float32) * 5)
        assert (bn.running_mean.value == 0).all() and (bn.running_var.value == 1).all()
        if shape[0] is None:
            step(np.array([[1, 2, 3, 4], [3, 2, 1, 0]], np.float32))
            np.testing.assert_allclose(bn.running_mean.value, [1, 1, 1, 1])
            np.testing.assert_allclose(bn.running_var.value, [1.5, 0.5, 1.5, 4.5])


# a generator: elementwise graphs mixing float16/32/64, ints, casts and comparisons ----------

FLOATS = ["float16", "float32", "float64"]
UNARY = [gc.exp, gc.tanh, gc.sigmoid, gc.relu, gc.neg, gc.abs, gc.square, gc.softplus,
         gc.sign, lambda a: gc.sqrt(gc.abs(a)), lambda a: gc.log(gc.abs(a) + 1)]
BINARY = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, gc.maximum, gc.minimum,
          lambda a, b: a / (gc.abs(b) + 1), lambda a, b: gc.where(a > b, a, b),
          lambda a, b: gc.where(a > 0, b, 0.0), lambda a, b: gc.where(gc.less(a, b), 1.0, a),
          lambda a, b: gc.pow(gc.abs(a) + 0.5, b * 0.1)]


def mixed_graph(seed: int):
    """(placeholders, outputs, feeds(n)) of a random elementwise graph over mixed dtypes."""
    r = np.random.default_rng(seed)
    phs = []
    for k in range(int(r.integers(2, 5))):
        dt = str(r.choice(FLOATS + ["int32", "uint8", "int64"]))
        shape = [(None, 3), (None, 1), (1, 3), (3,), ()][int(r.integers(5))]
        phs.append(gc.placeholder(shape, dt, name=f"p{k}"))
    vals = [p if p.dtype.kind == "f" or r.random() < 0.5 else gc.cast(p, str(r.choice(FLOATS)))
            for p in phs]
    for _ in range(int(r.integers(3, 10))):
        i, j = (int(k) for k in r.integers(len(vals), size=2))
        pick = r.random()
        try:
            if pick < 0.35:
                vals.append(UNARY[int(r.integers(len(UNARY)))](vals[i]))
            elif pick < 0.5:
                vals.append(gc.cast(vals[i], str(r.choice(FLOATS))))
            elif pick < 0.6:
                vals.append(vals[i] * float(r.choice([0.1, 3.0, 300.0])))
            else:
                vals.append(BINARY[int(r.integers(len(BINARY)))](vals[i], vals[j]))
        except gc.GraphcError:       # an op refusing its dtypes (ints where floats are needed)
            pass
    outs = vals[len(phs):][-3:]

    def feeds(n):
        dims = lambda p: [n if d is None else d for d in p.shape]      # noqa: E731
        return [(r.standard_normal(dims(p)) * 8).astype(p.dtype) if p.dtype.kind == "f"
                else r.integers(0, 10, dims(p)).astype(p.dtype) for p in phs]
    return phs, outs, feeds


@pytest.mark.parametrize("seed", range(SEEDS or 24))
def test_random_mixed_dtype_elementwise_graphs_compile_as_eval(seed, tmp_path):
    """Compiled (optimized or not; every fourth also exported) equals eval over four calls:
    same dtypes and shapes, NaN where eval has NaN, values within the narrowest float's
    rounding (the passes rewrite log(1 + x) as log1p and the like), no interpreter step."""
    phs, outs, feeds = mixed_graph(seed)
    if not outs:
        return
    text = str(gc.ir.Graph(outs, []))
    tol = 3e-2 if "float16" in text else 2e-5 if "float32" in text else 1e-12
    runs = [gc.function(phs, outs), gc.function(phs, outs, optimize=False)]
    example = feeds(2)
    runs[0](*example)
    assert "interpreter" not in runs[0].plan_report()
    if seed % 4 == 0:
        mod = load_module(runs[0].export(tmp_path / f"mix{seed}.py"), f"probe21_mix{seed}")
        runs.append(mod.run)
    for n in (2, 2, 1, 3):
        xs = feeds(n)
        with np.errstate(all="ignore"):
            want = gc.ir.evaluate(outs, dict(zip(phs, xs)))
        for k, run in enumerate(runs):
            if k == 2 and n != 2:
                continue                   # the module holds the plans of batch 2
            for got, w in zip(run(*xs), want):
                assert got.dtype == w.dtype and got.shape == w.shape
                g, e = got.astype("float64"), w.astype("float64")
                with np.errstate(all="ignore"):
                    ok = (np.isnan(g) == np.isnan(e)) & (
                        (g == e) | (np.abs(g - e) <= tol * (1 + np.abs(e))) | np.isnan(g))
                assert ok.all(), (seed, k, n, g, e)


# the compiled call's feed guard -------------------------------------------------------------

FEED_KINDS = ["plain", "W", "W rows", "W.T", "W reversed", "strided", "fortran", "matrix",
              "list", "int32", "V row", "W reshaped view", "read-only", "float32", "again"]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")     # np.asmatrix
@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_one_function_called_with_every_kind_of_feed(seed):
    """Ten calls of one training step with feeds of every kind in a random order (views of
    the variables it updates, strided, Fortran, np.matrix, lists, narrower dtypes, read-only,
    the previous call's array again), batch sizes 1-4: outputs and variables as eval gives
    them for a copy of the feed, the variables then set to eval's values."""
    r = np.random.default_rng(seed)
    dt = str(r.choice(["float64", "float32"]))
    x = gc.placeholder((None, 4), dt, name="x")
    s = gc.placeholder((), dt, name="s")
    W = gc.variable(r.standard_normal((4, 4)).astype(dt), name="W")
    V = gc.variable(r.standard_normal(4).astype(dt), name="V")
    h = gc.tanh(x @ W + V) * s
    loss = gc.sum(h * h)
    gW, gV = gc.grad(loss, [W, V])
    outs = [loss, h, x * 2.0, gc.sum(x, axis=0)]
    ups = [(W, W - 0.1 * gW), (V, V - 0.1 * gV)] if seed % 4 else [(W, W * 0.5)]
    f = gc.function([x, s], outs, updates=ups, optimize=bool(seed % 3))
    last = None
    for _ in range(10):
        kind = FEED_KINDS[int(r.integers(len(FEED_KINDS)))]
        base = r.standard_normal((int(r.integers(1, 5)), 4)).astype(dt)
        feed = {"W": W.value, "W rows": W.value[1:3], "W.T": W.value.T,
                "W reversed": W.value[::-1], "strided": np.repeat(base, 2, axis=1)[:, ::2],
                "fortran": np.asfortranarray(base), "matrix": np.asmatrix(base),
                "list": base.tolist(), "V row": V.value[None, :],
                "W reshaped view": W.value.reshape(2, 8)[:, :4],
                "float32": base.astype(np.float32), "again": last}.get(kind, base)
        if kind == "int32" and dt == "float64":
            feed = r.integers(-3, 3, (2, 4)).astype(np.int32)
        if kind == "read-only":
            feed.flags.writeable = False
        if feed is None:
            feed = base
        sv = float(r.standard_normal())
        seen = np.array(feed, dtype=dt)           # what the call must compute with
        want = gc.ir.evaluate(outs + [u for _, u in ups], {x: seen, s: np.asarray(sv, dt)})
        got = f(feed, sv)
        tol = 1e-12 if dt == "float64" else 1e-5
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=kind)
        for (v, _), w in zip(ups, want[len(outs):]):
            np.testing.assert_allclose(v.value, w, rtol=tol, atol=tol, err_msg=kind)
            v.value = w
        last = feed if isinstance(feed, np.ndarray) and type(feed) is np.ndarray else None


def test_optimize_takes_pass_names_and_refuses_what_is_not_a_pass():
    # optimize=["simplify"] (the names the report shows) or optimize="fuse_elementwise" raised
    # TypeError: 'str' object is not callable from inside the pipeline
    x = gc.placeholder((None, 3), name="x")
    f = gc.function([x], gc.exp(x) * 2.0, optimize=["simplify", "fuse_elementwise"])
    assert [p[0] for p in f.report.passes] == ["simplify", "fuse_elementwise"]
    assert "fused" in str(f.graph)
    for bad in (["nonexistent"], "fuse_elementwise", [3], 1):
        with pytest.raises(gc.GraphcError, match=r"pass.*\n  at test_probe21\.py:\d+"):
            gc.function([x], gc.exp(x) * 2.0, optimize=bad)
