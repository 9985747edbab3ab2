"""probe18: bugs found by writing models graphc had not seen, each pinned by a test."""
from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import graphc as gc


def test_formulas_of_ops_without_a_form_keep_their_attributes():
    # x[:, :3] - x[:, 3:] was the formula 0: an op known to formulas only by name became one
    # sympy function whatever its attributes, so two different slices were equal
    x = gc.placeholder((4, 6), dtype="float64", name="x")
    v = gc.placeholder((6,), dtype="float64", name="v")
    assert gc.formula(x[:, 0:3] - x[:, 3:6]) != 0
    assert gc.formula(v[0:3] - v[3:6]) != 0
    assert gc.formula(gc.pad(v, [(1, 0)]) - gc.pad(v, [(0, 1)])) != 0
    assert "start=3" in gc.formula(x[:, 3:6]).__str__()


def test_explain_of_lstm_gates_names_each_gate_apart():
    # explain named i, f and o alike (sigmoid(slice(z1))) and shared them as one subexpression
    h = gc.placeholder((2, 8), dtype="float64", name="h")
    i, f = gc.sigmoid(h[:, 0:2]), gc.sigmoid(h[:, 2:4])
    g, c = gc.tanh(h[:, 4:6]), h[:, 6:8]
    text = gc.explain({"c": f * c + i * g})
    assert "start=0" in text and "start=2" in text


def test_matrix_formula_of_an_elementwise_op_keeps_its_attributes():
    # a user's elementwise op with an attribute, on matrices, is one function per attribute
    def infer(x, *, scale=1.0):
        return x.shape, x.dtype, {"scale": float(scale)}

    if "probe18_scaled" not in gc.ir.OPS:
        gc.register_op(gc.OpDef("probe18_scaled", infer,
                                kernel=lambda x, *, scale: scale * np.tanh(x),
                                vjp=lambda g, out, x, *, scale:
                                    (g * scale * (1 - gc.tanh(x) ** 2),),
                                elementwise=True))
    x = gc.placeholder((3, 2), dtype="float64", name="x")
    a = gc.apply("probe18_scaled", x, scale=1.0)
    b = gc.apply("probe18_scaled", x, scale=2.0)
    expr = gc.formula(a - b)
    assert expr != sp.ZeroMatrix(3, 2) and expr != 0
    assert "scale=2.0" in gc.symbolic.text(expr)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, None, True])
def test_a_bad_batch_size_is_a_graphc_error_in_fit_evaluate_and_predict(batch_size):
    # 0 was a ZeroDivisionError, a float a TypeError from range(), -3 a ValueError from
    # np.concatenate after an epoch of no batches
    from graphc import nn
    x, y = np.zeros((4, 5), np.float32), np.zeros((4, 1), np.float32)
    model = nn.Sequential([nn.Dense(1)], seed=0)
    calls = [lambda: nn.fit(model, "mse", nn.SGD(), x, y, batch_size=batch_size, verbose=0),
             lambda: nn.evaluate(model, "mse", x, y, batch_size=batch_size),
             lambda: nn.predict(model, x, batch_size=batch_size)]
    for call in calls:
        with pytest.raises(gc.GraphcError, match="batch_size must be a positive int"):
            call()


@pytest.mark.parametrize("initial_epoch", [-1, 1.5, None, True])
def test_a_bad_initial_epoch_is_a_graphc_error(initial_epoch):
    from graphc import nn
    x, y = np.zeros((4, 5), np.float32), np.zeros((4, 1), np.float32)
    model = nn.Sequential([nn.Dense(1)], seed=0)
    with pytest.raises(gc.GraphcError, match="fit: initial_epoch must be an int >= 0, got"):
        nn.fit(model, "mse", nn.SGD(), x, y, epochs=2, initial_epoch=initial_epoch, verbose=0)


def test_a_target_that_widens_the_prediction_is_refused_by_the_losses():
    # (n, 1) probabilities against (n, 2) targets averaged each prediction against both
    # targets, silently (PyTorch's BCELoss refuses a target of another size)
    from graphc import nn
    p = gc.placeholder((None, 1), dtype="float64", name="p")
    y = gc.placeholder((None, 2), dtype="float64", name="y")
    for loss in (nn.mse, nn.binary_cross_entropy):
        with pytest.raises(gc.GraphcError, match=r"\(\?, 2\) would broadcast.*test_probe18"):
            loss(gc.sigmoid(p), y)
    same = gc.placeholder((None, 1), dtype="float64", name="same")
    assert nn.mse(p, same).eval({p: np.ones((2, 1)), same: np.zeros((2, 1))}) == 1.0


