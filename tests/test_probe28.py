"""probe28: a hostile newcomer reads DESIGN.md and the README and calls the public API the way
Theano, TF 1.x, JAX and PyTorch users do; one test per bug found, each failing before its fix,
plus probes of promises that held (placeholders, variables, function's odd forms, feeds,
Function's views, nn subclassing, parameter files across processes, errors from loop bodies).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.basename(__file__)


def raises_here(fn, *match):
    """fn() raises a GraphcError naming this file's line and each of `match`."""
    with pytest.raises(gc.GraphcError) as info:
        fn()
    text = str(info.value)
    assert f"{HERE}:" in text, text
    for m in match:
        assert m in text, text
    return text


# placeholders, variables, constants with hostile arguments ---------------------------------

def test_placeholder_shapes_as_numpy_takes_them():
    """placeholder(3) and placeholder(None) raised TypeError ('int' object is not iterable);
    TF's order placeholder("float32", shape) made a shape of the letters (named dims 'f',
    'l', ...) and then failed on the dtype. Now an int is a 1-d shape, as np.zeros(3), and
    anything else that is not a sequence is a GraphcError at the user's line."""
    assert gc.placeholder(3).shape == (3,)
    assert gc.placeholder(np.int64(4), "int64").shape == (4,)
    assert gc.placeholder([np.int32(2), None, "n"]).shape == (2, None, "n")
    assert gc.placeholder(()).shape == ()
    for shape in (None, "float32", 2.5, {"a": 1}):
        raises_here(lambda: gc.placeholder(shape), "shape must be a tuple")
    raises_here(lambda: gc.placeholder("float32", (2, 3)), "shape must be a tuple")
    raises_here(lambda: gc.placeholder((2, -1)), "bad dimension -1")
    assert gc.placeholder((2,), None).dtype == gc.placeholder((2,)).dtype == "float32"
    for dtype, want in ((np.float32, "float32"), (np.dtype("f8"), "float64"), (float, "float64"),
                        (int, "int64"), (bool, "bool"), ("f2", "float16")):
        assert gc.placeholder((2,), dtype).dtype == want
    for dtype in ("complex64", object, "U5", "M8[s]", "f4,f4"):
        raises_here(lambda: gc.placeholder((2,), dtype), "unsupported dtype")
    raises_here(lambda: gc.placeholder((2,), "floot32"), "unknown dtype")


def test_node_names_are_strings():
    """A variable named 7 (not a str) compiled and ran, and then nn.save_params failed with
    TypeError "unsupported operand type(s) for +: 'int' and 'str'" deep in io_arrays. Names
    are checked where they are given; unicode, reserved words and '' are names."""
    for make in (lambda n: gc.placeholder((2,), name=n), lambda n: gc.variable([1.0], name=n),
                 lambda n: gc.constant([1.0], name=n)):
        for bad in (7, b"w", ("w",)):
            raises_here(lambda: make(bad), "name must be a str")
        for good in ("λ 名", "def", "", "a/../../b", None):
            assert make(good).name == good


def test_variable_of_a_ragged_list_is_a_graphc_error(tmp_path):
    """gc.variable([[1.0], [2.0, 3.0]]) raised NumPy's bare ValueError ('inhomogeneous
    shape')."""
    raises_here(lambda: gc.variable([[1.0], [2.0, 3.0]], name="w"), "variable 'w'",
                "cannot make an array")
    raises_here(lambda: gc.variable(["a", 1.5]), "unsupported dtype")
    v = gc.variable(np.memmap(tmp_path / "m", dtype="f4", mode="w+", shape=(2,)))
    assert type(v.value) is np.ndarray and v.shape == (2,)


