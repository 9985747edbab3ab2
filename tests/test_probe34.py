"""Probe 34: the layers people port from PyTorch/Keras, against NumPy references written from
PyTorch's documentation (not from graphc's code): forward values, gradients against central
differences in float64, compiled == eval over several calls and two batch sizes in train and
eval mode, and the standalone export == the compiled function."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from tests.helpers import leaf_grad, load_module

RNG = np.random.default_rng(34)


def r(*shape):
    return RNG.standard_normal(shape)


def grads_match_fd(out, feeds, wrt, rtol=1e-5, atol=1e-7):
    """d sum(out * w) / d each of `wrt` against central differences (float64)."""
    shape = out.eval(feeds).shape
    cost = gc.sum(out * gc.constant(r(*shape)))
    grads = gc.grad(cost, wrt)
    compiled = gc.function(list(feeds), grads)(*feeds.values())
    for node, g in zip(wrt, compiled):
        want = leaf_grad(cost, node, feeds)
        np.testing.assert_allclose(g, want, rtol=rtol, atol=atol, err_msg=f"d/d{node}")


def compiled_eval_export(tmp_path, inputs, out, batches, name):
    """Several calls of the compiled function at each batch (two sizes) equal eval; then the
    standalone export of the function equals it on the same batches."""
    f = gc.function(inputs, out)
    got = []
    for feeds in batches * 2:
        y = f(*feeds)
        np.testing.assert_allclose(y, out.eval(dict(zip(inputs, feeds))), rtol=1e-10,
                                   atol=1e-12)
        got.append(y)
    path = f.export(tmp_path / f"{name}.py")
    mod = load_module(path, f"probe34_{name}")
    for feeds, y in zip(batches, got):
        np.testing.assert_allclose(mod.run(*feeds), y, rtol=1e-12, atol=1e-12)
    return got[:len(batches)]


# 1. Dense, Embedding, norms, dropout, activations ------------------------------------------

def test_dense_matches_numpy_gradients_fd_compiled_eval_export(tmp_path):
    x = gc.placeholder((None, 4), "float64", name="x")
    d = nn.Dense(3, "tanh", name="d")
    out = d(x)
    b3 = r(3)
    d.b.value = b3
    xa, xb = r(5, 4), r(2, 4)
    ya, yb = compiled_eval_export(tmp_path, [x], out, [(xa,), (xb,)], "dense")
    np.testing.assert_allclose(ya, np.tanh(xa @ d.W.value + b3), rtol=1e-12)  # y = x W + b
    np.testing.assert_allclose(yb, np.tanh(xb @ d.W.value + b3), rtol=1e-12)
    grads_match_fd(out, {x: xb}, [x, d.W, d.b])


def test_embedding_edges_and_repeated_ids_gradient():
    ids = gc.placeholder((None, 3), "int64", name="ids")
    e = nn.Embedding(6, 4, dtype="float64", name="emb")
    out = e(ids)
    table = e.E.value.copy()
    v = np.array([[0, 5, 5], [5, 0, 2]])
    np.testing.assert_array_equal(gc.function([ids], out)(v), table[v])
    # the table's gradient adds the upstream rows of every occurrence (index_add)
    w = r(2, 3, 4)
    (g,) = gc.function([ids], gc.grad(gc.sum(out * gc.constant(w)), [e.E]))(v)
    want = np.zeros_like(table)
    np.add.at(want, v.ravel(), w.reshape(-1, 4))
    np.testing.assert_allclose(g, want, rtol=1e-12)
    assert not g[[1, 3, 4]].any()
    grads_match_fd(out, {ids: v}, [e.E])


@pytest.mark.parametrize("bad", [6, -1])
def test_embedding_refuses_ids_outside_the_vocabulary(bad, tmp_path):
    """PyTorch's Embedding raises IndexError for an id < 0 or >= vocab (Keras/TF too); a
    negative id read the table's last row (NumPy's take), silently."""
    ids = gc.placeholder((None,), "int64", name="ids")
    out = nn.Embedding(6, 2, dtype="float64", name="emb")(ids)
    f = gc.function([ids], out)
    with pytest.raises(gc.GraphcError, match=f"index {bad} is out of bounds"):
        f(np.array([1, bad]))
    with pytest.raises(gc.GraphcError, match=f"index {bad} is out of bounds"):
        out.eval({ids: np.array([bad])})
    f(np.array([0, 5]))
    mod = load_module(f.export(tmp_path / "emb.py"), f"probe34_emb{bad}")
    with pytest.raises(Exception, match=f"index {bad} is out of bounds"):
        mod.run(np.array([bad, 1]))
    # gc.take itself keeps NumPy's meaning: -1 is the last row
    x = gc.placeholder((None,), "int64", name="i")
    np.testing.assert_array_equal(gc.take(gc.constant(np.arange(6.0)), x).eval(
        {x: np.array([-1])}), [5.0])


def test_layer_norm_and_batch_norm_against_pytorch_formulas(tmp_path):
    x = gc.placeholder((None, 3, 4), "float64", name="x")
    ln = nn.LayerNorm(name="ln")
    bn = nn.BatchNorm(momentum=0.1, name="bn")     # channels = axis 1
    ln_out = ln(x)
    ln.gamma.value, ln.beta.value = r(4), r(4)
    xv = r(5, 3, 4)
    mu, var = xv.mean(-1, keepdims=True), xv.var(-1, keepdims=True)
    want = (xv - mu) / np.sqrt(var + 1e-5) * ln.gamma.value + ln.beta.value
    np.testing.assert_allclose(gc.function([x], ln_out)(xv), want, rtol=1e-10)
    grads_match_fd(ln_out, {x: xv}, [x, ln.gamma, ln.beta])

    train, test = bn(x, training=True), bn(x, training=False)
    bn.gamma.value, bn.beta.value = r(3), r(3)
    g, b = bn.gamma.value[:, None], bn.beta.value[:, None]
    step = gc.function([x], train, updates=bn.state_updates)
    rm, rv = np.zeros(3), np.ones(3)
    for n in (5, 2, 5):                        # two batch sizes, several calls
        xv = r(n, 3, 4)
        m, v = xv.mean((0, 2)), xv.var((0, 2))
        want = (xv - m[:, None]) / np.sqrt(v[:, None] + 1e-5) * g + b
        np.testing.assert_allclose(step(xv), want, rtol=1e-10)
        k = n * 4                              # PyTorch: running var takes the unbiased var
        rm, rv = 0.9 * rm + 0.1 * m, 0.9 * rv + 0.1 * v * k / (k - 1)
        np.testing.assert_allclose(bn.running_mean.value, rm, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var.value, rv, rtol=1e-12)
    xv = r(2, 3, 4)
    want = (xv - rm[:, None]) / np.sqrt(rv[:, None] + 1e-5) * g + b
    ya, = compiled_eval_export(tmp_path, [x], test, [(xv,)], "bn_eval")
    np.testing.assert_allclose(ya, want, rtol=1e-10)
    grads_match_fd(train, {x: r(3, 3, 4)}, [x, bn.gamma, bn.beta])
    grads_match_fd(test, {x: xv}, [x, bn.gamma, bn.beta])


@pytest.mark.parametrize("rate", [0.0, 0.25, 0.95])
def test_dropout_scales_kept_values_and_is_identity_at_eval(rate):
    x = gc.placeholder((None, 400), "float64", name="x")
    drop = nn.Dropout(rate, seed=1, name="drop")
    train, test = drop(x, training=True), drop(x, training=False)
    xv = 1.0 + RNG.random((50, 400))
    f = gc.function([x], train)
    y1, y2 = f(xv), f(xv)
    for y in (y1, y2):
        kept = y != 0
        np.testing.assert_allclose(y[kept], xv[kept] / (1 - rate), rtol=1e-12)
        assert abs(kept.mean() - (1 - rate)) < 0.02
    assert rate == 0.0 or (y1 != y2).any()     # a new mask each call
    np.testing.assert_array_equal(gc.function([x], test)(xv), xv)


def test_activations_against_their_pytorch_definitions():
    x = gc.placeholder((None,), "float64", name="x")
    xv = np.concatenate([np.linspace(-6, 6, 41), [0.0, -30.0, 30.0]])
    erf = np.vectorize(math.erf)
    sig = 1 / (1 + np.exp(-xv))
    want = {
        "relu": np.maximum(xv, 0), "sigmoid": sig, "tanh": np.tanh(xv),
        "softplus": np.log1p(np.exp(-abs(xv))) + np.maximum(xv, 0),
        "gelu": xv * 0.5 * (1 + erf(xv / np.sqrt(2))),
        "gelu_tanh": 0.5 * xv * (1 + np.tanh(np.sqrt(2 / np.pi) * (xv + 0.044715 * xv ** 3))),
        "silu": xv * sig, "leaky_relu": np.where(xv > 0, xv, 0.01 * xv),
        "elu": np.where(xv > 0, xv, np.expm1(np.minimum(xv, 0))),
        "softmax": np.exp(xv - xv.max()) / np.exp(xv - xv.max()).sum(),
    }
    for name, ref in want.items():
        out = nn.Activation(name, name=f"act_{name}")(x)
        np.testing.assert_allclose(gc.function([x], out)(xv), ref, rtol=1e-12, atol=1e-14,
                                   err_msg=name)
        xg = np.array([-1.3, -0.2, 0.4, 2.1])
        grads_match_fd(out, {x: xg}, [x])


# 2. attention -------------------------------------------------------------------------------

def mha_ref(mha, q, k, v, mask=None):
    """PyTorch's MultiheadAttention (batch_first): Q = q W_q + b_q with the full (D, D)
    matrix, split into heads of d_head consecutive columns, softmax(Q K^T / sqrt(d_head)
    + mask) V, heads concatenated back, then out_proj. `mask`: bool (B, Tq, Tk), True = not
    allowed; a fully masked row attends uniformly (graphc's documented choice)."""
    h = mha.num_heads
    full = {w: np.concatenate(list(getattr(mha, f"W_{w}").value), axis=1) for w in "qkv"}
    bias = {w: getattr(mha, f"b_{w}").value.reshape(-1) for w in "qkv"}
    wo = np.concatenate(list(mha.W_o.value), axis=0)          # (H*d, D)

    def heads(x, w):
        y = x @ full[w] + bias[w]                              # (B, T, D)
        b, t, d = y.shape
        return y.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)

    qh, kh, vh = heads(q, "q"), heads(k, "k"), heads(v, "v")
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1])
    if mask is not None:
        s = np.where(mask[:, None], -np.inf, s)
        s = np.where(mask[:, None].all(-1, keepdims=True), 0.0, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    o = (a @ vh).transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], -1)
    return o @ wo + mha.b_o.value


