"""probe20: bugs found by writing today's models (attention with padding masks, seq2seq,
VAE, ResNet, character LM) as a newcomer and by hostile input, each pinned by a test."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn


def test_formula_of_a_loss_over_3d_values_is_left_as_built():
    # explain of a one-block transformer's loss ran sympy's cancel/factor over the whole
    # network for minutes: a sum over three axes is `sum[axis=...]`, which the guard that
    # leaves sums of matrices alone did not recognise
    x = gc.placeholder((2, 2, 2), dtype="float64", name="x")
    w = gc.placeholder((2, 2, 2), dtype="float64", name="w")
    cost = gc.sum(x * x) / 2 + gc.sum(x * w) / 2
    assert gc.formula(cost) == gc.formula(cost, simplify=False)


def test_explain_of_an_attention_block_loss():
    class Block(nn.Model):
        def __init__(self):
            super().__init__(seed=1)
            self.norm, self.mha = nn.LayerNorm(), nn.MultiHeadAttention(2)
            self.ff = nn.Dense(8, "gelu")

        def forward(self, x, training):
            x = x + self.mha(self.norm(x))
            return x + self.ff(x)

    x = gc.placeholder((None, 5, 8), dtype="float64", name="x")
    out = Block()(x)
    text = gc.explain({"loss": gc.sum(out * out) / 10})
    assert text.startswith("let z1 = ") and "loss = " in text and "erf(" in text


def small_model():
    return nn.Sequential([nn.Dense(8, "relu"), nn.Dense(3)], seed=0)


def data(n=20):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.integers(0, 3, n)


def values(model, opt):
    return [v.value.copy() for v in model.variables + opt.build(model.params)]


@pytest.mark.parametrize("validation", [
    lambda x, y: (x[:, :5], y),                       # the wrong width
    lambda x, y: (x, y.astype("float64") + 0.5),      # float labels for integer ones
    lambda x, y: (x, y[:, None]),                     # the wrong rank
    lambda x, y: (x, y, y),                           # not a pair
])
def test_fit_refuses_bad_validation_data_before_training(validation):
    # the validation data was first fed after the first epoch: fit raised with the model
    # and the optimizer already trained one epoch
    x, y = data()
    model, opt = small_model(), nn.Adam()
    model(gc.placeholder((None, 6)))
    before = values(model, opt)
    with pytest.raises(gc.GraphcError, match="validation_data"):
        nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=2, verbose=0,
               validation_data=validation(x, y))
    assert all(np.array_equal(a, b) for a, b in zip(before, values(model, opt)))


@pytest.mark.parametrize("kwargs, what", [
    (dict(epochs=-1), "epochs"), (dict(epochs=2.5), "epochs"), (dict(epochs="3"), "epochs"),
    (dict(seed="a"), "seed"), (dict(seed=-1), "seed"), (dict(l2="1e-4"), "l2"),
    (dict(l1=-0.1), "l1"),
])
def test_fit_checks_its_counts_and_scales(kwargs, what):
    # epochs=2.5 / '3' and seed='a' raised TypeError inside range() and NumPy, epochs=-1
    # trained nothing silently, l2='1e-4' failed in `constant` naming neither fit nor l2
    x, y = data()
    model, opt = small_model(), nn.Adam()
    model(gc.placeholder((None, 6)))
    before = values(model, opt)
    with pytest.raises(gc.GraphcError, match=what):
        nn.fit(model, "softmax_cross_entropy", opt, x, y, **{"verbose": 0, **kwargs})
    assert all(np.array_equal(a, b) for a, b in zip(before, values(model, opt)))


@pytest.mark.parametrize("make, what", [
    (lambda: nn.Adam(-1), "lr"), (lambda: nn.Adam("a"), "lr"), (lambda: nn.SGD(None), "lr"),
    (lambda: nn.SGD(0.1, momentum=-0.5), "momentum"), (lambda: nn.Adam(beta1=1.0), "beta1"),
    (lambda: nn.RMSProp(rho=2), "rho"), (lambda: nn.Adam(eps=float("nan")), "eps"),
    (lambda: nn.SGD(gc.placeholder((2,))), "lr"), (lambda: nn.Dropout("a"), "rate"),
])
def test_optimizers_check_their_hyperparameters(make, what):
    # PyTorch refuses a negative learning rate; graphc trained uphill with it
    with pytest.raises(gc.GraphcError, match=what):
        make()


def test_a_scalar_node_is_still_a_learning_rate():
    lr = gc.variable(np.float32(0.5), name="lr")
    w = gc.variable(np.ones(2, np.float32), name="w")
    step = gc.function([], [], updates=nn.SGD(lr).updates(gc.sum(w * w), [w]))
    step()
    np.testing.assert_allclose(w.value, [0.0, 0.0])


def test_onnx_import_of_graphcs_own_conv_gradients_with_a_dynamic_batch(tmp_path):
    # graphc exports a conv's input gradient as ConvTranspose and its weight gradient as a
    # Conv whose kernel has the batch as channels; with a None batch, the importer refused
    # both ("needs a static shape"), so graphc could not read back its own CNN training graph
    pytest.importorskip("onnx")
    import graphc.onnx
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 2, 5, 5), dtype="float64", name="x")
    w = gc.variable(rng.normal(size=(3, 2, 3, 3)), name="W")
    y = gc.conv2d(x, w, stride=(2, 2), padding=(1, 1))
    loss = gc.sum(y * y) + gc.sum(gc.avg_pool2d(x, 2) ** 2)
    gx, gw = gc.grad(loss, [x, w])
    path = str(tmp_path / "cnn.onnx")
    graphc.onnx.save(path, {"x": x}, {"loss": loss, "gx": gx, "gw": gw})
    m = graphc.onnx.load(path)
    back = gc.function([m.inputs["x"]], [m.outputs[k] for k in ("loss", "gx", "gw")])
    ref = gc.function([x], [loss, gx, gw])
    for batch in (4, 1):
        xv = rng.normal(size=(batch, 2, 5, 5))
        for a, b in zip(back(xv), ref(xv)):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.fixture
def hang_guard():
    """Fails a call that runs for minutes instead of waiting for it (a hang, not a speed)."""
    signal = pytest.importorskip("signal")
    if not hasattr(signal, "SIGALRM"):
        pytest.skip("needs SIGALRM")

    def expire(*_):
        raise AssertionError("did not finish within 120 s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def test_formula_of_a_chain_of_elementwise_ops_is_linear(hang_guard):
    # 20 steps took 5 s, 30 steps minutes: sympy's `A + B` redid doit() over the tree below
    # at every level, and MatMul asked the shape of an elementwise op twice per level
    x = gc.placeholder((3,), dtype="float64", name="x")
    h = x
    for i in range(40):
        h = gc.tanh(h) * 1.5 if i % 2 else h + 0.25
    text = str(gc.formula(h))
    assert text.count("tanh(") == 20 and text.endswith("x" + ")" * 20)
    assert str(gc.formula(gc.sum(h))).startswith("sum((3/2)*tanh(1/4 + (3/2)*tanh(")


def test_random_samples_like_a_float_node_take_its_dtype(tmp_path):
    # torch.randn_like keeps the dtype; random_normal(mu) of a float64 mu was float32, and
    # the VAE's mu + exp(lv / 2) * eps then mixed dtypes, which kept the step from compiling
    # (it ran through the interpreter and could not be exported)
    mu = gc.placeholder((None, 2), dtype="float64", name="mu")
    lv = gc.placeholder((None, 2), dtype="float64", name="lv")
    eps = gc.random_normal(mu, seed=5)
    assert eps.dtype == np.float64 and gc.random_uniform(mu).dtype == np.float64
    assert gc.random_normal((2, 3)).dtype == np.float32
    assert gc.random_normal(gc.placeholder((2,), dtype="int64")).dtype == np.float32
    assert gc.random_normal(mu, dtype="float32").dtype == np.float32
    step = gc.function([mu, lv], gc.sum((mu + gc.exp(0.5 * lv) * eps) ** 2))
    step.export(str(tmp_path / "vae.py"), np.ones((3, 2)), np.zeros((3, 2)))


def test_formula_too_deep_to_print_is_a_graphc_error():
    # gc.formula of a 5,000-step chain returned an expression whose print() raised
    # RecursionError inside sympy's printer
    x = gc.placeholder((3,), dtype="float64", name="x")
    h = x
    for i in range(5000):
        h = gc.tanh(h) * 1.0001 if i % 2 else h + 0.001
    with pytest.raises(gc.GraphcError, match="too deep"):
        print(gc.formula(gc.sum(h)))


def test_entry_points_name_a_non_node_and_a_variable_too_big(tmp_path):
    # onnx.save({"y": 3}) and explain([3]) raised AttributeError; Dense(10**12) raised
    # NumPy's MemoryError from inside its random generator
    x = gc.placeholder((None, 3), name="x")
    with pytest.raises(gc.GraphcError, match="explain"):
        gc.explain([3])
    with pytest.raises(gc.GraphcError, match=r"Dense 'dense'.*does not fit in memory"):
        nn.Dense(10 ** 12)(gc.placeholder((None, 10 ** 3)))
    with pytest.raises(gc.GraphcError, match=r"Embedding .*does not fit in memory"):
        nn.Embedding(10 ** 12, 10 ** 3)(gc.placeholder((None,), dtype="int64"))
    pytest.importorskip("onnx")
    import graphc.onnx
    for outputs in ({"y": 3}, [gc.sum(x), "y"]):
        with pytest.raises(gc.GraphcError, match="must be a graph node"):
            graphc.onnx.save(str(tmp_path / "m.onnx"), {"x": x}, outputs)