def test_variables_own_their_storage_and_feeds_of_every_kind(tmp_path):
    """Probes that held: a variable copies its value (later writes to the source are not
    seen); feeds as lists, read-only, strided, Fortran-ordered
    arrays and memmaps run, a 0-d or wrong-kind feed is a GraphcError naming the placeholder,
    and a Function is usable after each refusal."""
    a = np.ones((3, 2), np.float32)
    w = gc.variable(a, name="w")
    a[0] = 5
    assert (w.value == 1).all()
    x = gc.placeholder((None, 3), "float32", name="x")
    f = gc.function([x], x @ w)
    ro = np.ones((2, 3), np.float32)
    ro.flags.writeable = False
    mm = np.memmap(tmp_path / "m", dtype="f4", mode="w+", shape=(2, 3))
    for feed in ([[1, 2, 3]], ro, np.ones((6, 3), np.float32)[::2],
                 np.asfortranarray(np.ones((2, 3), np.float32)), mm):
        out = f(feed)
        np.testing.assert_array_equal(out, np.asarray(feed, np.float32) @ w.value)
        assert type(out) is np.ndarray
    for feed, what in ((np.float32(1), "expected shape"), (np.ones((2, 3)), "float64"),
                       (np.ones((2, 3), complex), "complex128"), (None, "got None"),
                       ({x: ro}, "placeholder 'x'"), ([[1, 2, 3], [1, 2]], "placeholder 'x'")):
        with pytest.raises(gc.GraphcError, match=what):
            f(feed)
    np.testing.assert_array_equal(f(ro), ro @ w.value)


# gc.function in odd forms -------------------------------------------------------------------

def test_function_takes_outputs_updates_and_inputs_in_every_documented_form():
    """Probes that held: outputs as a node, list, tuple (returned in that form) or [];
    updates as a dict, pairs as lists, a generator; one input node alone; an output that is
    also an input or a variable comes back as a copy. Refused with a GraphcError: an update
    of a non-variable, twice the same variable, a non-node value, a wrong shape or dtype, an
    input that is not a placeholder or given twice."""
    x = gc.placeholder((None, 3), "float32", name="x")
    w = gc.variable(np.ones((3, 2), np.float32), name="w")
    a = np.ones((2, 3), np.float32)
    y = x @ w
    assert isinstance(gc.function([x], (y, y))(a), tuple)
    assert gc.function(x, [])(a) == []
    out = gc.function([x], [x, w])(a)
    assert out[0] is not a and out[1] is not w.value
    gc.function([x], y, updates={w: w * 2})(a)
    gc.function([x], y, updates=[[w, w * 2]])(a)
    gc.function([x], y, updates=((v, v * 2) for v in [w]))(a)
    np.testing.assert_array_equal(w.value, np.full((3, 2), 8, np.float32))
    for kwargs, what in (({"updates": [(x, x * 2)]}, "must be a variable"),
                         ({"updates": [(w, w * 2), (w, w * 3)]}, "updated twice"),
                         ({"updates": [(w, 2.0)]}, "must be a node"),
                         ({"updates": [(w, gc.sum(w))]}, "new value has ()"),
                         ({"updates": [(w, w.astype("float64"))]}, "float64"),
                         ({"updates": "w"}, "pairs")):
        with pytest.raises(gc.GraphcError, match=what):
            gc.function([x], y, **kwargs)
    for inputs, what in (([w], "must be placeholders"), ([x, x], "input twice"),
                         ([y], "must be placeholders"), ([], "not an input")):
        with pytest.raises(gc.GraphcError, match=what):
            gc.function(inputs, y)
    np.testing.assert_array_equal(w.value, np.full((3, 2), 8, np.float32))


# Function's views on every kind of Function -------------------------------------------------

def kinds_of_function():
    x = gc.placeholder((None, 3), "float32", name="x")
    w = gc.variable(np.ones((3, 2), np.float32), name="w")
    loss = gc.sum(gc.tanh(x @ w))
    (g,) = gc.grad(loss, [w])
    h, hs = gc.scan(lambda h, xi: (gc.tanh(h + xi),) * 2,
                    gc.constant(np.zeros(3, np.float32)), x)
    return {"step": gc.function([x], loss, updates=[(w, w - 0.1 * g)]),
            "plain": gc.function([x], [x @ w, gc.dropout(x, 0.5)], optimize=False),
            "checked": gc.function([x], x @ w, check_numerics=True),
            "no inputs": gc.function([], w * 2),
            "updates only": gc.function([], [], updates=[(w, w * 1)]),
            "scan": gc.function([x], [h, hs])}