def randomize(layer):
    for p in layer.params:
        p.value = 0.5 * r(*p.shape)


def test_cross_attention_other_kv_length_causal_padding_and_full_masked_row(tmp_path):
    q = gc.placeholder((None, 3, 4), "float64", name="q")
    kv = gc.placeholder((None, 5, 4), "float64", name="kv")
    pad = gc.placeholder((None, 5), "bool", name="pad")
    mha = nn.MultiHeadAttention(2, causal=True, name="mha")
    out = mha(q, kv, key_padding_mask=pad)
    randomize(mha)
    qv, kvv = r(2, 3, 4), r(2, 5, 4)
    pv = np.array([[False, False, True, False, True], [True, True, True, True, True]])
    batches = [(qv, kvv, pv), (qv[:1], kvv[:1], pv[:1])]
    got = compiled_eval_export(tmp_path, [q, kv, pad], out, batches, "cross")
    causal = ~np.tril(np.ones((3, 5), bool))
    for y, (a, b, p) in zip(got, batches):
        want = mha_ref(mha, a, b, b, causal[None] | p[:, None, :])
        np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    grads_match_fd(out, {q: qv, kv: kvv, pad: pv}, [q, kv] + mha.params)


def test_self_attention_train_and_eval_compiled_eval_export(tmp_path):
    x = gc.placeholder((None, 4, 6), "float64", name="x")
    mha = nn.MultiHeadAttention(3, name="sa")
    out = mha(x, training=False)
    randomize(mha)
    xa, xb = r(3, 4, 6), r(1, 4, 6)
    ya, yb = compiled_eval_export(tmp_path, [x], out, [(xa,), (xb,)], "sa")
    np.testing.assert_allclose(ya, mha_ref(mha, xa, xa, xa), rtol=1e-10)
    np.testing.assert_allclose(yb, mha_ref(mha, xb, xb, xb), rtol=1e-10)


