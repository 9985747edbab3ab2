"""ONNX import and export: real models against onnxruntime, gradients of imported models,
round trips graphc -> ONNX -> onnxruntime, and the errors for what graphc cannot import."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import graphc as gc  # noqa: E402
import graphc.onnx as gonnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tests import onnx_models  # noqa: E402
from tests.helpers import numeric_grad  # noqa: E402

rng = np.random.default_rng(0)


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def graphc_run(imported, feeds):
    names = list(imported.inputs)
    fn = gc.function([imported.inputs[k] for k in names], list(imported.outputs.values()))
    return fn(*[feeds[k] for k in names])


CASES = {
    "mlp": (onnx_models.mlp, lambda: {"x": rng.standard_normal((5, 784)).astype(np.float32)}),
    "cnn": (onnx_models.cnn,
            lambda: {"x": rng.standard_normal((3, 1, 28, 28)).astype(np.float32)}),
    "logistic": (onnx_models.logistic,
                 lambda: {"x": rng.standard_normal((8, 5)).astype(np.float32)}),
    "embedding": (onnx_models.embedding, lambda: {"ids": rng.integers(0, 50, (4, 7))}),
    "encoder": (onnx_models.encoder_layer,
                lambda: {"x": rng.standard_normal((3, 6, 16)).astype(np.float32)}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_model_matches_onnxruntime(name):
    make, feeds = CASES[name]
    model, feeds = make(), feeds()
    imported = gonnx.load(model)
    assert all(None in p.shape or any(isinstance(d, str) for d in p.shape)
               for p in imported.inputs.values())            # the batch dim stays dynamic
    for got, want in zip(graphc_run(imported, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_trainable_import_gives_variables_and_gradients_match_a_native_graph():
    model = onnx_models.mlp()
    imported = gonnx.load(model, trainable=True)
    assert {p.op for p in imported.params.values()} == {"variable"}
    x, y = imported.inputs["x"], gc.placeholder((None,), "int64", name="y")
    loss = gc.mean(gc.softmax_cross_entropy(imported.outputs["logits"], y))
    names = ["W1", "b1", "W2", "b2", "W3", "b3"]
    grads = gc.grad(loss, [imported.params[k] for k in names])
    # the same network written in graphc directly
    p = {k: gc.constant(imported.params[k].value) for k in names}
    x2 = gc.placeholder((None, 784), name="x2")
    h = gc.relu(x2 @ p["W1"].T + p["b1"])
    h = gc.relu(h @ p["W2"].T + p["b2"])
    logits = h @ p["W3"].T + p["b3"]
    native = gc.grad(gc.mean(gc.softmax_cross_entropy(logits, y)), [p[k] for k in names])
    xv, yv = rng.standard_normal((6, 784)).astype(np.float32), rng.integers(0, 10, 6)
    got = gc.function([x, y], grads)(xv, yv)
    want = gc.function([x2, y], native)(xv, yv)
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6)


def test_gradient_of_imported_encoder_matches_finite_differences():
    model = onnx_models.encoder_layer(d=4, heads=2, t=3, ff=6)
    imported = gonnx.load(model, trainable=True)
    x = imported.inputs["x"]
    assert imported.params["split_shape"].op == "constant"    # a shape stays a constant
    wq = imported.params["WQ"]
    target = rng.standard_normal((2, 3, 4))
    loss = gc.sum((gc.cast(imported.outputs["y"], "float64") - gc.constant(target)) ** 2)
    (gw,) = gc.grad(loss, [wq])
    xv = rng.standard_normal((2, 3, 4)).astype(np.float32)
    f = gc.function([x], [loss, gw])
    got = f(xv)[1]
    start = wq.value.copy()

    def at(v):
        wq.value = v.astype(np.float32)
        return float(gc.function([x], loss)(xv))
    want = numeric_grad(at, start.astype(np.float64), eps=1e-2)
    wq.value = start
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-3)


def test_input_values_freeze_a_shape_input():
    n = helper.make_node
    model = onnx_models.model(
        [n("Reshape", ["x", "shape"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
         helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [])
    with pytest.raises(gc.GraphcError, match="'shape' must be a constant"):
        gonnx.load(model)
    imported = gonnx.load(model, input_values={"shape": np.array([3, 4])})
    assert list(imported.inputs) == ["x"] and imported.outputs["y"].shape == (3, 4)


def test_unsupported_op_names_the_node_and_op_and_check_lists_all():
    n = helper.make_node
    model = onnx_models.model(
        [n("Relu", ["x"], ["a"], name="first"), n("Det", ["a"], ["b"], name="det_node"),
         n("Gemm", ["x", "x"], ["c"], name="gemm_node", transA=1, bogus=3)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, None)], [])
    with pytest.raises(gc.GraphcError, match=r"ONNX node 'det_node' \(Det\): op type Det"):
        gonnx.load(model)
    problems = gonnx.check(model)
    assert len(problems) == 2
    assert "det_node" in problems[0] and "'gemm_node' (Gemm)" in problems[1]
    assert "attribute 'bogus'" in problems[1]


def test_unsupported_dtype_is_named():
    model = onnx_models.model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [3])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [3])], [])
    with pytest.raises(gc.GraphcError, match="graph input 'x'.*BFLOAT16"):
        gonnx.load(model)


def test_nodes_keep_onnx_names_and_where():
    imported = gonnx.load(onnx_models.logistic())
    p = imported.outputs["p"]
    assert p.name == "p" and "ONNX node" in p.where and "Sigmoid" in p.where
    assert "'p'" in str(gc.Graph([p]))


def test_round_trip_graphc_to_onnxruntime_and_back(tmp_path):
    x = gc.placeholder((None, 1, 8, 8), name="x")
    y = gc.placeholder((None,), "int64", name="y")
    w1 = gc.variable(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), name="w1")
    w2 = gc.variable(rng.standard_normal((64, 3)).astype(np.float32), name="w2")
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, w1, padding=1)), 2)
    logits = gc.reshape(h, (-1, 64)) @ w2
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    gw1, gw2 = gc.grad(loss, [w1, w2])
    outs = {"logits": logits, "loss": loss, "gw1": gw1, "gw2": gw2}
    path = tmp_path / "m.onnx"
    model = gonnx.save(path, {"x": x, "y": y}, outs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 0   # dynamic
    xs, ys = rng.standard_normal((5, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 5)
    want = gc.function([x, y], list(outs.values()))(xs, ys)
    for got, w_ in zip(ort_run(model, {"x": xs, "y": ys}), want):
        np.testing.assert_allclose(got, w_, rtol=1e-4, atol=1e-5)
    gonnx.save(path, {"x": x, "y": y}, {"logits": logits, "loss": loss})
    back = gonnx.load(path)                 # (MaxPool's Indices output does not import)
    for got, w_ in zip(graphc_run(back, {"x": xs, "y": ys}), want[:2]):
        np.testing.assert_allclose(got, w_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_model_exports_again(name, tmp_path):
    make, feeds = CASES[name]
    model, feeds = make(), feeds()
    imported = gonnx.load(model)
    again = gonnx.save(tmp_path / "again.onnx", imported.inputs, imported.outputs)
    onnx.checker.check_model(again, full_check=True)
    for got, want in zip(ort_run(again, feeds), ort_run(model, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_save_names_an_op_without_export_rule():
    x = gc.placeholder((3, 4), name="x")
    with pytest.raises(gc.GraphcError, match=r"no ONNX export for op\(s\) \['cumprod'\]"):
        gonnx.save("/dev/null", [x], [gc.cumprod(x, axis=1)])


def test_import_graphc_does_not_import_onnx():
    import subprocess
    import sys
    code = "import sys, graphc; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_renders_and_explains_an_onnx_file(tmp_path):
    import os
    import subprocess
    import sys
    path = tmp_path / "logistic.onnx"
    onnx.save(onnx_models.logistic(), str(path))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    run = [sys.executable, "-m", "graphc.cli"]
    out = subprocess.run(run + ["render", str(path), "-o", str(tmp_path / "m.svg")], env=env,
                         capture_output=True, text=True, check=True)
    assert "m.svg" in out.stdout and (tmp_path / "m.svg").exists()
    out = subprocess.run(run + ["formula", str(path)], env=env, capture_output=True, text=True,
                         check=True)
    assert "p = sigmoid(z)" in out.stdout


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


IDS = np.array([[1, 0, 2], [2, 2, 0]])
EXPORTS = {     # one small graph per group of ops: (build, inputs)
    "arith": (lambda a, b: gc.maximum(a * b - a / (gc.abs(b) + 1.0), gc.exp(-a)) ** 2,
              [f32(3, 4), f32(4)]),
    "activations": (lambda a: gc.erf(a) + gc.sin(a) * gc.cos(a) + gc.gelu(a) + gc.sigmoid(a)
                    + gc.softplus(a) + gc.tanh(a), [f32(3, 4)]),
    "trig": (lambda a: gc.tan(a * 0.3) + gc.arcsin(a * 0.2) + gc.arctanh(a * 0.2)
             + gc.cosh(a), [f32(3, 4)]),
    "rounding": (lambda a, b: gc.floor(a) + gc.ceil(b) + gc.round(a * b) + gc.mod(a, b + 5.0)
                 + gc.fmod(a, b + 5.0) + (a * 7.0) // (b + 5.0), [f32(3, 4), f32(3, 4)]),
    "integers": (lambda a, b: gc.trunc_divide(a, b) + a // b + gc.bitwise_xor(a, b)
                 + gc.mod(a, b) + gc.left_shift(a, gc.constant(np.int32(1))),
                 [np.array([[-7, 5, 9]], np.int32), np.array([[2, -3, 4]], np.int32)]),
    "reductions": (lambda a: gc.concat([gc.min(a, axis=1), gc.prod(a, axis=1),
                                        gc.logsumexp(a, axis=1), gc.mean(a, axis=1)]), [f32(3, 4)]),
    "argmax": (lambda a: gc.reshape(gc.argmax(a, axis=1), (3, 1))
               + gc.argmin(a, axis=0, keepdims=True),
               [f32(3, 4)]),
    "indexing": (lambda a: gc.take(a, gc.constant(IDS), axis=1)
                 + gc.take_along_axis(a[:, :3], gc.constant(IDS[:1]), axis=0), [f32(3, 4)]),
    "layout": (lambda a: gc.flip(gc.pad(a, 1, 2.0), axis=1) + 1.0, [f32(3, 4)]),
    "einsum": (lambda a, b: gc.einsum("ij,kj->ik", a, b), [f32(3, 4), f32(5, 4)]),
    "cumulative": (lambda a: gc.cumsum(a, axis=1) + gc.cumsum(a, axis=0, reverse=True),
                   [f32(3, 4)]),
    "sort": (lambda a: gc.take_along_axis(a, gc.argsort(a, axis=1, descending=True), axis=1),
             [f32(3, 4)]),
    "scatter": (lambda a: gc.scatter_elements(a, gc.constant(IDS), gc.constant(f32(2, 3)),
                                              axis=1, reduction="add")
                + gc.scatter_nd(a, gc.constant(np.array([[0, 1], [1, 3]])),
                                gc.constant(f32(2)))[:2], [f32(2, 4)]),
    "softmax": (lambda a: gc.softmax(a, axis=0) + gc.log_softmax(a) + gc.one_hot(
        gc.argmax(a, axis=1), 4)[:, None, :].sum(axis=1), [f32(3, 4)]),
}


def gradient_graph(build, inputs):
    """build's outputs and the gradients of a weighted sum of them w.r.t. the float inputs."""
    leaves = [gc.placeholder(a.shape, a.dtype, name=f"in{i}") for i, a in enumerate(inputs)]
    out = build(*leaves)
    floats = [v for v in leaves if v.dtype.kind == "f"]
    outs = [out]
    if out.dtype.kind == "f" and floats:
        weights = gc.constant(np.linspace(-1, 1, int(np.prod(out.shape))).reshape(out.shape)
                              .astype(out.dtype))
        outs += gc.grad(gc.sum(out * weights), floats)
    return leaves, outs