def test_an_empty_onnx_file_is_refused(tmp_path):
    # protobuf parses 0 bytes as an empty ModelProto: load gave a model of no outputs,
    # check said every op was supported and `graphc render empty.onnx` drew an empty picture
    pytest.importorskip("onnx")
    import graphc.onnx
    from graphc import cli
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    for call in (graphc.onnx.load, graphc.onnx.check):
        with pytest.raises(gc.GraphcError, match="empty.onnx.*no outputs"):
            call(str(path))
    assert cli.main(["render", str(path)]) == 1
    assert not (tmp_path / "empty.svg").exists()


def test_pictures_and_pages_into_a_missing_folder_are_graphc_errors(tmp_path, capsys):
    # gc.render / gc.inspect raised FileNotFoundError, and `graphc render -o` (and inspect,
    # and `demo --out` a file) ended in a traceback
    from graphc import cli
    x = gc.placeholder((2,), dtype="float64", name="x")
    for path in ("pic.svg", "pic.dot"):
        with pytest.raises(gc.GraphcError, match=f"render: cannot write .*nowhere/{path}"):
            gc.render(gc.sum(x * x), tmp_path / "nowhere" / path)
    with pytest.raises(gc.GraphcError, match="inspect: cannot write .*nowhere/page.html"):
        gc.inspect(gc.sum(x * x), tmp_path / "nowhere" / "page.html")
    saved = gc.save(gc.sum(x * x), tmp_path / "g")
    for command in ("render", "inspect"):
        assert cli.main([command, saved, "-o", str(tmp_path / "nowhere" / "out")]) == 1
        assert "cannot write" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert cli.main(["demo", "--epochs", "1", "--quiet", "--out",
                     str(tmp_path / "afile" / "sub")]) == 1
    assert "Not a directory" in capsys.readouterr().err


def resumable_fit(epochs, initial_epoch=0, model=None, opt=None, make_opt=None):
    from graphc import nn
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 4)), rng.integers(0, 3, 30)
    model = model or nn.Sequential([nn.Dense(6, "tanh"), nn.BatchNorm(), nn.Dense(3)], seed=2)
    opt = opt or make_opt()
    history = nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=epochs, batch_size=8,
                     verbose=0, initial_epoch=initial_epoch, seed=3)
    return model, opt, history


@pytest.mark.parametrize("make_opt", ["adam", "momentum", "rmsprop"])
def test_fit_resumed_from_saved_model_and_optimizer_equals_one_fit(make_opt, tmp_path):
    # a second fit threw the optimizer's state away (fresh Adam moments, step count and
    # velocities at every call) and shuffled its first epoch as the first fit had, so
    # training could not be stopped and resumed: the results differed by ~0.1
    from graphc import nn
    make = {"adam": lambda: nn.Adam(0.05), "momentum": lambda: nn.SGD(0.1, momentum=0.9),
            "rmsprop": lambda: nn.RMSProp(0.01)}[make_opt]
    whole, whole_opt, history = resumable_fit(3, make_opt=make)
    # the same objects, one more fit
    part, part_opt, first = resumable_fit(1, make_opt=make)
    part, part_opt, rest = resumable_fit(3, 1, part, part_opt)
    assert first["loss"] + rest["loss"] == pytest.approx(history["loss"], rel=1e-12)
    for a, b in zip(whole.variables + whole_opt.variables, part.variables + part_opt.variables):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-14)
    # saved, then loaded into new objects (another process would do the same)
    part, part_opt, _ = resumable_fit(2, make_opt=make)
    nn.save_params(part, tmp_path / "model.npz")
    nn.save_params(part_opt, tmp_path / "optimizer.npz")
    model = nn.Sequential([nn.Dense(6, "tanh"), nn.BatchNorm(), nn.Dense(3)], seed=99)
    model(gc.placeholder((None, 4), dtype="float64"))
    opt = make()
    with pytest.raises(gc.GraphcError, match=r"optimizer.build\(model.params\)"):
        nn.load_params(opt, tmp_path / "optimizer.npz")
    opt.build(model.params)
    nn.load_params(model, tmp_path / "model.npz")
    nn.load_params(opt, tmp_path / "optimizer.npz")
    model, opt, _ = resumable_fit(3, 2, model, opt)
    for a, b in zip(whole.variables + whole_opt.variables, model.variables + opt.variables):
        np.testing.assert_allclose(a.value, b.value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make", [
    lambda nn: nn.Dense(-1), lambda nn: nn.Dense(0), lambda nn: nn.Dense(2.5),
    lambda nn: nn.Conv2D(2, 0), lambda nn: nn.Conv2D(0, 3), lambda nn: nn.Conv2D(2, (3, 1.5)),
    lambda nn: nn.Embedding(0, 2), lambda nn: nn.Embedding(3, -2), lambda nn: nn.LSTM(0),
    lambda nn: nn.GRU(True)])
