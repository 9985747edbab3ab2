"""ONNX control flow: Scan, Loop and If import as graphc loops (checked against onnxruntime),
and graphc's scan exports as Scan (forward and gradient graphs run in onnxruntime)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc as gc  # noqa: E402
import graphc.onnx as gonnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tests import onnx_models  # noqa: E402

rng = np.random.default_rng(0)
F = TensorProto.FLOAT
n = helper.make_node


def vi(name, shape, dtype=F):
    return helper.make_tensor_value_info(name, dtype, shape)


def ort_run(model, feeds, check=False):
    if check:                       # the models written by hand leave output shapes open
        onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def graphc_run(model, feeds):
    imported = gonnx.load(model)
    fn = gc.function([imported.inputs[k] for k in feeds], list(imported.outputs.values()))
    return fn(*feeds.values())


def rnn_body():
    """h' = tanh(h W + x U), y = h' * 2; W read from the enclosing graph by name."""
    return helper.make_graph(
        [n("MatMul", ["h", "W"], ["hw"]), n("MatMul", ["x", "U"], ["xu"]),
         n("Add", ["hw", "xu"], ["s"]), n("Tanh", ["s"], ["h2"]),
         n("Add", ["h2", "h2"], ["y"])],
        "body", [vi("h", [2, 4]), vi("x", [2, 3])], [vi("h2", [2, 4]), vi("y", [2, 4])],
        [helper.make_tensor("U", F, [3, 4], rng.standard_normal(12).tolist())])


@pytest.mark.parametrize("axes,directions", [([0], [0]), ([1], [1]), ([-2], [0])])
def test_scan_imports_as_a_loop_and_matches_onnxruntime(axes, directions):
    xs_shape = [5, 2, 3] if axes == [0] else [2, 5, 3]     # time on the scanned axis
    model = onnx_models.model(
        [n("Scan", ["h0", "xs"], ["hT", "ys"], body=rnn_body(), num_scan_inputs=1,
           scan_input_axes=axes, scan_input_directions=directions,
           scan_output_axes=[1], scan_output_directions=directions)],
        [vi("h0", [2, 4]), vi("xs", xs_shape)], [vi("hT", None), vi("ys", None)],
        [helper.make_tensor("W", F, [4, 4], (0.5 * rng.standard_normal(16)).tolist())])
    feeds = {"h0": rng.standard_normal((2, 4)).astype(np.float32),
             "xs": rng.standard_normal(xs_shape).astype(np.float32)}
    for got, want in zip(graphc_run(model, feeds), ort_run(model, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def loop_model(cond_node, inits=()):
    """acc <- acc * i + x, four times, each acc also stacked; cond_node makes cond_out."""
    body = helper.make_graph(
        [n("Cast", ["i"], ["fi"], to=F), n("Mul", ["acc", "fi"], ["scaled"]),
         n("Add", ["scaled", "x"], ["acc2"]), n("Identity", ["acc2"], ["seen"]), cond_node],
        "body", [vi("i", [], TensorProto.INT64), vi("cond", [], TensorProto.BOOL),
                 vi("acc", [3])], [vi("cond_out", [], TensorProto.BOOL), vi("acc2", [3]),
                                   vi("seen", [3])], list(inits))
    trip = [helper.make_tensor("M", TensorProto.INT64, [], [4]),
            helper.make_tensor("go", TensorProto.BOOL, [], [True])]
    return onnx_models.model([n("Loop", ["M", "go", "a0"], ["aT", "all"], body=body)],
                             [vi("a0", [3]), vi("x", [3])], [vi("aT", None), vi("all", None)],
                             trip)


def test_loop_with_a_trip_count_imports_and_a_while_loop_is_refused():
    model = loop_model(n("Identity", ["cond"], ["cond_out"]))
    feeds = {"a0": rng.standard_normal(3).astype(np.float32),
             "x": rng.standard_normal(3).astype(np.float32)}
    for got, want in zip(graphc_run(model, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    model = loop_model(n("Less", ["fi", "x0"], ["cond_out"], name="stop_test"),
                       [helper.make_tensor("x0", F, [], [2.0])])
    with pytest.raises(gc.GraphcError, match=r"Loop.*condition is computed in its body"):
        gonnx.load(model)


@pytest.mark.parametrize("cond", [True, False, None])
def test_if_imports_its_branch_or_a_where_over_both(cond):
    then = helper.make_graph([n("Mul", ["x", "x"], ["t"])], "then", [], [vi("t", [4])])
    other = helper.make_graph([n("Neg", ["x"], ["e"])], "else", [], [vi("e", [4])])
    inputs, inits = [vi("x", [4])], []
    if cond is None:
        inputs.append(vi("c", [], TensorProto.BOOL))
    else:
        inits.append(helper.make_tensor("c", TensorProto.BOOL, [], [cond]))
    model = onnx_models.model([n("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                              inputs, [vi("y", None)], inits)
    x = rng.standard_normal(4).astype(np.float32)
    for c in ([True, False] if cond is None else [cond]):
        feeds = {"x": x} if cond is not None else {"x": x, "c": np.array(c)}
        np.testing.assert_allclose(graphc_run(model, feeds)[0], ort_run(model, feeds)[0])
        np.testing.assert_allclose(graphc_run(model, feeds)[0], x * x if c else -x)


def rnn(reverse=False, length=None):
    """A graphc RNN over xs (T, B, 3) with a captured weight, its loss and its gradients."""
    xs = gc.placeholder((6, None, 3), name="xs")
    h0 = gc.placeholder((None, 4), name="h0")
    W = gc.variable(0.5 * rng.standard_normal((4, 4)).astype(np.float32), name="W")
    U = gc.variable(rng.standard_normal((3, 4)).astype(np.float32), name="U")
    (hT, ys) = gc.scan(lambda h, x: (gc.tanh(h @ W + x @ U),) * 2, h0, xs, reverse=reverse)
    loss = gc.sum(ys * ys) + gc.sum(hT)
    return [xs, h0], [hT, ys, loss] + gc.grad(loss, [W, U, h0])


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_and_its_gradient_export_to_onnxruntime(reverse, tmp_path):
    inputs, outputs = rnn(reverse)
    feeds = {"xs": rng.standard_normal((6, 2, 3)).astype(np.float32),
             "h0": rng.standard_normal((2, 4)).astype(np.float32)}
    want = gc.function(inputs, outputs)(*feeds.values())
    model = gonnx.save(tmp_path / "rnn.onnx", inputs, outputs)
    got = ort_run(model, feeds, check=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    again = graphc_run(model, feeds)                       # and back into graphc
    for g, w in zip(again, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_scan_without_sequences_exports():
    x = gc.placeholder((3,), name="x")
    final, ys = gc.scan(lambda c, _: (c * 0.5 + x, c), x, length=4)
    feeds = {"x": rng.standard_normal(3).astype(np.float32)}
    want = gc.function([x], [final, ys])(feeds["x"])
    from graphc.onnx.exporter import build_model
    got = ort_run(build_model([x], [final, ys]), feeds, check=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)