@pytest.mark.parametrize("name", sorted(EXPORTS))
def test_exported_ops_and_their_gradients_run_in_onnxruntime(name, tmp_path):
    build, inputs = EXPORTS[name]
    leaves, outs = gradient_graph(build, inputs)
    model = gonnx.save(tmp_path / "m.onnx", leaves, outs)
    onnx.checker.check_model(model, full_check=True)
    want = gc.function(leaves, outs)(*inputs)
    got = ort_run(model, {f"in{i}": a for i, a in enumerate(inputs)})
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(g, w_, rtol=1e-4, atol=1e-5)


def torch_model_to_onnx(model, example, path):
    """torch.onnx.export with the batch dim dynamic (the TorchScript exporter where offered)."""
    import torch
    kwargs = dict(input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}},
                  opset_version=17)
    try:
        torch.onnx.export(model, (example,), str(path), dynamo=False, **kwargs)
    except TypeError:            # an older torch without the dynamo switch
        torch.onnx.export(model, (example,), str(path), **kwargs)


def test_torch_exported_models_match_torch_outputs_and_gradients(tmp_path):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    models = {
        "mlp": (torch.nn.Sequential(torch.nn.Linear(20, 16), torch.nn.ReLU(),
                                    torch.nn.Linear(16, 4)), (5, 20)),
        "cnn": (torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(),
                                    torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 3 * 3, 3)), (2, 1, 8, 8)),
    }
    for name, (model, shape) in models.items():
        x = torch.randn(*shape)
        path = tmp_path / f"{name}.onnx"
        torch_model_to_onnx(model, x, path)
        imported = gonnx.load(path, trainable=True)
        (got,) = graphc_run(imported, {"x": x.numpy()})
        np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
        loss = gc.sum(imported.outputs["y"] ** 2)
        grads = gc.grad(loss, imported.variables)
        got_grads = gc.function([imported.inputs["x"]], grads)(x.numpy())
        model.zero_grad()
        (model(x) ** 2).sum().backward()
        want = {tuple(p.shape): p.grad.numpy() for p in model.parameters()}
        for v, g in zip(imported.variables, got_grads):
            w_ = want.get(v.shape)
            if w_ is None:                   # an exporter may store a weight transposed
                w_ = want[v.shape[::-1]].T
            np.testing.assert_allclose(g, w_, rtol=1e-3, atol=1e-5)


