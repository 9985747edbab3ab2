"""graphc.onnx as a demanding user tries it: graphc.nn models (normalization, attention,
embeddings, recurrent layers) saved with their gradients, run in onnxruntime at the exported
and at another batch size, and loaded back into graphc; hand-built ONNX models with control
flow and dynamic shapes against onnxruntime; the errors name the ONNX node."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc as gc  # noqa: E402
import graphc.onnx as gonnx  # noqa: E402
from graphc import nn  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

F = TensorProto.FLOAT
make = helper.make_node


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def ort_run(model_or_path, feeds):
    model = model_or_path if isinstance(model_or_path, (str, bytes)) \
        else model_or_path.SerializeToString()
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def close(got, want, what, rtol=1e-4):
    assert len(got) == len(want), what
    for k, (g, w) in enumerate(zip(got, want)):
        assert np.shape(g) == np.shape(w), f"{what} output {k}"
        np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 0.1, err_msg=f"{what} {k}")


MODELS = {
    "mlp_batchnorm_gelu": (lambda: nn.Sequential([nn.Dense(16), nn.BatchNorm(),
                                                  nn.Activation("gelu"), nn.Dense(4)], seed=0),
                           (6, 10), "float32"),
    "cnn_batchnorm_maxpool": (lambda: nn.Sequential([nn.Conv2D(4, 3, padding=1,
                                                               activation="relu"),
                                                     nn.BatchNorm(), nn.MaxPool2D(2),
                                                     nn.Flatten(), nn.Dense(4)], seed=1),
                              (5, 1, 8, 8), "float32"),
    "embedding_layernorm": (lambda: nn.Sequential([nn.Embedding(10, 6), nn.LayerNorm(),
                                                   nn.Flatten(), nn.Dense(4, "silu")], seed=2),
                            (5, 3), "int64"),
    "attention": (lambda: nn.Sequential([nn.MultiHeadAttention(2, causal=True), nn.LayerNorm(),
                                         nn.Flatten(), nn.Dense(4)], seed=3),
                  (3, 5, 8), "float32"),
    "lstm": (lambda: nn.Sequential([nn.LSTM(8), nn.Dense(4)], seed=4), (5, 6, 3), "float32"),
    "gru_rnn": (lambda: nn.Sequential([nn.GRU(8, return_sequences=True), nn.SimpleRNN(5),
                                       nn.Dense(4)], seed=5),
                (5, 6, 3), "float32"),
}


def draw(rng, shape, dtype):
    return rng.integers(0, 10, shape) if dtype == "int64" \
        else rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", list(MODELS))
def test_nn_model_and_its_gradients_round_trip(name, training, tmp_path):
    """model(x) and the gradient of a loss on it for every parameter: graphc, onnxruntime (the
    exported batch size and another) and the model loaded back agree."""
    make_model, shape, dtype = MODELS[name]
    model = make_model()
    rng = np.random.default_rng(0)
    x = gc.placeholder((None,) + shape[1:], dtype=dtype, name="x")
    out = model(x, training=training)
    grads = gc.grad(gc.sum(out * out), model.params)
    outputs = {"out": out} | {"d_" + p.name.replace("/", "_"): g
                              for p, g in zip(model.params, grads)}
    path = str(tmp_path / "model.onnx")
    gonnx.save(path, {"x": x}, outputs)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    f = gc.function([x], list(outputs.values()))
    back = gonnx.load(path)     # a conv's gradients too: dynamic batch in kernels (probe20)
    g = gc.function([back.inputs["x"]], [back.outputs[k] for k in outputs])
    for batch in (shape[0], shape[0] + 3):
        xb = draw(rng, (batch,) + shape[1:], dtype)
        want = f(xb)
        close(ort_run(path, {"x": xb}), want, f"onnxruntime, batch {batch}")
        close(g(xb), want, f"loaded back, batch {batch}")


# hand-built models ------------------------------------------------------------------------

def model_of(nodes, inputs, outputs, inits=(), opset=17):
    graph = helper.make_graph(nodes, "probe", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], list(values))


def imported_run(model, feeds):
    assert gonnx.check(model) == []
    m = gonnx.load(model)
    f = gc.function([m.inputs[k] for k in feeds], list(m.outputs.values()))
    return as_list(f(*feeds.values()))


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


@pytest.mark.parametrize("batch_dim", ["N", None])
def test_expand_of_a_dynamic_batch_against_a_constant_size(batch_dim):
    """torch's x.expand(x.size(0), 6) from (N, 1), and Expand to [1, 6] (both ways): the
    unknown size is x's own, the known one broadcasts."""
    model = model_of(
        [make("Shape", ["x"], ["s"]), make("Gather", ["s", "zero"], ["n"], axis=0),
         make("Concat", ["n", "six"], ["target"], axis=0),
         make("Expand", ["x", "target"], ["y"]), make("Expand", ["x", "one_six"], ["z"]),
         make("Expand", ["b", "one_six"], ["bz"])],
        [vi("x", [batch_dim, 1]), vi("b", [batch_dim, 1], TensorProto.BOOL)],
        [vi("y", [batch_dim, 6]), vi("z", [batch_dim, 6]),
         vi("bz", [batch_dim, 6], TensorProto.BOOL)],
        [ints("zero", [0]), ints("six", [6]), ints("one_six", [1, 6])])
    if batch_dim is None:             # an unnamed dim's size cannot be copied into a shape
        model.graph.node.pop(3)
        model.graph.output.pop(0)
    for n in (2, 5):
        feeds = {"x": np.arange(n, dtype=np.float32).reshape(n, 1) - 1.5,
                 "b": np.arange(n).reshape(n, 1) % 2 == 0}
        close(imported_run(model, feeds), ort_run(model, feeds), f"batch {n}", rtol=1e-7)