def test_explain_and_formula_of_a_function_a_graph_or_a_non_node():
    """gc.explain(fn) raised TypeError ('Function' object is not iterable) although render,
    inspect and save take a Function; gc.explain(graph) too; gc.formula(fn), formula(3.0),
    formula([y]) raised AttributeError/TypeError. Now explain of a Function (or Graph) gives
    the outputs as built and each update's new value; formula of anything but a node is a
    GraphcError pointing to explain."""
    fns = kinds_of_function()
    text = gc.explain(fns["step"])
    assert "out0 = sum(z1)" in text and "new w = w - " in text and "fused" not in text
    assert gc.explain(fns["step"].original) == text
    assert gc.explain(fns["updates only"]) == "new w = w"
    for fn in fns.values():
        assert isinstance(gc.explain(fn), str)
    for bad in (fns["plain"], fns["plain"].graph, 3.0, None, [fns["plain"].graph.outputs[0]]):
        raises_here(lambda: gc.formula(bad), "formula: needs one graph node")
    for bad in (None, 3, {"a": 3}):
        raises_here(lambda: gc.explain(bad), "explain: outputs must be graph nodes")
    raises_here(lambda: gc.render(None), "render: outputs must be graph nodes")


def test_every_view_of_every_kind_of_function(tmp_path):
    """Probe that held: source, plan_report, profile (repeat 0 too), render, the Jupyter
    picture, export, save and inspect work on training steps, unoptimized and checked
    Functions, Functions without inputs or outputs, and loops."""
    for k, (name, fn) in enumerate(kinds_of_function().items()):
        feeds = [np.ones((2, 3), np.float32)] * len(fn.inputs)
        assert isinstance(fn.source, str) and str(fn.plan_report())
        assert "step" in str(fn.profile(*feeds, repeat=0)), name
        assert gc.render(fn) is not None and fn._repr_svg_().lstrip().startswith("<")
        fn(*feeds)
        assert os.path.exists(fn.export(tmp_path / f"e{k}.py"))
        assert gc.load(gc.save(fn, tmp_path / f"s{k}")) is not None


def test_source_before_any_call_of_a_function_that_cannot_run_size_1():
    """fn.source before a call plans for size 1 of each unknown dim; for x + c with x
    (None, 3) and c (5, 3), or reshape(x, (-1, 6)), that failed with an error about a size
    the user never fed. Now the error says why and what to do; after a call, source is that
    call's plan."""
    x = gc.placeholder((None, 3), "float32", name="x")
    for out, batch in ((x + gc.constant(np.ones((5, 3), np.float32)), 5),
                       (gc.reshape(x, (-1, 6)), 2)):
        fn = gc.function([x], out)
        for view in (lambda: fn.source, fn.plan_report):
            raises_here(view, "call it once first")
        fn(np.ones((batch, 3), np.float32))
        assert "def " in fn.source and fn.plan_report()


# nn: layers and models as PyTorch users write them -----------------------------------------

class NoSuper(nn.Model):
    def __init__(self):
        self.dense = nn.Dense(3)

    def forward(self, x, training):
        return self.dense(x)


def test_a_model_that_forgot_super_init_says_so_everywhere():
    """Only the call named the mistake; model.params and model.summary() raised
    AttributeError ('own_params', 'path') and repr(model) AttributeError ('name')."""
    m = NoSuper()
    for use in (lambda: m.params, m.summary, lambda: m(gc.placeholder((2, 4))),
                lambda: nn.save_params(m, os.devnull), lambda: m.variables):
        raises_here(use, "NoSuper.__init__ must call super().__init__()")
    assert repr(m) == "<NoSuper '?'>"
    with pytest.raises(AttributeError):
        m.no_such_attribute      # noqa: B018


class Nested(nn.Model):
    def __init__(self):
        super().__init__()
        self.blocks = [[nn.Dense(3, "relu"), nn.Dense(3)], {"a": nn.Dense(3)}]
        self.heads = {"h": (nn.Dense(2),)}
        self.blocks.append(self.blocks)          # a cycle is walked once

    def forward(self, x, training):
        for block in self.blocks[0]:
            x = block(x)
        return self.heads["h"][0](self.blocks[1]["a"](x))


