"""probe31: a hostile probe of interchange (ONNX models built by hand against onnxruntime and
onnx's reference evaluator, hostile and malformed models, graphc -> ONNX -> graphc round trips,
the standalone NumPy export); one test per bug found, each failing before its fix, plus the
probes that found nothing but guard a promise."""
from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc as gc  # noqa: E402
import graphc.onnx as gonnx  # noqa: E402
from graphc.ir import evaluate  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

F, I64 = TensorProto.FLOAT, TensorProto.INT64
make = helper.make_node


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def out(name):
    """A graph output of no declared type (onnxruntime infers it)."""
    return helper.make_empty_tensor_value_info(name)


def model_of(nodes, inputs, outputs, inits=(), opset=18):
    graph = helper.make_graph(nodes, "probe31", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def agree(model, feeds, rtol=1e-5):
    """The imported model, evaluated and compiled, computes what onnxruntime computes."""
    assert gonnx.check(model) == []
    want = ort_run(model, feeds)
    m = gonnx.load(model)
    outs = list(m.outputs.values())
    evaluated = evaluate(outs, {m.inputs[k]: v for k, v in feeds.items()})
    compiled = gc.function([m.inputs[k] for k in feeds], outs)(*feeds.values())
    for got in (evaluated, compiled):
        got = list(got) if isinstance(got, (list, tuple)) else [got]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            g = np.asarray(g)
            assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype)
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


# reductions over no axes --------------------------------------------------------------------

@pytest.mark.parametrize("op", ["ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum",
                                "ReduceLogSumExp", "ReduceSum", "ReduceMax"])
@pytest.mark.parametrize("axes", [None, []])
def test_a_reduction_over_no_axes_keeps_its_elementwise_steps(op, axes):
    """noop_with_empty_axes=1 with no axes imported as the input itself; ONNX says the
    composite reductions still take their elementwise steps (ReduceLogSum is log x,
    ReduceSumSquare x * x, ReduceL1 |x|): they returned x unchanged."""
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    if op == "ReduceLogSum":
        x = np.abs(x) + 0.1
    inputs, inits = ["x"], []
    if axes is not None:
        inputs, inits = ["x", "axes"], [("axes", np.array(axes, np.int64))]
    model = model_of([make(op, inputs, ["y"], noop_with_empty_axes=1)], [vi("x", [2, 3, 4])],
                     [out("y")], inits)
    agree(model, {"x": x})


@pytest.mark.parametrize("axes", [[1], [-1], [1, 2]])
def test_log_sum_exp_without_keepdims_over_a_dynamic_batch(axes):
    """ReduceLogSumExp with keepdims=0 reshaped its kept-dims result to a shape holding the
    batch's name: 'target shape ('N', 4) must be a tuple of ints'."""
    model = model_of([make("ReduceLogSumExp", ["x", "axes"], ["y"], keepdims=0)],
                     [vi("x", ["N", 3, 4])], [out("y")], [("axes", np.array(axes, np.int64))])
    for batch in (2, 5):
        agree(model, {"x": np.random.default_rng(batch).standard_normal((batch, 3, 4))
                      .astype(np.float32)})


# gathering -------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("index_shape", [(1, 1, 1), (1, 2, 3), (2, 3, 1)])
def test_gather_elements_gives_the_indices_shape(axis, index_shape):
    """GatherElements' output has the indices' shape, which may be smaller than the data's on
    the other axes; NumPy's take_along_axis broadcast the indices over them instead: (2, 3, 1)
    indices along axis 1 of a (2, 3, 4) input gave (2, 1, 4) where ONNX gives (2, 3, 1)...
    (the negative indices are counted from the end)."""
    rng = np.random.default_rng(1)
    indices = rng.integers(-2, 2, index_shape)
    model = model_of([make("GatherElements", ["x", "i"], ["y"], axis=axis)],
                     [vi("x", [2, 3, 4])], [out("y")], [("i", indices)])
    agree(model, {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)})