def test_layer_sizes_must_be_positive_ints(make):
    # Dense(-1) was a NumPy ValueError, Conv2D(2, 0) a ZeroDivisionError in the initializer,
    # Dense(2.5) made 2 units and Dense(0) / Embedding(0, 2) empty layers, silently
    from graphc import nn
    with pytest.raises(gc.GraphcError, match="must be a positive int"):
        layer = make(nn)
        layer(gc.placeholder((None, 1, 6, 6)) if isinstance(layer, nn.Conv2D)
              else gc.placeholder((None, 5), dtype="int64" if isinstance(layer, nn.Embedding)
                                  else "float32"))


def test_graphc_formula_names_the_variable_each_update_writes(tmp_path, capsys):
    # the update values of a saved training step printed as out1, out2... without the
    # variable each one is assigned to
    from graphc import cli
    x = gc.placeholder((None, 2), dtype="float64", name="x")
    w = gc.variable(np.ones(2), name="w")
    v = gc.variable(np.zeros(2), name="velocity")
    loss = gc.sum((x * w) ** 2)
    (gw,) = gc.grad(loss, [w])
    saved = gc.save(gc.Graph([loss, loss * 2.0], [(v, 0.9 * v - 0.1 * gw), (w, w + v)]),
                    tmp_path / "step")
    assert cli.main(["formula", saved]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("new velocity = ") for line in lines)
    assert any(line.startswith("new w = ") for line in lines)
    assert any(line.startswith("out0 = ") for line in lines)
    assert any(line.startswith("out1 = ") for line in lines)


def test_a_batchnorm_shared_by_two_inputs_updates_its_statistics_with_both():
    # a shared encoder with BatchNorm (README's Siamese model) kept only the last call's
    # state updates: the running statistics saw only the second input's batches, and the
    # evaluation graph normalized the first input with the second's mean
    from graphc import nn

    class Siamese(nn.Model):
        def __init__(self):
            super().__init__(seed=0)
            self.dense, self.norm = nn.Dense(3), nn.BatchNorm(momentum=0.25)

        def forward(self, a, b, training):
            return self.norm(self.dense(a)) - self.norm(self.dense(b))

    rng = np.random.default_rng(0)
    av, bv = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)) + 3.0
    a = gc.placeholder((None, 4), dtype="float64", name="a")
    b = gc.placeholder((None, 4), dtype="float64", name="b")
    model = Siamese()
    out = model(a, b)
    assert len(model.state_updates) == 2           # one pair per statistic, chained
    step = gc.function([a, b], out, updates=model.state_updates)
    step(av, bv)
    w, bias = model.dense.params[0].value, model.dense.params[1].value
    mean, var = np.zeros(3), np.ones(3)
    for x in (av, bv):                              # PyTorch's order: a's batch, then b's
        h = x @ w + bias
        mean = 0.75 * mean + 0.25 * h.mean(0)
        var = 0.75 * var + 0.25 * h.var(0, ddof=1)
    np.testing.assert_allclose(model.norm.running_mean.value, mean, rtol=1e-12)
    np.testing.assert_allclose(model.norm.running_var.value, var, rtol=1e-12)
    model(a, b)                                     # a new graph starts afresh: 2 pairs
    assert len(model.state_updates) == 2


def test_a_loop_in_a_formula_shows_its_body_in_short():
    # with the attributes in op names, a loop's body (its op list) went into the name whole,
    # its "<19 ops: ...>" raw into the inspector's MathML
    x = gc.placeholder((None, 3), dtype="float64", name="x")
    w = gc.variable(np.full(2, 0.5), name="w")

    def step(h, xt):
        for _ in range(20):
            h = gc.tanh(h * w + gc.sum(xt))
        return h, h

    h, _ = gc.scan(step, gc.constant(np.zeros(2)), x)
    expr = gc.formula(gc.sum(h))
    text = gc.symbolic.text(expr)
    assert "scan[body=⟨" in text and "…" in text and len(text) < 300
    # and the name stays markup-free: the inspector's MathML of it parses
    from xml.dom import minidom
    minidom.parseString(sp.mathml(expr, printer="presentation"))


def test_fit_and_evaluate_of_a_node_or_a_scalar_are_graphc_errors():
    # a placeholder (or a number) as x or y failed with TypeError: len() of unsized object
    from graphc import nn
    model = nn.Sequential([nn.Dense(1)], seed=0)
    p = gc.placeholder((None, 1), name="p")
    x, y = np.zeros((4, 5), np.float32), np.zeros((4, 1), np.float32)
    for bad_x, bad_y in ((x, p), (p, y), (x, 3.0), ((x, p), y)):
        with pytest.raises(gc.GraphcError, match="must be an array of examples"):
            nn.fit(model, "mse", nn.SGD(), bad_x, bad_y, verbose=0)
        with pytest.raises(gc.GraphcError, match="must be an array of examples"):
            nn.evaluate(model, "mse", bad_x, bad_y)