def test_pad_of_a_static_axis_beside_a_dynamic_batch():
    """Pad's pads list every axis; the unknown batch axis is not padded (as graphc exports
    its unslice), and constant, edge and reflect modes pad the known ones."""
    nodes, outputs = [], []
    for mode in ("constant", "edge", "reflect"):
        nodes.append(make("Pad", ["x", "pads", "v"] if mode == "constant" else ["x", "pads"],
                          [mode], mode=mode))
        outputs.append(vi(mode, ["N", 7]))
    model = model_of(nodes, [vi("x", ["N", 4])], outputs,
                     [ints("pads", [0, 1, 0, 2]), helper.make_tensor("v", F, [], [-3.0])])
    for n in (1, 3):
        feeds = {"x": np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32)}
        close(imported_run(model, feeds), ort_run(model, feeds), f"batch {n}", rtol=1e-7)


@pytest.mark.parametrize("batch_dim", ["N", None])
def test_view_of_the_batch_size_inside_a_scan_body(batch_dim):
    """x.view(x.size(0), -1) in a Scan body whose state and slices have a dynamic batch, named
    or not: the -1 is known once the copied size is x's own unknown dim."""
    body = helper.make_graph(
        [make("Shape", ["x"], ["sh"]), make("Gather", ["sh", "z"], ["n"], axis=0),
         make("Concat", ["n", "m1"], ["tg"], axis=0), make("Reshape", ["x", "tg"], ["xf"]),
         make("MatMul", ["xf", "U"], ["xu"]), make("Add", ["h", "xu"], ["h2"]),
         make("Tanh", ["h2"], ["h3"]), make("Identity", ["h3"], ["y"])],
        "body", [vi("h", [batch_dim, 3]), vi("x", [batch_dim, 2, 2])],
        [vi("h3", [batch_dim, 3]), vi("y", [batch_dim, 3])], [ints("z", [0]), ints("m1", [-1])])
    U = helper.make_tensor("U", F, [4, 3], np.linspace(-1, 1, 12).tolist())
    model = model_of([make("Scan", ["h0", "xs"], ["hT", "ys"], body=body, num_scan_inputs=1,
                           scan_input_axes=[1], scan_output_axes=[1])],
                     [vi("h0", [batch_dim, 3]), vi("xs", [batch_dim, 5, 2, 2])],
                     [vi("hT", [batch_dim, 3]), vi("ys", [batch_dim, 5, 3])], [U])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(1)
    for n in (2, 3):
        feeds = {"h0": rng.standard_normal((n, 3)).astype(np.float32),
                 "xs": rng.standard_normal((n, 5, 2, 2)).astype(np.float32)}
        close(imported_run(model, feeds), ort_run(model, feeds), f"batch {n}", rtol=1e-5)


