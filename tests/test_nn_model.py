"""nn.Model: models that are not a plain stack (residual connections, several inputs, shared
layers) collect their layers' variables, and fit/evaluate/predict/save_params/summary work
on them as on Sequential."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import toposort

RNG = np.random.default_rng(0)


class TwoTower(nn.Model):
    """Two inputs through one shared Dense layer, a residual block, a head."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Dense(8, "tanh")
        self.blocks = [nn.Dense(8, "gelu"), nn.Dense(8, "silu")]
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(3)

    def forward(self, a, b, training):
        h = self.shared(a) + self.shared(b)          # shared: one set of variables
        for block in self.blocks:
            h = h + block(self.norm(h))              # residual
        return self.head(h)


def test_a_model_collects_the_variables_of_the_layers_it_holds_once():
    model = TwoTower()
    a = gc.placeholder((None, 4), "float64", name="a")
    b = gc.placeholder((None, 4), "float64", name="b")
    out = model(a, b)
    assert out.shape == (None, 3)
    assert [p.name for p in model.params] == [
        "shared/W", "shared/b", "blocks_0/W", "blocks_0/b", "blocks_1/W", "blocks_1/b",
        "norm/gamma", "norm/beta", "head/W", "head/b"]
    assert model.kernels == [model.shared.W, model.blocks[0].W, model.blocks[1].W,
                             model.head.W]
    assert {n.scope for n in toposort([out]) if n.op == "variable"} == {
        ("shared",), ("blocks_0",), ("blocks_1",), ("norm",), ("head",)}
    av, bv = RNG.standard_normal((5, 4)), RNG.standard_normal((5, 4))
    s = model.shared
    h = np.tanh(av @ s.W.value + s.b.value) + np.tanh(bv @ s.W.value + s.b.value)
    want = out.eval({a: av, b: bv})
    np.testing.assert_allclose(gc.function([a, b], out)(av, bv), want, rtol=1e-12)
    grads = gc.grad(gc.sum(out), model.params)
    assert [g.shape for g in grads] == [p.shape for p in model.params]
    assert h.shape == (5, 8)
    lines = model.summary().splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == [
        "shared", "blocks_0", "blocks_1", "norm", "head"]
    assert lines[-1].split() == ["total", str(sum(p.value.size for p in model.params))]