@pytest.mark.parametrize("op", ["Gather", "GatherElements"])
def test_constant_indices_into_a_dynamic_axis(op):
    """Constant indices along an axis of unknown size (the batch) met NumPy as `indices +
    'N'` (a UFuncTypeError in the message) even when none is negative; now non-negative ones
    import, and negative ones are refused naming the node and the axis."""
    indices = np.zeros((1, 3, 4), np.int64) + np.array([0, 1, 0, 1])
    model = model_of([make(op, ["x", "i"], ["y"], axis=0)], [vi("x", ["N", 3, 4])], [out("y")],
                     [("i", indices)])
    x = np.random.default_rng(2).standard_normal((3, 3, 4)).astype(np.float32)
    agree(model, {"x": x})
    model = model_of([make(op, ["x", "i"], ["y"], axis=0)], [vi("x", ["N", 3, 4])], [out("y")],
                     [("i", -1 - indices)])
    with pytest.raises(gc.GraphcError, match=rf"'{op}_0' \({op}\): negative indices into an "
                                             r"axis of unknown size 'N'"):
        gonnx.load(model)


# malformed models ------------------------------------------------------------------------

@pytest.mark.parametrize("nodes,inputs", [
    ([make("Relu", ["x"], ["a"]), make("Neg", ["x"], ["a"])], ["x"]),    # two producers
    ([make("Relu", ["x"], ["x"])], ["x"]),                                 # over an input
    ([make("Relu", ["x"], ["w"]), make("Add", ["w", "x"], ["a"])], ["x"]),  # over a weight
])
def test_a_name_assigned_twice_is_refused_naming_the_node(nodes, inputs):
    """ONNX assigns each value name once (onnxruntime refuses the model); graphc took the last
    assignment silently and computed something else."""
    model = model_of(nodes, [vi(k, [3, 4]) for k in inputs], [out(nodes[-1].output[0])],
                     [("w", np.ones((3, 4), np.float32))])
    with pytest.raises(gc.GraphcError, match=r"ONNX node '\w+' \(\w+\): output\(s\) \['\w'\] "
                                             r"already name another value"):
        gonnx.load(model)


def test_a_required_input_left_empty_is_named():
    """Relu(''): the entry met None and said `relu(None): constant: unsupported value of dtype
    object`; now the node's required input is named by its ONNX name."""
    model = model_of([make("Relu", [""], ["y"])], [vi("x", [3])], [out("y")])
    with pytest.raises(gc.GraphcError, match=r"'Relu_0' \(Relu\): required input\(s\) "
                                             r"\['0 \(X\)'\] are missing or left empty"):
        gonnx.load(model)
    clip = model_of([make("Clip", ["x", "", "hi"], ["y"])], [vi("x", [3])], [out("y")],
                    [("hi", np.float32(0.5))])              # optional inputs may be empty
    agree(clip, {"x": np.array([-1, 0.2, 3], np.float32)})


def external_model(location):
    """x + W, with W's data in the file `location` (relative to the model's folder)."""
    model = model_of([make("Add", ["x", "W"], ["y"])], [vi("x", [3])], [out("y")],
                     [("W", np.zeros(3, np.float32))])
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    return model


def test_a_model_in_memory_never_reads_external_data_from_the_working_folder(tmp_path,
                                                                            monkeypatch):
    """A ModelProto whose weights live in an external file ('w.bin') was read from the
    process's working folder (numpy_helper resolves the location against ''), whatever that
    folder holds; a location outside it was onnx's bare ValidationError. Now a model in memory
    with external data is refused; from its path, onnx reads the file beside the model."""
    np.arange(3, dtype=np.float32).tofile(tmp_path / "w.bin")
    monkeypatch.chdir(tmp_path)
    for location in ("w.bin", "../w.bin", "nothere.bin"):
        with pytest.raises(gc.GraphcError, match=r"tensor\(s\) \['W'\] of the model keep their "
                                                 r"data in an external file"):
            gonnx.load(external_model(location))
    path = tmp_path / "m.onnx"
    path.write_bytes(external_model("w.bin").SerializeToString())
    assert np.array_equal(gonnx.load(str(path)).params["W"].data, [0, 1, 2])
    path.write_bytes(external_model("../w.bin").SerializeToString())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.onnx").write_bytes(path.read_bytes())
    with pytest.raises(gc.GraphcError, match="points outside the directory"):
        gonnx.load(str(tmp_path / "sub" / "m.onnx"))


# older opsets ----------------------------------------------------------------------------