class Encoder(nn.Model):
    """PyTorch's TransformerEncoderLayer(norm_first=...), dropout 0, activation gelu."""

    def __init__(self, d, heads, norm_first):
        super().__init__()
        self.norm_first = norm_first
        self.attn = nn.MultiHeadAttention(heads)
        self.norm1, self.norm2 = nn.LayerNorm(), nn.LayerNorm()
        self.ff1, self.ff2 = nn.Dense(2 * d, "gelu"), nn.Dense(d)

    def forward(self, x, training):
        if self.norm_first:
            x = x + self.attn(self.norm1(x))
            return x + self.ff2(self.ff1(self.norm2(x)))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.ff2(self.ff1(x)))


def ln_ref(x, ln):
    m, v = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * ln.gamma.value + ln.beta.value


@pytest.mark.parametrize("norm_first", [True, False])
def test_transformer_encoder_block(norm_first):
    erf = np.vectorize(math.erf)
    x = gc.placeholder((None, 3, 4), "float64", name="x")
    block = Encoder(4, 2, norm_first)
    out = block(x)
    randomize(block)
    xv = r(2, 3, 4)

    def ff(z):
        hid = z @ block.ff1.W.value + block.ff1.b.value
        hid = hid * 0.5 * (1 + erf(hid / np.sqrt(2)))
        return hid @ block.ff2.W.value + block.ff2.b.value

    def sa(z):
        return mha_ref(block.attn, z, z, z)

    if norm_first:
        h = xv + sa(ln_ref(xv, block.norm1))
        want = h + ff(ln_ref(h, block.norm2))
    else:
        h = ln_ref(xv + sa(xv), block.norm1)
        want = ln_ref(h + ff(h), block.norm2)
    np.testing.assert_allclose(gc.function([x], out)(xv), want, rtol=1e-10, atol=1e-12)
    grads_match_fd(out, {x: xv}, [x] + block.params, rtol=1e-5, atol=1e-7)