def test_layers_in_nested_lists_and_dicts_are_collected():
    """Layers held in a list of lists or a dict of tuples were left out: model.params was []
    (fit then said "no parameters to train", or trained only part of the model) and their
    variables all had the same name. Now they are found at any depth, named by their path."""
    m = Nested()
    x = gc.placeholder((None, 4), "float32", name="x")
    assert m(x).shape == (None, 2)
    names = [p.name for p in m.params]
    assert names == [f"{layer}/{v}" for layer in ("blocks_0_0", "blocks_0_1", "blocks_1_a",
                                                   "heads_h_0") for v in ("W", "b")]
    assert "blocks_0_1" in m.summary()
    rng = np.random.default_rng(0)
    xs, ys = rng.random((16, 4), dtype=np.float32), rng.integers(0, 2, 16)
    before = [p.value.copy() for p in m.params]
    nn.fit(m, "softmax_cross_entropy", nn.SGD(0.5), xs, ys, epochs=1, verbose=0)
    assert all((p.value != b).any() for p, b in zip(m.params, before))


def test_forward_as_pytorch_writes_it_and_what_it_may_return():
    """`def forward(self, x)` (PyTorch's, no `training`) failed with TypeError "unexpected
    keyword argument 'training'"; now it is called without it and its layers follow the
    caller's mode. A forward returning None, a number or a dict raised TypeError or
    AttributeError inside graphc; nn.Model() without forward NotImplementedError."""
    class Torchy(nn.Model):
        def __init__(self):
            super().__init__()
            self.dense, self.drop = nn.Dense(8), nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.dense(x))

    class Returns(nn.Model):
        def __init__(self, value):
            super().__init__()
            self.value = value

        def forward(self, x, training):
            return self.value

    m = Torchy()
    x = gc.placeholder((None, 4), "float32", name="x")
    a = np.ones((3, 4), np.float32)
    train, test = gc.function([x], m(x)), gc.function([x], m(x, training=False))
    np.testing.assert_allclose(test(a), a @ m.dense.params[0].value + m.dense.params[1].value,
                               rtol=1e-6)
    assert (train(a) == 0).any()
    for value in (None, 3, {"y": x}, [x, 3]):
        raises_here(lambda: Returns(value)(x), "Returns 'model': forward must return")
    assert Returns((x, x))(x) == (x, x)
    raises_here(lambda: nn.Model()(x), "Model must define forward")
    raises_here(lambda: nn.Dense(2)(np.ones((2, 4), np.float32)), "call the layer on graph "
                "nodes, got ndarray")
    raises_here(lambda: nn.Dense(2)(), "at least one graph node")


def test_one_layer_twice_in_a_sequential_shares_its_weights():
    """nn.Sequential([d, d]) worked for a fresh layer d but was refused ("two layers are
    named 'dense_0'") once d had been used in another model; now both share the weights, as
    PyTorch's nn.Sequential(d, d) does."""
    d = nn.Dense(3)
    x = gc.placeholder((None, 3), "float32", name="x")
    nn.Sequential([d])(x)
    m = nn.Sequential([d, d, nn.Dense(3)], seed=0)
    out = m(x)
    assert [p.name for p in m.params] == ["dense_0/W", "dense_0/b", "dense_2/W", "dense_2/b"]
    a = np.ones((2, 3), np.float32)
    W, b = (p.value for p in d.params)
    W2, b2 = (p.value for p in m.layers[2].params)
    np.testing.assert_allclose(gc.function([x], out)(a), ((a @ W + b) @ W + b) @ W2 + b2,
                               rtol=1e-5)


def test_parameters_saved_in_one_process_load_in_another(tmp_path):
    """A process-level promise (held), on the fixes above: a model of nested dicts/lists with
    BatchNorm trained one epoch and saved with its Adam state, then rebuilt with another seed
    in a fresh process, loaded and trained one more epoch, predicts what the first process
    did after two uninterrupted epochs."""
    script = tmp_path / "roundtrip.py"
    script.write_text('''
import sys, numpy as np, graphc as gc
from graphc import nn
mode, path = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.random((40, 6), dtype=np.float32); y = rng.integers(0, 3, 40)
class Net(nn.Model):
    def __init__(self, seed):
        super().__init__(seed=seed)
        self.body = {"a": nn.Dense(8, "relu"), "b": [nn.BatchNorm()]}
        self.head = nn.Dense(3)
    def forward(self, x):
        return self.head(self.body["b"][0](self.body["a"](x)))
m, opt = Net(1 if mode == "save" else 2), nn.Adam(1e-2)
if mode == "save":
    nn.fit(m, "softmax_cross_entropy", opt, x, y, epochs=1, verbose=0)
    nn.save_params(m, path + "m.npz"); nn.save_params(opt, path + "o.npz")
else:
    m(gc.placeholder((None, 6), "float32")); opt.build(m.params)
    nn.load_params(m, path + "m.npz"); nn.load_params(opt, path + "o.npz")
nn.fit(m, "softmax_cross_entropy", opt, x, y, epochs=2, initial_epoch=1, verbose=0)
np.save(path + mode + ".npy", nn.predict(m, x))
''')
    env = dict(os.environ, PYTHONPATH=ROOT, OPENBLAS_NUM_THREADS="1")
    for mode in ("save", "load"):
        done = subprocess.run([sys.executable, str(script), mode, str(tmp_path) + "/"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "save.npy"),
                                  np.load(tmp_path / "load.npy"))