def dynamic_batch_model(nodes, inits, x_shape=("N", 16, 5, 5)):
    """x with a dynamic batch dim 'N' through the nodes to y (torch's `x.view(x.size(0), -1)`)."""
    ints = [helper.make_tensor(k, TensorProto.INT64, [len(v)], v) for k, v in inits.items()]
    ints.append(helper.make_tensor("i0", TensorProto.INT64, [], [0]))     # a scalar index
    w = helper.make_tensor("W", TensorProto.FLOAT, [400, 3],
                           rng.standard_normal(1200).astype(np.float32).tolist())
    return onnx_models.model(
        nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], ints + [w])


def test_shape_of_a_dynamic_batch_dim_imports_as_the_dim():
    n = helper.make_node
    flatten = [n("Shape", ["x"], ["s"]), n("Gather", ["s", "i0"], ["b"], axis=0),
               n("Unsqueeze", ["b", "zero"], ["b1"]), n("Concat", ["b1", "minus1"], ["t"], axis=0),
               n("Reshape", ["x", "t"], ["flat"]), n("MatMul", ["flat", "W"], ["m"])]
    # heads split and merged again: (N, 400) -> (N, 4, 100) -> transpose -> back by Shape
    heads = [n("Concat", ["b1", "four", "hundred"], ["t3"], axis=0),
             n("Reshape", ["flat", "t3"], ["h"]), n("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
             n("Shape", ["ht"], ["s2"]), n("Slice", ["s2", "zero", "one"], ["b2"]),
             n("Concat", ["b2", "minus1"], ["t4"], axis=0), n("Reshape", ["ht", "t4"], ["back"]),
             n("MatMul", ["back", "W"], ["m2"]), n("Add", ["m", "m2"], ["y"])]
    model = dynamic_batch_model(flatten + heads, {"zero": [0], "one": [1], "minus1": [-1],
                                                  "four": [4], "hundred": [100]})
    imported = gonnx.load(model)
    assert imported.outputs["y"].shape == ("N", 3)
    for batch in (2, 5):
        feeds = {"x": rng.standard_normal((batch, 16, 5, 5)).astype(np.float32)}
        np.testing.assert_allclose(graphc_run(imported, feeds)[0], ort_run(model, feeds)[0],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use", ["value", "ConstantOfShape", "product"])
def test_a_dynamic_size_used_as_a_value_is_refused_naming_the_node(use):
    n = helper.make_node
    size = [n("Shape", ["x"], ["s"]), n("Gather", ["s", "i0"], ["b"], axis=0)]
    uses = {"value": [n("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
                      n("Div", ["x", "bf"], ["y"], name="scale_by_batch")],
            "ConstantOfShape": [n("Unsqueeze", ["b", "zero"], ["b1"]),
                                n("Mul", ["b1", "two"], ["t"]),
                                n("ConstantOfShape", ["t"], ["y"], name="zeros_like")],
            "product": [n("Unsqueeze", ["b", "zero"], ["b1"]), n("Mul", ["b1", "two"], ["t"]),
                        n("Concat", ["t", "minus1"], ["t2"], axis=0),
                        n("Reshape", ["x", "t2"], ["y"], name="double_batch")]}
    model = dynamic_batch_model(size + uses[use], {"zero": [0], "two": [2], "minus1": [-1]})
    name = {"value": "scale_by_batch", "ConstantOfShape": "zeros_like",
            "product": "double_batch"}[use]
    with pytest.raises(gc.GraphcError, match=rf"'{name}'.*size known only at run time"):
        gonnx.load(model)