def older(opset):
    """A small classifier as opset-`opset` exporters wrote it: ReduceMean/Squeeze/Unsqueeze
    with attribute axes, Split with attribute sizes, Softmax over the flattened trailing axes
    (axis 1 by default) and Add, Relu, Gemm whose definitions only gained types since."""
    rng = np.random.default_rng(opset)
    nodes = [make("Unsqueeze", ["x"], ["u"], axes=[1]),
             make("ReduceMean", ["u"], ["m"], axes=[-1], keepdims=1),
             make("Squeeze", ["m"], ["s"], axes=[1]),
             make("Split", ["x"], ["a", "b"], axis=1, split=[2, 4]),
             make("ReduceSum", ["b"], ["bs"], axes=[1], keepdims=1),
             make("Add", ["a", "bs"], ["ab"]),
             make("Concat", ["ab", "s", "x"], ["c"], axis=1),
             make("Gemm", ["c", "w", "bias"], ["h"], transB=1),
             make("Relu", ["h"], ["r"]),
             make("Reshape", ["r", "shape"], ["r3"]),
             make("Softmax", ["r3"], ["p"]),
             make("LogSoftmax", ["r3"], ["lp"], axis=2)]
    inits = [("w", rng.standard_normal((6, 9)).astype(np.float32)),
             ("bias", rng.standard_normal(6).astype(np.float32)),
             ("shape", np.array([-1, 3, 2], np.int64))]
    return model_of(nodes, [vi("x", ["N", 6])], [out("p"), out("lp")], inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 12])