# loops -------------------------------------------------------------------------------------

def test_scan_of_something_not_callable_and_errors_from_its_body():
    """gc.scan(3, ...) raised TypeError ('int' object is not callable) inside scan.py. Probes
    that held: a shape error inside the body names the body's line; a run-time error in a
    compiled body names the step, the node and the body's line, and the Function still runs;
    an exception of the user's own body is theirs, unchanged."""
    xs = gc.placeholder((None, 3), "float32", name="xs")
    h0 = gc.constant(np.zeros(3, np.float32))
    raises_here(lambda: gc.scan(3, h0, xs), "scan: fn must be a function")
    raises_here(lambda: gc.scan(lambda h, x: (h, gc.reshape(x, (2, 2))), h0, xs),
                "cannot reshape")
    E = gc.variable(np.ones((5, 3), np.float32), name="E")
    ids = gc.placeholder((None,), "int64", name="ids")
    _, ys = gc.scan(lambda h, i: (h + E[i], h), h0, ids)
    f = gc.function([ids], ys)
    raises_here(lambda: f(np.array([1, 7])), "index 7 is out of bounds", "take(")
    assert f(np.array([1, 2])).shape == (2, 3)

    def body(h, x):
        raise KeyError("the user's own")
    with pytest.raises(KeyError, match="the user's own"):
        gc.scan(body, h0, xs)


def test_freezing_a_layer_as_keras_users_do(tmp_path):
    """`layer.trainable = False` (Keras) was silently ignored: fit trained the layer anyway.
    Now a frozen layer (or a model: every layer inside) leaves params, fit leaves its
    variables as they are, save_params/load_params still carry them; unfreezing trains it
    again. Optimizers take a model or one variable as PyTorch's take model.parameters();
    a variable given twice or an int variable is a GraphcError at the user's line (a variable
    twice made two updates of it; a model was a TypeError)."""
    rng = np.random.default_rng(0)
    xs, ys = rng.random((16, 4), dtype=np.float32), rng.integers(0, 2, 16)
    base = nn.Sequential([nn.Dense(5, "relu"), nn.Dense(5)], name="base")
    m = nn.Sequential([base, nn.Dense(2)], seed=0)
    m(gc.placeholder((None, 4), "float32"))
    base.trainable = False
    assert [p.name for p in m.params] == ["dense_1/W", "dense_1/b"]
    assert len(m.variables) == 6
    frozen = [p.value.copy() for p in base.variables]
    assert base.params == [] and len(frozen) == 4
    head = [p.value.copy() for p in m.params]
    nn.fit(m, "softmax_cross_entropy", nn.Adam(0.1), xs, ys, epochs=1, verbose=0)
    assert all((p.value == v).all() for p, v in zip(base.variables, frozen))
    assert all((p.value != v).any() for p, v in zip(m.params, head))
    nn.save_params(m, tmp_path / "m.npz")
    for p in m.variables:
        p.value = np.zeros(p.shape, p.dtype)
    nn.load_params(m, tmp_path / "m.npz")
    assert all((p.value == v).all() for p, v in zip(base.variables, frozen))
    base.trainable = True
    assert len(m.params) == 6
    W = gc.variable(np.ones((4, 2), np.float32), name="W")
    loss = gc.sum(gc.placeholder((None, 4), "float32") @ W)
    assert len(nn.SGD(0.1).updates(loss, W)) == 1
    assert len(nn.SGD(0.1).updates(gc.sum(m(gc.placeholder((None, 4)))), m)) == 6
    raises_here(lambda: nn.Adam().updates(loss, [W, W]), "parameter 'W' is given twice")
    raises_here(lambda: nn.SGD(0.1).updates(loss, [W, gc.variable(np.ones(2, np.int64),
                                                                  name="I")]),
                "parameter 'I' is int64")
    raises_here(lambda: nn.SGD(0.1).updates(loss, 3), "parameters must be a list")
    raises_here(lambda: gc.grad(loss, [gc.placeholder((2,), "int64")]), "integer/bool")
    raises_here(lambda: gc.function([], [], updates=(W, W * 2)), "cannot iterate")