# 3. recurrent layers ---------------------------------------------------------------------------

def sig(z):
    return 1 / (1 + np.exp(-z))


def rnn_ref(layer, x, h0=None, c0=None):
    """PyTorch's documented equations; W_ih (F, G*U) = weight_ih_l0.T, gate blocks in
    PyTorch's order (LSTM i, f, g, o; GRU r, z, n)."""
    u = layer.units
    wi, wh, bi, bh = (layer.W_ih.value, layer.W_hh.value, layer.b_ih.value, layer.b_hh.value)
    h = np.zeros((x.shape[0], u)) if h0 is None else h0
    c = np.zeros_like(h) if c0 is None else c0
    hs = []
    for t in range(x.shape[1]):
        gi, gh = x[:, t] @ wi + bi, h @ wh + bh
        blk = [slice(k * u, (k + 1) * u) for k in range(4)]
        if isinstance(layer, nn.LSTM):
            z = gi + gh
            i, f, g, o = (sig(z[:, blk[0]]), sig(z[:, blk[1]]), np.tanh(z[:, blk[2]]),
                          sig(z[:, blk[3]]))
            c = f * c + i * g
            h = o * np.tanh(c)
        elif isinstance(layer, nn.GRU):
            rr = sig(gi[:, blk[0]] + gh[:, blk[0]])
            zz = sig(gi[:, blk[1]] + gh[:, blk[1]])
            n = np.tanh(gi[:, blk[2]] + rr * gh[:, blk[2]])   # r * (W_hn h + b_hn)
            h = (1 - zz) * n + zz * h
        else:
            h = np.tanh(gi + gh)
        hs.append(h)
    seq = np.stack(hs, 1) if hs else np.zeros((x.shape[0], 0, u))
    return seq, h, c