def test_a_copied_unnamed_size_of_another_tensor_is_refused_naming_the_node():
    """Two unnamed dynamic dims cannot be told equal: y.view(x.size(0), -1) is refused."""
    model = model_of(
        [make("Shape", ["x"], ["sh"]), make("Gather", ["sh", "z"], ["n"], axis=0),
         make("Concat", ["n", "m1"], ["tg"], axis=0),
         make("Reshape", ["y", "tg"], ["out"], name="view")],
        [vi("x", [None, 3]), vi("y", [None, 2, 2])], [vi("out", [None, 4])],
        [ints("z", [0]), ints("m1", [-1])])
    with pytest.raises(gonnx.Unsupported, match=r"ONNX node 'view' \(Reshape\): reshape to "
                                                r"\(None, None\)"):
        gonnx.load(model)


def test_reshape_with_a_zero_that_copies_the_unnamed_batch():
    """Reshape(x, [0, -1]) (Keras/TF exporters' flatten) with an unnamed dynamic batch."""
    model = model_of([make("Reshape", ["x", "tg"], ["y"])], [vi("x", [None, 2, 3])],
                     [vi("y", [None, 6])], [ints("tg", [0, -1])])
    imported = gonnx.load(model)
    assert imported.outputs["y"].shape == (None, 6)
    for n in (1, 4):
        feeds = {"x": np.arange(n * 6, dtype=np.float32).reshape(n, 2, 3)}
        close(imported_run(model, feeds), ort_run(model, feeds), f"batch {n}", rtol=1e-7)


def test_check_names_the_loop_around_an_unsupported_node_in_its_body():
    """check() lists every unsupported node, a node inside a Scan body (unnamed: named by its
    position in the body) after the Scan that holds it, as load's error says it."""
    inner = helper.make_graph(
        [make("NonZero", ["v"], ["nz"]), make("Identity", ["acc"], ["acc2"]),
         make("Identity", ["v"], ["y"])],
        "inner", [vi("acc", [3]), vi("v", [3])], [vi("acc2", [3]), vi("y", [3])])
    outer = helper.make_graph(
        [make("Scan", ["h", "row"], ["h2", "ys"], body=inner, num_scan_inputs=1,
              name="inner_scan")],
        "outer", [vi("h", [3]), vi("row", [4, 3])], [vi("h2", [3]), vi("ys", [4, 3])])
    model = model_of(
        [make("Scan", ["h0", "xs"], ["hT", "yss"], body=outer, num_scan_inputs=1,
              name="outer_scan"), make("Unique", ["hT"], ["u"], name="uniq")],
        [vi("h0", [3]), vi("xs", [5, 4, 3])],
        [vi("hT", [3]), vi("yss", [5, 4, 3]), vi("u", None)])
    path = ("ONNX node 'outer_scan' (Scan): ONNX node 'inner_scan' (Scan): "
            "ONNX node 'NonZero_0' (NonZero): op type NonZero is not supported")
    assert gonnx.check(model) == [path, "ONNX node 'uniq' (Unique): op type Unique is not "
                                        "supported"]
    with pytest.raises(gonnx.Unsupported) as e:
        gonnx.load(model)
    assert str(e.value) == path