# ops' arguments --------------------------------------------------------------------------

def test_keepdims_is_a_bool_and_axis_never_a_bool():
    """x.sum(0, 1) (NumPy users' several axes, as reshape(2, -1) takes them) summed axis 0
    only and kept it (keepdims=1); keepdims="no" was True; softmax(x, axis=True) was axis 1
    while the reductions refused axis=True. Probes that held: every other hostile axis
    (out of range, repeated, float, str) is a GraphcError naming the op and line, and axes as
    lists and NumPy ints are NumPy's."""
    x = gc.placeholder((2, 3, 4), name="x")
    a = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    for use in (lambda: x.sum(0, 1), lambda: x.mean(0, 1), lambda: x.var(0, 1),
                lambda: x.argmax(0, 1), lambda: x.prod(0, 1), lambda: gc.logsumexp(x, 0, 1),
                lambda: gc.max(x, 0, "no"), lambda: x.std(0, None)):
        raises_here(use, "keepdims must be True or False", "x.sum((0, 1))")
    for keep in (True, np.True_, False):
        np.testing.assert_allclose(x.sum((0, 1), keep).eval({x: a}),
                                   a.sum((0, 1), keepdims=bool(keep)), rtol=1e-6)
    raises_here(lambda: gc.softmax(x, axis=True), "softmax", "axis must be one int")
    for axis, what in ((3, "out of range"), ((0, -3), "repeats an axis"), (1.0, "tuple of ints"),
                       ("0", "tuple of ints"), (True, "tuple of ints")):
        raises_here(lambda: gc.sum(x, axis=axis), "sum((2, 3, 4) float32)", what)
    np.testing.assert_allclose(gc.max(x, [np.int64(0), 2]).eval({x: a}), a.max((0, 2)))


def test_fit_evaluate_predict_name_a_model_or_optimizer_that_is_not_one():
    """nn.fit(lambda x: ..., ...) failed with TypeError "unexpected keyword argument
    'training'", nn.fit(model, loss, nn.SGD, ...) (the class) with TypeError "missing ...
    'params'", and an optimizer given by name ("adam", Keras's habit) with AttributeError
    "'str' object has no attribute 'updates'"."""
    x, y = np.ones((4, 3), np.float32), np.zeros(4, np.int64)
    model = nn.Sequential([nn.Dense(2)])
    for call in (lambda: nn.fit(lambda z: z, "mse", nn.SGD(0.1), x, y, verbose=0),
                 lambda: nn.evaluate(gc.relu, "mse", x, y),
                 lambda: nn.predict(None, x)):
        raises_here(call, "the model must be an nn layer or model")
    for opt, name in ((nn.SGD, "got SGD"), ("adam", "got 'adam'")):
        raises_here(lambda: nn.fit(model, "softmax_cross_entropy", opt, x, y, verbose=0),
                    "fit: the optimizer must be an optimizer object", name)
    assert model.params == []           # nothing was built by the refused calls