def test_models_of_opsets_11_and_12_import(opset):
    """Opsets below 13 were refused wherever the op's version differed from its opset-13
    version, even when it only gained types since (Add-7, Relu-6, Gemm-11...), and where an
    attribute became an input (ReduceSum, Split, Squeeze, Unsqueeze) though the entries read
    both; Softmax below 13 flattens the axes from `axis` on. Now they import and match
    onnxruntime at two batch sizes."""
    model = older(opset)
    for batch in (2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        agree(model, {"x": x})


def test_an_older_op_that_differs_is_still_refused_naming_it():
    """Clip-6 (min and max attributes) is not what Clip-13 is: refused before anything runs."""
    model = model_of([make("Clip", ["x"], ["y"], min=-1.0, max=1.0)], [vi("x", [3])],
                     [out("y")], opset=10)
    with pytest.raises(gc.GraphcError, match=r"'Clip_0' \(Clip\): opset 10 \(Clip-6\) is older "
                                             r"than the supported opsets 13\+ \(Clip-13\)"):
        gonnx.load(model)


@pytest.mark.parametrize("outputs", [["y"], ["y", "mask"]])
def test_inference_dropout_with_a_dynamic_batch(outputs):
    """Dropout in inference (as exporters leave it) built its mask as a constant of x's shape,
    so a dynamic batch was refused ('Dropout's mask needs a static shape') even when the mask
    was not asked for."""
    model = model_of([make("Dropout", ["x", "ratio", "training"], outputs)],
                     [vi("x", ["N", 3])], [out(o) for o in outputs],
                     [("ratio", np.float32(0.3)), ("training", np.array(False))])
    for batch in (2, 5):
        agree(model, {"x": np.random.default_rng(batch).standard_normal((batch, 3))
                      .astype(np.float32)})


# hostile models: every one a GraphcError naming the node, before anything runs ---------------

def damaged(tensor):
    """W of dims (5, 5) that holds 6 values."""
    tensor.dims[:] = [5, 5]
    return tensor


def ints(values):
    return np.array(values, np.int64)


HOSTILE = {   # name: (nodes, extra inputs, initializers, what the message says)
    # raw ValueError / KeyError / StopIteration before
    "damaged initializer": ([make("Add", ["x", "w"], ["y"])], [], "damaged",
                            r"initializer 'w' is damaged: cannot reshape array of size 6"),
    "damaged attribute": ([make("Constant", [], ["y"], value=damaged(numpy_helper.from_array(
        np.ones((2, 3), np.float32))))], [], [], r"'Constant_0' \(Constant\): attribute "
                                                  r"'value' is damaged"),
    "unknown type code": ([make("Cast", ["x"], ["y"], to=999)], [], [],
                          r"'Cast_0' \(Cast\): .* data type 999 \(no ONNX type\)"),
    "repeated axes": ([make("Unsqueeze", ["x", "a"], ["y"])], [], [("a", ints([0, 0]))],
                      r"'Unsqueeze_0' \(Unsqueeze\): axes that repeat"),
    "zero delta": ([make("Range", ["s", "e", "d"], ["y"])], [],
                   [("s", ints(0)), ("e", ints(5)), ("d", ints(0))],
                   r"'Range_0' \(Range\): delta 0"),
    "an extra input": ([make("Relu", ["x", "x"], ["y"])], [], [],
                       r"'Relu_0' \(Relu\): 2 inputs given; Relu takes at most 1"),
    # imported silently before, computing something onnxruntime refuses
    "axes out of range": ([make("ReduceSum", ["x", "a"], ["y"])], [], [("a", ints([5]))],
                          r"'ReduceSum_0' \(ReduceSum\): axis 5 is out of range for rank 2"),
    "arg axis out of range": ([make("ArgMax", ["x"], ["y"], axis=3)], [], [],
                              r"'ArgMax_0' \(ArgMax\): axis 3 is out of range for rank 2"),
    "norm axis out of range": ([make("LayerNormalization", ["x", "s"], ["y"], axis=3)], [],
                               [("s", np.ones(3, np.float32))], r"axis 3 is out of range"),
    "flatten axis out of range": ([make("Flatten", ["x"], ["y"], axis=5)], [], [],
                                  r"'Flatten_0' \(Flatten\): axis 5 is out of range"),
    "pads too few": ([make("Pad", ["x", "p"], ["y"])], [], [("p", ints([1, 1]))],
                     r"'Pad_0' \(Pad\): 2 pads for 2 axes \(it takes 4"),
    "expand that cannot": ([make("Expand", ["x", "s"], ["y"])], [], [("s", ints([4, 3]))],
                           r"'Expand_0' \(Expand\): cannot expand \(2, 3\) to \[4, 3\]"),
}


HOSTILE.update({   # types ONNX does not allow, which NumPy promoted silently
    "mixed types": ([make("Add", ["x", "w"], ["y"])], [], [("w", np.ones(3))],
                    r"'Add_0' \(Add\): inputs 0 \(A\) and 1 \(B\) must have one type, got "
                    r"float32 and float64"),
    "float indices": ([make("Gather", ["x", "i"], ["y"])], [], [("i", np.zeros(2, np.float32))],
                      r"'Gather_0' \(Gather\): input 1 \(indices\) is float32, which Gather does "
                      r"not take"),
    "bool into Relu": ([make("Cast", ["x"], ["b"], to=TensorProto.BOOL),
                        make("Relu", ["b"], ["y"])], [], [],
                       r"'Relu_1' \(Relu\): input 0 \(X\) is bool"),
})


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_model_is_a_graphc_error_naming_its_node(name):
    nodes, inputs, inits, words = HOSTILE[name]
    if inits == "damaged":
        inits = []
        model = model_of(nodes, [vi("x", [2, 3])] + inputs, [out("y")])
        model.graph.initializer.append(damaged(numpy_helper.from_array(
            np.ones((2, 3), np.float32), "w")))
    else:
        model = model_of(nodes, [vi("x", [2, 3])] + inputs, [out("y")], inits)
    with pytest.raises(gc.GraphcError, match=words):
        gonnx.load(model)
    assert any(re.search(words, e) for e in gonnx.check(model)), gonnx.check(model)


@pytest.mark.parametrize("opset", [7, 9])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_of_old_models_matches_onnxruntime(opset, mode):
    """Upsample (opsets 7-9: old detectors' and segmenters' upsampling) had no entry; it is
    Resize with asymmetric coordinates and nearest rounding down (scales an attribute at 7)."""
    scales = [1.0, 1.0, 1.5, 2.5]
    if opset == 7:
        node, inits = make("Upsample", ["x"], ["y"], mode=mode, scales=scales), []
    else:
        node = make("Upsample", ["x", "s"], ["y"], mode=mode)
        inits = [("s", np.array(scales, np.float32))]
    model = model_of([node], [vi("x", [2, 3, 4, 5])], [out("y")], inits, opset=opset)
    agree(model, {"x": np.random.default_rng(0).standard_normal((2, 3, 4, 5))
                  .astype(np.float32)})


def test_scatter_and_dropout_of_opsets_9_and_10():
    """Scatter (opsets 9-10's ScatterElements) had no entry; Dropout-7/10 (a ratio attribute)
    was refused as older than 13."""
    model = model_of([make("Scatter", ["x", "i", "u"], ["s"], axis=1),
                      make("Dropout", ["s"], ["y"], ratio=0.3)],
                     [vi("x", [2, 4]), vi("u", [2, 2])], [out("y")],
                     [("i", np.array([[0, 3], [1, -2]], np.int64))], opset=10)
    rng = np.random.default_rng(1)
    agree(model, {"x": rng.standard_normal((2, 4)).astype(np.float32),
                  "u": rng.standard_normal((2, 2)).astype(np.float32)})


@pytest.mark.parametrize("op,opset", [("Upsample", 10), ("Scatter", 13)])
def test_an_op_deprecated_at_the_models_opset_is_refused(op, opset):
    """As onnxruntime refuses them: the op's opset says use Resize / ScatterElements."""
    node = make("Upsample", ["x", "s"], ["y"]) if op == "Upsample" \
        else make("Scatter", ["x", "s", "x"], ["y"])
    model = model_of([node], [vi("x", [1, 1, 2, 2])], [out("y")],
                     [("s", np.ones(4, np.float32 if op == "Upsample" else np.int64))],
                     opset=opset)
    with pytest.raises(gc.GraphcError, match=rf"{op} is deprecated at opset {opset}"):
        gonnx.load(model)


# input_values -----------------------------------------------------------------------------

def shape_model():
    """y = reshape(x + W, s): W an initializer that is also a graph input (a default), s the
    shape input an entry must read as a constant."""
    graph = helper.make_graph([make("Add", ["x", "W"], ["a"]), make("Reshape", ["a", "s"], ["y"])],
                              "probe31", [vi("x", [2, 3]), vi("W", [3]), vi("s", [2], I64)],
                              [out("y")], [numpy_helper.from_array(np.ones(3, np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("values,words", [
    ({"s": [3, 2], "shape": [3, 2]}, r"input_values: \['shape'\] are not inputs of the model "
                                     r"\(its inputs: \['x', 'W', 's'\]\)"),
    ({"s": "abc"}, r"input_values\['s'\]: .*invalid literal"),
    ({"s": np.array([3.7, 2.2])}, r"input_values\['s'\]: .*expected dtype int64, got float64"),
    ({"s": [3, 2], "x": np.ones((3, 3), np.float32)},
     r"input_values\['x'\]: .*expected shape \(2, 3\), got \(3, 3\)"),
])
def test_input_values_are_checked_as_feeds(values, words):
    """A misspelt name was ignored (the error then blamed the node that needed the value),
    'abc' was a raw ValueError, [3.7, 2.2] became the shape [3, 2] and a value of the wrong
    shape was taken; now each is refused as a feed of that input would be."""
    with pytest.raises(gc.GraphcError, match=words):
        gonnx.load(shape_model(), input_values=values)


def test_input_values_override_an_initializer_that_is_also_an_input():
    """onnxruntime lets a feed replace such an initializer; input_values ignored the value."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    w = np.array([10, 20, 30], np.float32)
    want = ort_run(shape_model(), {"x": x, "W": w, "s": np.array([3, 2], np.int64)})[0]
    m = gonnx.load(shape_model(), input_values={"W": w, "s": [3, 2]})
    assert list(m.inputs) == ["x"]
    np.testing.assert_array_equal(m.outputs["y"].eval({m.inputs["x"]: x}), want)


# export ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-13)])
def test_square_log1p_expm1_and_a_float_trunc_divide_export(dtype, rtol, tmp_path):
    """gc.square, gc.log1p and gc.expm1 had no export rule (save refused them, though the README
    names only the fused ops and cumprod); a float trunc_divide was exported as Div, without
    the truncation (7.25 / -2 gave -3.625 where graphc gives -3). log1p and expm1 keep their
    accuracy near 0 (Goldberg's and Kahan's forms), and -1, +-inf, nan, in onnxruntime too."""
    x = gc.placeholder((None,), dtype, name="x")
    y = gc.placeholder((None,), dtype, name="y")
    outs = {"square": gc.square(x), "log1p": gc.log1p(x), "expm1": gc.expm1(x),
            "trunc_divide": gc.trunc_divide(x, y)}
    outs["grad"] = gc.grad(gc.sum(gc.log1p(gc.abs(x)) + gc.expm1(0.1 * x) + gc.square(x)),
                           [x])[0]
    path = str(tmp_path / "m.onnx")
    gonnx.save(path, {"x": x, "y": y}, outs)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    xs = np.array([0, 1e-12, -1e-12, 1e-7, -1e-5, 0.3, -0.7, -1, 2, 30, -800, 800, np.inf,
                   -np.inf, np.nan, -5.5, 7.25], dtype)
    ys = np.array([1, 3, -3, 2, -2, 0.4, 0.3, 5, -1.5, 7, 3, -3, 2, 2, 1, 2, -2], dtype)
    with np.errstate(all="ignore"):
        want = gc.function([x, y], list(outs.values()))(xs, ys)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for name, got, w in zip(outs, sess.run(None, {"x": xs, "y": ys}), want):
        np.testing.assert_allclose(got, w, rtol=rtol, atol=0, err_msg=name)


@pytest.mark.parametrize("shape,axis", [((None, 3, 4), (1, 2)), ((None, 3, 4, 2), (1, 3)),
                                        ((2, 3, 4), None)])
def test_the_gradient_of_a_max_over_several_axes_exports(shape, axis, tmp_path):
    """max's gradient routes through argmax_mask, whose export took one axis only: the
    gradient of gc.max(x) over all of a static x, or over (1, 2), was refused. Now the axes
    are moved last and flattened (the first maximum in C order, as the kernel picks it); the
    model runs in onnxruntime and loads back, at two batch sizes where the batch is free."""
    x = gc.placeholder(shape, "float32", name="x")
    m = gc.max(x, axis=axis)
    outs = {"m": m, "dx": gc.grad(gc.sum(m * m), [x])[0]}
    path = str(tmp_path / "m.onnx")
    gonnx.save(path, {"x": x}, outs)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    f = gc.function([x], list(outs.values()))
    back = gonnx.load(path)
    g = gc.function([back.inputs["x"]], [back.outputs[k] for k in outs])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in ((2, 5) if shape[0] is None else shape[:1]):
        xs = np.random.default_rng(batch).standard_normal((batch,) + shape[1:]).astype(np.float32)
        xs[0, 0] = xs.max()                   # a tie: the first maximum takes the gradient
        want = f(xs)
        for got in (sess.run(None, {"x": xs}), g(xs)):
            for a, w in zip(got, want):
                np.testing.assert_allclose(a, w, rtol=1e-6)


def test_a_graph_output_of_another_type_than_declared_is_named():
    """The model says y is int64; its node computes float32 (onnxruntime refuses the model;
    graphc handed back float32 under the name)."""
    model = model_of([make("Relu", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3], I64)])
    with pytest.raises(gc.GraphcError, match=r"graph output 'y': is declared tensor\(int64\), "
                                             r"but its node computes float32"):
        gonnx.load(model)



@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("size,stride", [((3, 3), (2, 2)), ((2, 2), (1, 1)), ((2, 2), (2, 2))])
def test_max_pool_gradients_export_with_overlapping_windows(dtype, size, stride, tmp_path):
    """max_pool2d_grad exported as MaxUnpool, refused for overlapping windows (3x3 stride 2,
    as ResNets pool: a position may be the maximum of two windows, whose gradients add) and
    failing in onnxruntime in float64 (no MaxUnpool kernel); now a ScatterElements that adds.
    onnxruntime and the model loaded back give graphc's values at two batch sizes, ties too."""
    x = gc.placeholder((None, 2, 7, 6), dtype, name="x")
    y = gc.max_pool2d(x, size, stride)
    w = gc.constant(np.random.default_rng(0).standard_normal((1,) + y.shape[1:]).astype(dtype))
    outs = {"y": y, "dx": gc.grad(gc.sum(y * w), [x])[0]}
    path = str(tmp_path / "m.onnx")
    gonnx.save(path, {"x": x}, outs)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    f = gc.function([x], list(outs.values()))
    back = gonnx.load(path)
    g = gc.function([back.inputs["x"]], [back.outputs[k] for k in outs])
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (2, 3):
        xs = np.random.default_rng(batch).standard_normal((batch, 2, 7, 6)).astype(dtype)
        xs[0, 0, :3, :3] = 5.0                    # ties: the first maximum takes the gradient
        want = f(xs)
        for got in (sess.run(None, {"x": xs}), g(xs)):
            for a, b in zip(got, want):      # the adds may run in another order
                np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_ops_with_per_sample_sequence_lengths(op, gates, direction):
    """sequence_lens shorter than the sequence (padded batches, as packed sequences export)
    were refused; now a sample's state stops at its length and its outputs past it are 0, a
    reverse pass starting at the sample's own last step, as onnxruntime computes."""
    rng = np.random.default_rng(gates)
    dirs, hidden, steps, batch = (2 if direction == "bidirectional" else 1), 3, 5, 3
    inits = [("w", rng.standard_normal((dirs, gates * hidden, 4)).astype(np.float32) * 0.5),
             ("r", rng.standard_normal((dirs, gates * hidden, hidden)).astype(np.float32) * 0.5),
             ("b", rng.standard_normal((dirs, 2 * gates * hidden)).astype(np.float32) * 0.3),
             ("lens", np.array([5, 3, 1], np.int32)),
             ("h0", rng.standard_normal((dirs, batch, hidden)).astype(np.float32))]
    model = model_of([make(op, ["x", "w", "r", "b", "lens", "h0"], ["y", "y_h"],
                           hidden_size=hidden, direction=direction)],
                     [vi("x", [steps, batch, 4])], [out("y"), out("y_h")], inits, opset=22)
    agree(model, {"x": rng.standard_normal((steps, batch, 4)).astype(np.float32)})


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3), ("RNN", 1)])
def test_recurrent_ops_with_clip(op, gates):
    """clip (the gates' inputs bounded to [-clip, clip]) was refused; LSTM with peepholes too."""
    rng = np.random.default_rng(gates)
    hidden, steps, batch = 3, 4, 2
    inputs = ["x", "w", "r", "b", "", ""] + (["", "p"] if op == "LSTM" else [])
    inits = [("w", rng.standard_normal((1, gates * hidden, 4)).astype(np.float32) * 1.5),
             ("r", rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32) * 1.5),
             ("b", rng.standard_normal((1, 2 * gates * hidden)).astype(np.float32))]
    if op == "LSTM":
        inits.append(("p", rng.standard_normal((1, 3 * hidden)).astype(np.float32)))
    model = model_of([make(op, inputs, ["y", "y_h"], hidden_size=hidden, clip=0.3)],
                     [vi("x", [steps, "N", 4])], [out("y"), out("y_h")], inits, opset=22)
    for n in (batch, batch + 3):
        agree(model, {"x": rng.standard_normal((steps, n, 4)).astype(np.float32)})


def test_the_gradient_of_a_concat_of_two_dynamic_parts_exports(tmp_path):
    """concat_part (concat's gradient when two parts have run-time sizes, e.g. two batches
    concatenated) had no export rule; now a Slice between run-time offsets (Shape, Add) that
    runs in onnxruntime; loading it back is refused naming the Slice, as for any run-time
    size used as a value."""
    a = gc.placeholder((None, 3), "float32", name="a")
    b = gc.placeholder((None, 3), "float32", name="b")
    c = gc.placeholder((2, 3), "float32", name="c")
    y = gc.tanh(gc.concat([a, c, b], axis=0))
    grads = gc.grad(gc.sum(y * y * gc.constant(np.arange(3, dtype=np.float32))), [a, b, c])
    path = str(tmp_path / "m.onnx")
    gonnx.save(path, {"a": a, "b": b, "c": c}, {"da": grads[0], "db": grads[1], "dc": grads[2]})
    onnx.checker.check_model(onnx.load(path), full_check=True)
    f = gc.function([a, b, c], grads)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for na, nb in ((1, 4), (3, 2)):
        feeds = [rng.standard_normal((n, 3)).astype(np.float32) for n in (na, nb, 2)]
        for got, want in zip(sess.run(None, dict(zip("abc", feeds))), f(*feeds)):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(gc.GraphcError, match=r"\(Slice\): input 'ends' depends on a size known "
                                             r"only at run time"):
        gonnx.load(path)