@pytest.mark.parametrize("kind", [nn.SimpleRNN, nn.GRU, nn.LSTM])
def test_recurrent_layers_follow_pytorch_equations(kind, tmp_path):
    x = gc.placeholder((None, None, 3), "float64", name="x")
    seq_layer = kind(4, return_sequences=True, return_state=True, name="rs")
    outs = seq_layer(x)
    for p in seq_layer.params:
        p.value = 0.6 * r(*p.shape)
    f = gc.function([x], list(outs))
    for shape in ((2, 5, 3), (3, 1, 3), (2, 0, 3), (2, 5, 3)):
        xv = r(*shape)
        got = f(*[xv])
        seq, h, c = rnn_ref(seq_layer, xv)
        np.testing.assert_allclose(got[0], seq, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[1], h, rtol=1e-10, atol=1e-12)
        if kind is nn.LSTM:
            np.testing.assert_allclose(got[2], c, rtol=1e-10, atol=1e-12)
        for a, b in zip(got, [o.eval({x: xv}) for o in outs]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # initial states, last state only
    x5 = gc.placeholder((None, 5, 3), "float64", name="x5")
    last = kind(4, name="last")
    h0 = gc.placeholder((None, 4), "float64", name="h0")
    c0 = gc.placeholder((None, 4), "float64", name="c0")
    init = (h0, c0) if kind is nn.LSTM else h0
    out = last(x5, initial_state=init)
    for p in last.params:
        p.value = 0.6 * r(*p.shape)
    xv, hv, cv = r(2, 5, 3), r(2, 4), r(2, 4)
    feeds = {x5: xv, h0: hv, c0: cv} if kind is nn.LSTM else {x5: xv, h0: hv}
    _, want, _ = rnn_ref(last, xv, hv, cv if kind is nn.LSTM else None)
    np.testing.assert_allclose(gc.function(list(feeds), out)(*feeds.values()), want,
                               rtol=1e-10)
    grads_match_fd(out, feeds, list(feeds) + last.params)


def test_gru_gradients_through_20_steps_and_export(tmp_path):
    x = gc.placeholder((None, 20, 2), "float64", name="x")
    gru = nn.GRU(3, name="gru")
    out = gru(x)
    for p in gru.params:
        p.value = 0.5 * r(*p.shape)
    xa, xb = r(2, 20, 2), r(1, 20, 2)
    ya, yb = compiled_eval_export(tmp_path, [x], out, [(xa,), (xb,)], "gru")
    np.testing.assert_allclose(ya, rnn_ref(gru, xa)[1], rtol=1e-10)
    grads_match_fd(out, {x: xa}, [x] + gru.params)


# 4. convolution and pooling ----------------------------------------------------------------------

def conv_ref(x, w, b, stride, pad):
    """PyTorch's Conv2d: out[n, o, i, j] = b[o] + sum_c,p,q w[o, c, p, q] x_pad[n, c,
    i*s + p, j*s + q], padding (top, bottom, left, right) zeros."""
    t, bo, le, ri = pad
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (le, ri)))
    n, _, hh, ww = xp.shape
    o, _, kh, kw = w.shape
    ho, wo = (hh - kh) // stride + 1, (ww - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("ncpq,ocpq->no", patch, w)
    return out + b[:, None, None]


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, (1, 2))])
def test_conv_pool_flatten_dense_against_nchw_reference(stride, padding, tmp_path):
    x = gc.placeholder((None, 2, 7, 6), "float64", name="x")
    conv = nn.Conv2D(3, (3, 4), stride=stride, padding=padding, name="conv")
    model_out = nn.Flatten(name="flat")(nn.MaxPool2D(2, name="pool")(conv(x)))
    gap = gc.mean(conv(x), axis=(2, 3))                    # global average pooling
    conv.b.value = r(3)
    xv = r(2, 2, 7, 6)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    c = conv_ref(xv, conv.W.value, conv.b.value, stride, (ph, ph, pw, pw))
    n, ch, hh, ww = c.shape
    pooled = c[:, :, :hh // 2 * 2, :ww // 2 * 2].reshape(n, ch, hh // 2, 2, ww // 2, 2)
    want = pooled.max((3, 5)).reshape(n, -1)               # NCHW flatten: C, then H, then W
    np.testing.assert_allclose(gc.function([x], model_out)(xv), want, rtol=1e-10)
    np.testing.assert_allclose(gc.function([x], gap)(xv), c.mean((2, 3)), rtol=1e-10)
    grads_match_fd(model_out, {x: xv}, [x, conv.W, conv.b])


def tf_same(size, k, s):
    """TensorFlow's documented 'SAME' padding (PyTorch's 'same' at stride 1 is the same
    split): out = ceil(size / s), the total padding halved, the odd one at the end."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("kernel,stride", [((3, 4), 1), ((2, 2), 2), ((3, 3), 2), (5, 1)])
def test_conv_padding_same_and_valid(kernel, stride, tmp_path):
    x = gc.placeholder((None, 2, 7, 6), "float64", name="x")
    same = nn.Conv2D(3, kernel, stride=stride, padding="same", name="same")
    valid = nn.Conv2D(3, kernel, stride=stride, padding="valid", name="valid")
    ys, yv = same(x), valid(x)
    kh, kw = same.kernel_size
    assert ys.shape[2:] == (-(-7 // stride), -(-6 // stride))
    same.b.value = valid.b.value = r(3)
    valid.W.value = same.W.value
    xa, xb = r(2, 2, 7, 6), r(1, 2, 7, 6)
    got = compiled_eval_export(tmp_path, [x], ys, [(xa,), (xb,)], "same")
    pads = tf_same(7, kh, stride) + tf_same(6, kw, stride)
    for y, xv in zip(got, (xa, xb)):
        np.testing.assert_allclose(y, conv_ref(xv, same.W.value, same.b.value, stride, pads),
                                   rtol=1e-10)
    np.testing.assert_allclose(gc.function([x], yv)(xa), conv_ref(
        xa, same.W.value, same.b.value, stride, (0, 0, 0, 0)), rtol=1e-10)
    grads_match_fd(ys, {x: xb}, [x, same.W, same.b])


def test_conv_padding_errors():
    with pytest.raises(gc.GraphcError, match="'same' or 'valid', got 'full'"):
        nn.Conv2D(3, 3, padding="full")
    x = gc.placeholder((None, 2, None, None), "float64", name="x")
    assert nn.Conv2D(3, 3, padding="same", name="s1")(x).shape[1] == 3
    with pytest.raises(gc.GraphcError, match="'same' with stride 2 needs known image sizes"):
        nn.Conv2D(3, 3, stride=2, padding="same", name="s2")(x)


def test_rms_norm_as_pytorch(tmp_path):
    """torch.nn.RMSNorm: y = x / sqrt(mean(x^2 over the normalized dims) + eps) * weight,
    eps=None meaning torch.finfo(dtype).eps."""
    x = gc.placeholder((None, 3, 4), "float64", name="x")
    last, both = nn.RMSNorm(name="rms"), nn.RMSNorm(axis=(-2, -1), eps=1e-6, name="rms2")
    y1, y2 = last(x), both(x)
    assert [p.name for p in last.params] == ["rms/gamma"] and both.gamma.shape == (3, 4)
    last.gamma.value, both.gamma.value = r(4), r(3, 4)
    xa, xb = r(2, 3, 4), r(5, 3, 4)
    got = compiled_eval_export(tmp_path, [x], y1, [(xa,), (xb,)], "rms")
    for y, xv in zip(got, (xa, xb)):
        want = xv / np.sqrt((xv ** 2).mean(-1, keepdims=True) + np.finfo(float).eps)
        np.testing.assert_allclose(y, want * last.gamma.value, rtol=1e-12)
    want = xa / np.sqrt((xa ** 2).mean((1, 2), keepdims=True) + 1e-6) * both.gamma.value
    np.testing.assert_allclose(gc.function([x], y2)(xa), want, rtol=1e-12)
    grads_match_fd(y1, {x: xa}, [x, last.gamma])
    grads_match_fd(y2, {x: xa}, [x, both.gamma])
    plain = nn.RMSNorm(affine=False, name="plain")
    assert plain(x).eval({x: xa}).shape == xa.shape and plain.params == []


def test_attention_bh_mask_order_float_mask_and_other_key_value_sizes():
    """attn_mask (B*H, Tq, Tk): example b, head h at b*H + h (PyTorch); a float mask is added
    to the scores; k and v of their own feature sizes (PyTorch's kdim, vdim)."""
    q = gc.placeholder((2, 3, 4), "float64", name="q")
    kv = gc.placeholder((2, 5, 4), "float64", name="kv")
    mha = nn.MultiHeadAttention(2, name="m")
    m3 = RNG.random((4, 3, 5)) < 0.4
    pad = np.array([[0, 0, 0, 1, 1], [1, 0, 0, 0, 0]], bool)
    out = mha(q, kv, attn_mask=m3, key_padding_mask=pad)
    randomize(mha)
    qv, kvv = r(2, 3, 4), r(2, 5, 4)
    mask = m3.reshape(2, 2, 3, 5) | pad[:, None, None, :]
    np.testing.assert_allclose(gc.function([q, kv], out)(qv, kvv),
                               mha_ref_heads(mha, qv, kvv, kvv, mask), rtol=1e-10, atol=1e-12)
    fm = np.where(RNG.random((3, 5)) < 0.3, -np.inf, r(3, 5))
    fm[:, 0] = 0.0                                    # no row fully masked
    out2 = mha(q, kv, attn_mask=fm)
    want = mha_ref_heads(mha, qv, kvv, kvv, np.isinf(fm), add=np.where(np.isinf(fm), 0, fm))
    np.testing.assert_allclose(gc.function([q, kv], out2)(qv, kvv), want, rtol=1e-10)
    k = gc.placeholder((None, 5, 6), "float64", name="k")
    v = gc.placeholder((None, 5, 2), "float64", name="v")
    cross = nn.MultiHeadAttention(2, name="kdim")
    out3 = cross(q, k, v)
    randomize(cross)
    kv6, v2 = r(2, 5, 6), r(2, 5, 2)
    np.testing.assert_allclose(gc.function([q, k, v], out3)(qv, kv6, v2),
                               mha_ref_heads(cross, qv, kv6, v2, None), rtol=1e-10)
    grads_match_fd(out3, {q: qv, k: kv6, v: v2}, [q, k, v] + cross.params)


def mha_ref_heads(mha, q, k, v, mask, add=0.0):
    """As mha_ref, with a per-head bool mask (B, H, Tq, Tk) or (Tq, Tk) and an additive
    float mask."""
    h = mha.num_heads
    full = {w: np.concatenate(list(getattr(mha, f"W_{w}").value), axis=1) for w in "qkv"}
    bias = {w: getattr(mha, f"b_{w}").value.reshape(-1) for w in "qkv"}
    wo = np.concatenate(list(mha.W_o.value), axis=0)

    def heads(x, w):
        y = x @ full[w] + bias[w]
        return y.reshape(y.shape[0], y.shape[1], h, -1).transpose(0, 2, 1, 3)

    qh, kh, vh = heads(q, "q"), heads(k, "k"), heads(v, "v")
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(qh.shape[-1]) + add
    if mask is not None:
        s = np.where(mask, -np.inf, s)
        s = np.where(np.broadcast_to(mask, s.shape).all(-1, keepdims=True), 0.0, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    o = (e / e.sum(-1, keepdims=True)) @ vh
    return o.transpose(0, 2, 1, 3).reshape(q.shape[0], q.shape[1], -1) @ wo + mha.b_o.value


def test_norms_over_images_and_several_axes():
    x = gc.placeholder((None, 3, 2, 2), "float64", name="x")
    xv = r(4, 3, 2, 2)
    bn, last, ln = (nn.BatchNorm(name="bn"), nn.BatchNorm(axis=-1, name="last"),
                    nn.LayerNorm(axis=(-2, -1), name="ln"))
    step = gc.function([x], [bn(x), last(x), ln(x)], updates=bn.state_updates
                       + last.state_updates)
    got = step(xv)
    for y, axes in zip(got, ((0, 2, 3), (0, 1, 2), (2, 3))):
        m, v = xv.mean(axes, keepdims=True), xv.var(axes, keepdims=True)
        np.testing.assert_allclose(y, (xv - m) / np.sqrt(v + 1e-5), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last.running_var.value,
                               0.9 + 0.1 * xv.var((0, 1, 2)) * 24 / 23, rtol=1e-12)
    assert ln.gamma.shape == (2, 2)          # PyTorch's normalized_shape


def test_lstm_empty_sequence_returns_and_differentiates_the_initial_state():
    xs = gc.placeholder((None, None, 3), "float64", name="xs")
    h0 = gc.placeholder((None, 4), "float64", name="h0")
    c0 = gc.placeholder((None, 4), "float64", name="c0")
    lstm = nn.LSTM(4, return_state=True, name="l")
    out, h, c = lstm(xs, initial_state=(h0, c0))
    hv, cv = r(2, 4), r(2, 4)
    f = gc.function([xs, h0, c0], [out, h, c] + gc.grad(gc.sum(out * 2) + gc.sum(c), [h0, c0]))
    o, hh, cc, gh, gcc = f(np.zeros((2, 0, 3)), hv, cv)
    np.testing.assert_array_equal(o, hv)
    np.testing.assert_array_equal(cc, cv)
    np.testing.assert_array_equal(gh, np.full((2, 4), 2.0))
    np.testing.assert_array_equal(gcc, np.ones((2, 4)))


@pytest.mark.parametrize("padding_idx,row", [(0, 0), (-1, 5)])
def test_embedding_padding_idx_as_pytorch(padding_idx, row, tmp_path):
    """torch.nn.Embedding(padding_idx=p): row p starts at zeros and gets no gradient (it is
    not updated by training); a negative p counts from the end."""
    ids = gc.placeholder((None, 3), "int64", name="ids")
    e = nn.Embedding(6, 2, dtype="float64", padding_idx=padding_idx, name="emb")
    out = e(ids)
    assert not e.E.value[row].any() and e.E.value[(row + 1) % 6].any()
    v = np.array([[row, 1, row], [2, 1, 4]])
    w = r(2, 3, 2)
    f = gc.function([ids], [out] + gc.grad(gc.sum(out * gc.constant(w)), [e.E]))
    y, g = f(v)
    np.testing.assert_array_equal(y, e.E.value[v])
    want = np.zeros((6, 2))
    np.add.at(want, v.ravel(), w.reshape(-1, 2))
    want[row] = 0
    np.testing.assert_allclose(g, want, rtol=1e-12)
    e.E.value = r(6, 2)                       # a loaded table: the padding row is read as is
    np.testing.assert_array_equal(f(v)[0], e.E.value[v])
    mod = load_module(f.export(tmp_path / "pad.py"), f"probe34_pad{row}")
    for a, b in zip(mod.run(v), f(v)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(gc.GraphcError, match=r"padding_idx must be an int in \[-6, 6\)"):
        nn.Embedding(6, 2, padding_idx=6)


def test_new_layer_options_export_to_onnx(tmp_path):
    """Embedding(padding_idx), RMSNorm and Conv2D(padding='same', uneven) as ONNX graphs run
    by onnxruntime give the compiled function's values."""
    ort = pytest.importorskip("onnxruntime")
    from graphc import onnx as gonnx
    ids = gc.placeholder((2, 3), "int64", name="ids")
    x = gc.placeholder((2, 2, 7, 6), "float32", name="x")   # onnxruntime: no float64 Conv
    emb, rms = nn.Embedding(6, 4, dtype="float64", padding_idx=0, name="e"), nn.RMSNorm()
    conv = nn.Conv2D(3, (2, 2), stride=2, padding="same", name="c")
    a, b = rms(emb(ids)), conv(x)
    gonnx.save(tmp_path / "m.onnx", {"ids": ids, "x": x}, {"a": a, "b": b})
    iv, xv = np.array([[0, 1, 5], [2, 0, 3]]), r(2, 2, 7, 6).astype(np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"ids": iv, "x": xv})
    for g, want in zip(got, gc.function([ids, x], [a, b])(iv, xv)):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def pool_ref(x, k, s, pads):
    """PyTorch's MaxPool2d: max over windows of x padded with -inf (never chosen)."""
    (t, b), (le, ri) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b), (le, ri)), constant_values=-np.inf)
    ho, wo = (xp.shape[2] - k) // s + 1, (xp.shape[3] - k) // s + 1
    return np.stack([np.stack([xp[:, :, i * s:i * s + k, j * s:j * s + k].max((2, 3))
                               for j in range(wo)], -1) for i in range(ho)], -2)