def test_feed_errors_name_the_call_and_the_placeholder_lines():
    """A refused feed said what was wrong but named no line: neither the call's nor the
    placeholder's (the promise: every user error names the user's file:line). Compiled,
    evaluated and fed to fit's validation alike."""
    x = gc.placeholder((None, 3), "float32", name="x")
    n = gc.placeholder(("n", 2), "float32", name="n")
    built = f"placeholder built at {HERE}:"
    f = gc.function([x], x * 2)
    for feed in (np.ones((2, 4), np.float32), np.ones((2, 3)), None, "abc"):
        raises_here(lambda: f(feed), "feed for placeholder 'x'", built)
    raises_here(lambda: (x * 2).eval({x: np.ones(3, np.float32)}), "expected shape", built)
    raises_here(lambda: f(), "function takes 1 inputs")
    g = gc.function([x, n], [x, n])
    raises_here(lambda: g(np.ones((2, 3), np.float32), np.ones((1, 2), np.float32)) and
                gc.function([n, gc.placeholder(("n",), name="m")], n)(
                    np.ones((2, 2), np.float32), np.ones(3, np.float32)),
                "dimension 'n' is 3 here but 2")
    model = nn.Sequential([nn.Dense(2)])
    raises_here(lambda: nn.fit(model, "mse", nn.SGD(0.1), np.ones((4, 3), np.float32),
                               np.ones((4, 2), np.float32), verbose=0,
                               validation_data=(np.ones((4, 3)), np.ones((4, 2), np.float32))),
                "validation")


# a user's own op (README "Your own op is one declaration") ---------------------------------

def own_op(name, infer, kernel, vjp=None):
    from graphc.ir import OPS
    if name not in OPS:
        gc.register_op(gc.OpDef(name, infer, kernel=kernel, vjp=vjp))
    return lambda *inputs, **attrs: gc.apply(name, *inputs, **attrs)


def test_a_users_op_declared_wrong_is_a_graphc_error_at_the_users_line():
    """gc.apply("nope", x) raised KeyError; an attribute the rule does not take, a rule that
    returns the shape alone or an unknown dtype, or raises, gave TypeError from graphc's ir.py
    (or the rule's exception); grad through an op declared without vjp TypeError "'NoneType'
    object is not callable"; node.eval of a kernel returning float64 for a float32 node gave
    a float64 value. Each is now a GraphcError naming the op, shapes and line (the rule's own
    exception chained as the cause)."""
    x = gc.placeholder((None, 3), "float32", name="x")
    a = np.ones((2, 3), np.float32)
    same = lambda x, **_: (x.shape, x.dtype, {})  # noqa: E731
    raises_here(lambda: gc.apply("p28_nope", x), "unknown op 'p28_nope'")
    scaled = own_op("p28_scaled", lambda x, *, k=1: (x.shape, x.dtype, {"k": k}),
                    lambda x, *, k: x * k)
    raises_here(lambda: scaled(x, j=2), "p28_scaled((?, 3) float32, j=2): its shape rule "
                "failed (TypeError")
    for name, infer in (("p28_shape_only", lambda x: x.shape),
                        ("p28_bad_dtype", lambda x: (x.shape, "floot32", {})),
                        ("p28_raises", lambda x: 1 / 0)):
        with pytest.raises(gc.GraphcError, match=name + r"\(\(\?, 3\) float32\): its shape "
                           r"rule failed .*must return \(shape, dtype\[, attrs\]\)") as info:
            own_op(name, infer, lambda x: x)(x)
        assert HERE in str(info.value) and info.value.__cause__ is not None
    no_vjp = own_op("p28_no_vjp", same, lambda x: x * 3)
    raises_here(lambda: gc.grad(gc.sum(no_vjp(x)), [x]), "op 'p28_no_vjp' has no VJP rule")
    wide = own_op("p28_wide", same, lambda x: x.astype(np.float64))
    raises_here(lambda: wide(x).eval({x: a}), "the kernel of p28_wide returned (2, 3) float64",
                "shape rule gives (2, 3) float32")
    listed = own_op("p28_listed", same, lambda x: x.tolist())
    out = listed(x).eval({x: a})
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(gc.function([x], scaled(x, k=2.0))(a), 2 * a)