def test_fit_evaluate_predict_and_params_work_on_a_model_with_two_inputs(tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((200, 4)), rng.standard_normal((200, 4))
    y = (a[:, 0] + b[:, 0] > 0).astype(np.int64)
    a, b = a.astype(np.float32), b.astype(np.float32)
    model = TwoTower()
    history = nn.fit(model, "softmax_cross_entropy", nn.Adam(0.01), (a, b), y, epochs=8,
                     batch_size=32, validation_data=((a, b), y), verbose=0)
    assert history["accuracy"][-1] > 0.9 and history["val_accuracy"][-1] > 0.9
    result = nn.evaluate(model, "softmax_cross_entropy", (a, b), y)
    assert result["accuracy"] == pytest.approx(history["val_accuracy"][-1])
    pred = nn.predict(model, (a, b), batch_size=64)
    assert pred.shape == (200, 3)
    nn.save_params(model, tmp_path / "two.npz")
    again = TwoTower()
    again(gc.placeholder((None, 4), name="a"), gc.placeholder((None, 4), name="b"))
    nn.load_params(again, tmp_path / "two.npz")
    np.testing.assert_allclose(nn.predict(again, (a, b)), pred, rtol=1e-5, atol=1e-6)
    with pytest.raises(gc.GraphcError, match="different numbers of examples"):
        nn.predict(model, (a, b[:10]))


class Encoder(nn.Model):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential([nn.Dense(4), nn.BatchNorm(), nn.Dropout(0.5)])
        self.extra = {"out": nn.Dense(2)}

    def build(self, x):
        self.late = nn.Dense(2)                    # layers made in build are held too

    def forward(self, x, training):
        return self.late(self.extra["out"](self.body(x)))


class Outer(nn.Model):
    def __init__(self):
        super().__init__(seed=3)
        self.enc = Encoder()
        self.bn = nn.BatchNorm()

    def forward(self, x, training):
        return self.bn(self.enc(x))


def test_nested_models_name_variables_by_path_and_inherit_the_mode():
    model = Outer()
    x = gc.placeholder((None, 3), "float64", name="x")
    train = model(x)                               # training by default
    assert [p.name for p in model.variables] == [
        "enc/body/dense_0/W", "enc/body/dense_0/b", "enc/body/batchnorm_1/gamma",
        "enc/body/batchnorm_1/beta", "enc/extra_out/W", "enc/extra_out/b", "enc/late/W",
        "enc/late/b", "bn/gamma", "bn/beta", "enc/body/batchnorm_1/running_mean",
        "enc/body/batchnorm_1/running_var", "bn/running_mean", "bn/running_var"]
    assert model.enc.body.layers[0].seed == 3
    ops = {n.op for n in toposort([train])}
    assert "dropout_mask" in ops
    assert [v.name for v, _ in model.state_updates] == [
        "enc/body/batchnorm_1/running_mean", "enc/body/batchnorm_1/running_var",
        "bn/running_mean", "bn/running_var"]
    test = model(x, training=False)                # every layer inside follows
    ops = {n.op for n in toposort([test])}
    assert "dropout_mask" not in ops and "size" not in ops
    assert model.enc.body.layers[1].running_mean in toposort([test])
    assert "enc/body/dense_0" in model.summary()

    # a hand-written step: optimizer updates plus the model's state updates
    loss = gc.mean(train * train)
    step = gc.function([x], loss, updates=nn.SGD(0.1).updates(loss, model.params)
                       + model.state_updates)
    before = model.bn.running_mean.value.copy()
    step(RNG.standard_normal((8, 3)))
    assert not np.allclose(model.bn.running_mean.value, before)


def test_model_mistakes_get_clear_errors():
    class Forgot(nn.Model):
        def __init__(self):
            self.d = nn.Dense(2)

        def forward(self, x, training):
            return self.d(x)

    x = gc.placeholder((None, 3), name="x")
    with pytest.raises(gc.GraphcError, match="must call super"):
        Forgot()(x)
    with pytest.raises(gc.GraphcError, match="keyword: layer\\(x, training=False\\)"):
        nn.Dense(2)(x, False)

    class Clash(nn.Model):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Dense(2, name="same"), nn.Dense(2, name="same")

        def forward(self, x, training):
            return self.a(x) + self.b(x)

    with pytest.raises(gc.GraphcError, match="two layers are named 'same'"):
        Clash()(x)


@pytest.mark.parametrize("name, ref", [
    ("tanh", np.tanh),
    ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
    ("silu", lambda z: z / (1 + np.exp(-z))),
    ("leaky_relu", lambda z: np.where(z > 0, z, 0.01 * z)),
    ("elu", lambda z: np.where(z > 0, z, np.expm1(z))),
    ("gelu", lambda z: 0.5 * z * (1 + np.vectorize(__import__("math").erf)(z / np.sqrt(2)))),
])
def test_activation_names_in_dense_conv_and_activation_layers(name, ref):
    x = gc.placeholder((None, 5), "float64", name="x")
    dense = nn.Dense(3, activation=name)
    out = dense(x)
    xv = RNG.standard_normal((4, 5))
    np.testing.assert_allclose(out.eval({x: xv}),
                               ref(xv @ dense.W.value + dense.b.value), rtol=1e-6, atol=1e-9)
    img = gc.placeholder((None, 1, 4, 4), "float64", name="img")
    assert nn.Conv2D(2, 3, activation=name)(img).shape == (None, 2, 2, 2)
    np.testing.assert_allclose(nn.Activation(name)(x).eval({x: xv}), ref(xv), rtol=1e-6,
                               atol=1e-9)


def test_per_token_accuracy_and_fit_on_sequences():
    pred = np.zeros((2, 3, 4))
    pred[0, :, 1] = 1                       # predicts 1 everywhere in sequence 0
    pred[1, :, 2] = 1
    assert nn.accuracy(pred, np.array([[1, 1, 0], [2, 2, 2]])) == pytest.approx(5 / 6)

    class Tagger(nn.Model):                 # the tag of a token is its id mod 3
        def __init__(self):
            super().__init__()
            self.embed, self.out = nn.Embedding(9, 8), nn.Dense(3)

        def forward(self, ids, training):
            return self.out(self.embed(ids))

    ids = np.random.default_rng(0).integers(0, 9, size=(64, 5))
    history = nn.fit(Tagger(), "softmax_cross_entropy", nn.Adam(0.05), ids, ids % 3,
                     epochs=5, batch_size=16, verbose=0)
    assert history["accuracy"][-1] == 1.0