@pytest.mark.parametrize("k,s,padding", [(3, 2, 1), (2, 2, "same"), (3, 2, "same"),
                                         (2, 1, "valid"), (3, 1, "same")])
def test_max_pool_padding_as_pytorch_and_keras(k, s, padding, tmp_path):
    x = gc.placeholder((None, 2, 7, 6), "float64", name="x")
    y = nn.MaxPool2D(k, stride=s, padding=padding, name="pool")(x)
    pads = {"valid": ((0, 0), (0, 0)), "same": (tf_same(7, k, s), tf_same(6, k, s))}.get(
        padding, ((padding, padding),) * 2 if isinstance(padding, int) else None)
    xa, xb = -5 - RNG.random((2, 2, 7, 6)), r(1, 2, 7, 6)    # all negative: not a 0 pad
    got = compiled_eval_export(tmp_path, [x], y, [(xa,), (xb,)], f"pool{k}{s}{padding}")
    for g, xv in zip(got, (xa, xb)):
        np.testing.assert_allclose(g, pool_ref(xv, k, s, pads), rtol=1e-12)
    grads_match_fd(y, {x: xb}, [x])
    with pytest.raises(gc.GraphcError, match="at most half the window"):
        nn.MaxPool2D(2, padding=2, name="big")(x)