@pytest.mark.parametrize("pads", [[0, 0, 0, 0], [1, 1, 1, 1]])
def test_maxpool_indices_and_maxunpool_with_a_dynamic_batch(pads):
    """SegNet's pooling: MaxPool's Indices (flat positions over the whole batch) and
    MaxUnpool back to Shape(x), with the batch size known only at run time."""
    model = model_of(
        [make("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2], pads=pads),
         make("Shape", ["x"], ["shape"]),
         make("MaxUnpool", ["y", "idx", "shape"], ["up"], kernel_shape=[2, 2], strides=[2, 2],
              pads=pads)],
        [vi("x", ["N", 3, 4, 6])],
        [vi("y", None), vi("idx", None, TensorProto.INT64), vi("up", ["N", 3, 4, 6])])
    for n in (1, 3):
        x = np.random.default_rng(n).standard_normal((n, 3, 4, 6)).astype(np.float32)
        x[:, 0, :2, :2] = 0.0                                  # ties: the first one wins
        close(imported_run(model, {"x": x}), ort_run(model, {"x": x}), f"batch {n}",
              rtol=1e-7)


def test_max_pool_gradient_round_trips_with_a_dynamic_batch(tmp_path):
    """graphc's max_pool2d gradient (exported as MaxPool's Indices + MaxUnpool) loads back
    with the batch left dynamic and gives graphc's values at two batch sizes."""
    x = gc.placeholder((None, 2, 6, 4), dtype="float32", name="x")
    pooled = gc.max_pool2d(gc.relu(x), 2)
    dx = gc.grad(gc.sum(pooled * pooled), [x])[0]
    path = str(tmp_path / "pool.onnx")
    gonnx.save(path, {"x": x}, {"pooled": pooled, "dx": dx})
    back = gonnx.load(path)
    assert back.inputs["x"].shape[0] is None
    f = gc.function([x], [pooled, dx])
    g = gc.function([back.inputs["x"]], [back.outputs["pooled"], back.outputs["dx"]])
    for n in (1, 4):
        xb = np.random.default_rng(n).standard_normal((n, 2, 6, 4)).astype(np.float32)
        want = f(xb)
        close(g(xb), want, f"loaded back, batch {n}", rtol=1e-6)
        close(ort_run(path, {"x": xb}), want, f"onnxruntime, batch {n}", rtol=1e-6)


def test_trainable_load_makes_variables_of_the_weights_only(tmp_path):
    """A graphc model saved and loaded with trainable=True: its weights (a bias of one unit
    too) become variables, while scalar initializers (the attention's 1/sqrt(d) scale, eps,
    a recurrent layer's zero initial state, masks' fill values) stay constants: fine-tuning
    must not train them. The gradients equal the original model's."""
    model = nn.Sequential([nn.Embedding(7, 4), nn.MultiHeadAttention(2, causal=True),
                           nn.LayerNorm(), nn.GRU(3), nn.Dense(1)], seed=0)
    x = gc.placeholder((None, 5), dtype="int64", name="x")
    out = model(x, training=False)
    path = str(tmp_path / "model.onnx")
    gonnx.save(path, {"x": x}, {"out": out})
    back = gonnx.load(path, trainable=True)
    names = {v.name.rsplit("_", 1)[0]: v for v in back.variables}   # 'dense_4/b_95'
    assert sorted(names) == sorted(p.name for p in model.params)
    xb = np.random.default_rng(0).integers(0, 7, (3, 5))
    want = gc.function([x], gc.grad(gc.sum(out * out), model.params))(xb)
    grads = gc.grad(gc.sum(back.outputs["out"] ** 2), [names[p.name] for p in model.params])
    close(gc.function([back.inputs["x"]], grads)(xb), want, "gradients", rtol=1e-4)


@pytest.mark.parametrize("batch_dim", ["N", None])
def test_constant_of_shape_with_the_batch_size(batch_dim):
    """torch's h0 = torch.zeros(x.size(0), 4) (ConstantOfShape of Concat(Shape(x)[0], 4)) and
    torch.full_like(x, 7) on int64 (ConstantOfShape(Shape(x))), with a dynamic batch."""
    model = model_of(
        [make("Shape", ["x"], ["s"]), make("Gather", ["s", "zero"], ["n"], axis=0),
         make("Concat", ["n", "four"], ["hs"], axis=0),
         make("ConstantOfShape", ["hs"], ["h0"]), make("MatMul", ["x", "W"], ["xw"]),
         make("Add", ["xw", "h0"], ["y"]),
         make("ConstantOfShape", ["s"], ["sevens"],
              value=helper.make_tensor("v", TensorProto.INT64, [1], [7]))],
        [vi("x", [batch_dim, 3])],
        [vi("y", [batch_dim, 4]), vi("sevens", [batch_dim, 3], TensorProto.INT64)],
        [ints("zero", [0]), ints("four", [4]),
         helper.make_tensor("W", F, [3, 4], np.linspace(-1, 1, 12).tolist())])
    for n in (1, 5):
        feeds = {"x": np.random.default_rng(n).standard_normal((n, 3)).astype(np.float32)}
        got, want = imported_run(model, feeds), ort_run(model, feeds)
        assert got[1].dtype == np.int64
        close(got, want, f"batch {n}", rtol=1e-6)


def test_constant_of_shape_of_a_computed_size_is_refused_naming_the_node():
    model = model_of(
        [make("Shape", ["x"], ["s"]), make("Mul", ["s", "two"], ["s2"]),
         make("ConstantOfShape", ["s2"], ["z"], name="zeros")],
        [vi("x", ["N"])], [vi("z", ["M"])], [ints("two", [2])])
    with pytest.raises(gonnx.Unsupported, match=r"ONNX node 'zeros' \(ConstantOfShape\): .*"
                                                r"computed from a size known only at run time"):
        gonnx.load(model)


W3 = helper.make_tensor("W", F, [3, 3], np.linspace(-0.8, 0.8, 9).tolist())


def test_nested_scans_read_the_outer_carry_and_an_outer_initializer():
    """The inner Scan's body reads the outer body's carry h; the outer body reads W from the
    model's initializers."""
    inner = helper.make_graph(
        [make("Add", ["acc", "v"], ["s"]), make("Mul", ["s", "h"], ["p"]),
         make("Tanh", ["p"], ["acc2"]), make("Identity", ["acc2"], ["y"])],
        "inner", [vi("acc", [3]), vi("v", [3])], [vi("acc2", [3]), vi("y", [3])])
    outer = helper.make_graph(
        [make("Scan", ["h", "row"], ["last", "ys"], body=inner, num_scan_inputs=1),
         make("MatMul", ["last", "W"], ["h2"]),
         make("ReduceSum", ["ys", "zero"], ["out"], keepdims=0)],
        "outer", [vi("h", [3]), vi("row", [4, 3])], [vi("h2", [3]), vi("out", [3])],
        [ints("zero", [0])])
    model = model_of([make("Scan", ["h0", "xs"], ["hT", "outs"], body=outer,
                           num_scan_inputs=1)],
                     [vi("h0", [3]), vi("xs", [5, 4, 3])], [vi("hT", [3]), vi("outs", [5, 3])],
                     [W3])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(2)
    feeds = {"h0": rng.standard_normal(3).astype(np.float32),
             "xs": rng.standard_normal((5, 4, 3)).astype(np.float32)}
    close(imported_run(model, feeds), ort_run(model, feeds), "nested", rtol=1e-5)


@pytest.mark.parametrize("cond", [True, False])
def test_scan_inside_if_with_a_run_time_condition(cond):
    body = helper.make_graph([make("Add", ["c", "x"], ["c2"]), make("Mul", ["c2", "c2"], ["y"])],
                             "body", [vi("c", [2]), vi("x", [2])],
                             [vi("c2", [2]), vi("y", [2])])
    then = helper.make_graph([make("Scan", ["c0", "xs"], ["t_c", "t_y"], body=body,
                                   num_scan_inputs=1)], "then", [],
                             [vi("t_c", [2]), vi("t_y", [4, 2])])
    other = helper.make_graph([make("Neg", ["c0"], ["e_c"]), make("Neg", ["xs"], ["e_y"])],
                              "else", [], [vi("e_c", [2]), vi("e_y", [4, 2])])
    model = model_of([make("If", ["cond"], ["oc", "oy"], then_branch=then, else_branch=other)],
                     [vi("cond", [], TensorProto.BOOL), vi("c0", [2]), vi("xs", [4, 2])],
                     [vi("oc", [2]), vi("oy", [4, 2])])
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(3)
    feeds = {"cond": np.array(cond), "c0": rng.standard_normal(2).astype(np.float32),
             "xs": rng.standard_normal((4, 2)).astype(np.float32)}
    close(imported_run(model, feeds), ort_run(model, feeds), f"cond {cond}", rtol=1e-6)


def test_loop_with_a_trip_count_reads_the_iteration_number_and_an_outer_input():
    body = helper.make_graph(
        [make("Identity", ["cin"], ["cout"]), make("Cast", ["i"], ["fi"], to=F),
         make("Mul", ["v", "fi"], ["t"]), make("Add", ["t", "bias"], ["v2"]),
         make("Identity", ["v2"], ["y"])],
        "body", [vi("i", [], TensorProto.INT64), vi("cin", [], TensorProto.BOOL), vi("v", [2])],
        [vi("cout", [], TensorProto.BOOL), vi("v2", [2]), vi("y", [2])])
    model = model_of([make("Loop", ["M", "", "v0"], ["vT", "ys"], body=body)],
                     [vi("v0", [2]), vi("bias", [2])], [vi("vT", [2]), vi("ys", [3, 2])],
                     [helper.make_tensor("M", TensorProto.INT64, [], [3])])
    feeds = {"v0": np.array([1.0, 2.0], np.float32), "bias": np.array([0.5, -1], np.float32)}
    close(imported_run(model, feeds), ort_run(model, feeds), "loop", rtol=1e-7)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_ops_with_a_dynamic_batch(op, gates, direction):
    """torch's nn.LSTM/GRU/RNN export: the ONNX recurrent op with the batch dynamic (static
    time), no initial state (zeros of the run-time batch) or one given as an input."""
    rng = np.random.default_rng(4)
    dirs, hidden, feat, steps = (2 if direction == "bidirectional" else 1), 3, 2, 4
    inits = [helper.make_tensor(name, F, shape, (0.5 * rng.standard_normal(shape)).ravel())
             for name, shape in (("W", [dirs, gates * hidden, feat]),
                                 ("R", [dirs, gates * hidden, hidden]),
                                 ("B", [dirs, 2 * gates * hidden]))]
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    for with_h0 in (False, True):
        node = make(op, ["x", "W", "R", "B"] + (["", "h0"] if with_h0 else []), outputs,
                    hidden_size=hidden, direction=direction)
        model = model_of([node], [vi("x", [steps, "batch", feat])]
                         + ([vi("h0", [dirs, "batch", hidden])] if with_h0 else []),
                         [vi(o, None) for o in outputs], inits)
        for n in (1, 3):
            feeds = {"x": rng.standard_normal((steps, n, feat)).astype(np.float32)}
            if with_h0:
                feeds["h0"] = rng.standard_normal((dirs, n, hidden)).astype(np.float32)
            close(imported_run(model, feeds), ort_run(model, feeds), f"{op} batch {n}",
                  rtol=1e-5)