def test_scope_names_and_arguments_of_the_autodiff_helpers(tmp_path):
    """gc.name_scope(3) (or None) built nodes whose saved graph gc.load refused ("scope must
    be a list of strings") and that broke render(collapse=True) (TypeError) and inspect
    (AttributeError); now a str is required, as for layers' names. grad(cost, None) and
    vjp(None, ...) raised TypeError, check_grad(cost, x, [array]) AttributeError 'items',
    check_grad(rtol='a') TypeError, gc.Graph([3]) AttributeError, leaky_relu(x, 'a') a bare
    ValueError."""
    x = gc.placeholder((3,), "float64", name="x")
    for bad in (3, None, ("a",)):
        with pytest.raises(gc.GraphcError,
                           match=f"(?s)name_scope: the name must be a str.*{HERE}"):
            with gc.name_scope(bad):
                pass
        raises_here(lambda: nn.Dense(2, name=bad) if bad is not None else nn.Dense(2, name=7),
                    "Dense: name must be a str")
    with gc.name_scope("λ scope"), gc.name_scope(""):
        y = gc.exp(x)
    assert y.scope == ("λ scope", "")
    gc.load(gc.save(y, tmp_path / "g"))
    gc.render(y, collapse=True)
    cost = gc.sum(x ** 2)
    raises_here(lambda: gc.grad(cost, None), "expected a node or a list of nodes")
    raises_here(lambda: gc.vjp(None, [x], None), "expected a node or a list of nodes")
    raises_here(lambda: gc.check_grad(cost, x, [np.ones(3)]), "feeds must be a dict")
    raises_here(lambda: gc.check_grad(cost, x, {x: np.ones(3)}, rtol="a"), "rtol must be")
    assert gc.check_grad(cost, x, {x: np.ones(3)}, rtol=1e-6, atol=0).ok
    raises_here(lambda: gc.Graph([cost, 3]), "Graph: outputs and updates must be graph nodes")
    for make in (lambda: gc.leaky_relu(x, "a"), lambda: gc.elu(x, alpha=x)):
        raises_here(make, "must be a number")
    np.testing.assert_allclose(gc.leaky_relu(x, np.float32(0.5)).eval({x: -np.ones(3)}),
                               -0.5 * np.ones(3))


def test_a_layer_made_inside_forward_is_refused_unless_it_has_no_variables():
    """A Dense made (or kept under '_name') inside a model's forward built its variables but
    no layer held it: model.params missed them, so fit never trained them (silently), and
    each call made new ones. Now that is a GraphcError naming the layer; layers without
    variables (Dropout, Flatten) may still be made there."""
    class Inline(nn.Model):
        def __init__(self, hide):
            super().__init__()
            self.head = nn.Dense(2)
            if hide:
                self._hidden = nn.Dense(4)

        def forward(self, x, training):
            inner = self._hidden if hasattr(self, "_hidden") else nn.Dense(4)
            return self.head(nn.Dropout(0.5)(inner(nn.Flatten()(x))))

    class Free(nn.Model):
        def __init__(self):
            super().__init__()
            self.head = nn.Dense(2)

        def forward(self, x, training):
            return self.head(nn.Dropout(0.5)(nn.Flatten()(x)))

    x = gc.placeholder((None, 3), "float32", name="x")
    for hide in (False, True):
        raises_here(lambda: Inline(hide)(x), "Dense 'dense' is made or called inside another "
                    "layer's forward but no layer holds it")
    assert len(Free()(x).shape) == 2


def test_layer_seeds_and_norm_axes_are_checked_where_given():
    """nn.Sequential([...], seed='a') or seed=-1 failed at the first call with NumPy's
    ValueError (seed=1.5 silently seeded 1); LayerNorm(axis='last') with TypeError in
    graphc's norm.py. Probes that held: sizes, rates, activations, heads, initial states of
    the other layers are refused with a GraphcError."""
    x = gc.placeholder((None, 5, 8), "float32", name="x")
    for seed in ("a", -1, 1.5, True):
        raises_here(lambda: nn.Sequential([nn.Dense(2)], seed=seed), "seed must be an int")
    assert nn.Dense(2, seed=np.int64(3))(x).shape == (None, 5, 2)
    for norm in (nn.LayerNorm(axis="last"), nn.BatchNorm(axis=(1.0,))):
        raises_here(lambda: norm(x), "axis must be an int or a tuple of ints")
    for make, what in ((lambda: nn.Embedding(0, 4), "vocab must be"),
                       (lambda: nn.MultiHeadAttention(3)(x), "does not split into 3 heads"),
                       (lambda: nn.LSTM(4)(x, initial_state=gc.placeholder((None, 4))),
                        "h0 and c0"),
                       (lambda: nn.Conv2D(2, 0), "kernel_size must be")):
        with pytest.raises(gc.GraphcError, match=what):
            make()
