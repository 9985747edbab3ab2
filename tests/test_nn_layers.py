"""graphc.nn layers for today's models: Embedding, LayerNorm, BatchNorm, MultiHeadAttention,
activation names. Values against NumPy, gradients against central differences in float64,
the compiled function against the reference interpreter."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from tests.helpers import leaf_grad

RNG = np.random.default_rng(0)


def x64(*shape):
    return RNG.standard_normal(shape)


def check_grads(out, feeds, wrt, rtol=1e-5, atol=1e-7):
    """d sum(out * r) / d each of `wrt` (variables or placeholders) against central
    differences, and the compiled gradients against the interpreter's."""
    shape = out.eval(feeds).shape
    cost = gc.sum(out * gc.constant(RNG.standard_normal(shape)))
    grads = gc.grad(cost, wrt)
    got = [g.eval(feeds) for g in grads]
    compiled = gc.function(list(feeds), grads)(*feeds.values())
    for node, g, c in zip(wrt, got, compiled):
        np.testing.assert_allclose(c, g, rtol=1e-9, atol=1e-12, err_msg=f"compiled {node}")
        want = leaf_grad(cost, node, feeds)
        np.testing.assert_allclose(g, want, rtol=rtol, atol=atol, err_msg=f"gradient {node}")


def compiled_equals_eval(out, feeds):
    want = out.eval(feeds)
    np.testing.assert_allclose(gc.function(list(feeds), out)(*feeds.values()), want,
                               rtol=1e-9, atol=1e-12)
    return want


# LayerNorm ------------------------------------------------------------------------------

def layer_norm_ref(x, axes, gamma, beta, eps=1e-5):
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def test_layer_norm_matches_numpy_and_its_gradients_finite_differences():
    x = gc.placeholder((None, 3, 5), "float64", name="x")
    ln = nn.LayerNorm(name="ln")
    out = ln(x)
    assert [p.name for p in ln.params] == ["ln/gamma", "ln/beta"]
    assert ln.gamma.shape == (5,)
    ln.gamma.value, ln.beta.value = x64(5), x64(5)
    xv = x64(2, 3, 5)
    got = compiled_equals_eval(out, {x: xv})
    np.testing.assert_allclose(got, layer_norm_ref(xv, -1, ln.gamma.value, ln.beta.value))
    check_grads(out, {x: xv}, [x, ln.gamma, ln.beta])


def test_layer_norm_over_several_axes():
    x = gc.placeholder((2, 3, 4), "float64", name="x")
    ln = nn.LayerNorm(axis=(1, 2), eps=1e-3)
    out = ln(x)
    assert ln.gamma.shape == (3, 4)
    xv = x64(2, 3, 4)
    np.testing.assert_allclose(out.eval({x: xv}),
                               layer_norm_ref(xv, (1, 2), 1.0, 0.0, eps=1e-3), atol=1e-12)
    with pytest.raises(gc.GraphcError, match="built for rank 3"):
        ln(gc.placeholder((2, 12), "float64", name="flat"))


# BatchNorm ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, axes", [((6, 4), (0,)), ((3, 2, 4, 5), (0, 2, 3))])
def test_batch_norm_training_values_gradients_and_running_statistics(shape, axes):
    x = gc.placeholder((None,) + shape[1:], "float64", name="x")
    bn = nn.BatchNorm(momentum=0.2, eps=1e-3, name="bn")
    out = bn(x, training=True)
    c = shape[1]
    assert [p.name for p in bn.params] == ["bn/gamma", "bn/beta"]
    assert [s.name for s in bn.state] == ["bn/running_mean", "bn/running_var"]
    assert bn.variables == bn.params + bn.state
    bn.gamma.value, bn.beta.value = x64(c), x64(c)
    xv = x64(*shape) * 2 + 1
    bshape = (1, c) + (1,) * (len(shape) - 2)
    mean, var = xv.mean(axis=axes), xv.var(axis=axes)
    want = ((xv - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + 1e-3)
            * bn.gamma.value.reshape(bshape) + bn.beta.value.reshape(bshape))
    np.testing.assert_allclose(compiled_equals_eval(out, {x: xv}), want, atol=1e-12)
    check_grads(out, {x: xv}, [x, bn.gamma, bn.beta])

    # one compiled step applies the running statistics' update pairs
    assert [v for v, _ in bn.state_updates] == bn.state
    n = xv.size // c
    gc.function([x], out, updates=bn.state_updates)(xv)
    np.testing.assert_allclose(bn.running_mean.value, 0.2 * mean)
    np.testing.assert_allclose(bn.running_var.value, 0.8 + 0.2 * var * n / (n - 1))

    # evaluation reads the running statistics, leaves them alone and records no update
    pairs = bn.state_updates
    test = bn(x, training=False)
    assert bn.state_updates == pairs
    ev = compiled_equals_eval(test, {x: xv})
    np.testing.assert_allclose(ev, (xv - bn.running_mean.value.reshape(bshape))
                               / np.sqrt(bn.running_var.value.reshape(bshape) + 1e-3)
                               * bn.gamma.value.reshape(bshape)
                               + bn.beta.value.reshape(bshape), atol=1e-12)


def test_batch_norm_float32_keeps_its_dtype_and_checks_arguments():
    x = gc.placeholder((None, 3), name="x")
    bn = nn.BatchNorm()
    assert bn(x).dtype == np.float32
    assert all(new.dtype == np.float32 for _, new in bn.state_updates)
    with pytest.raises(gc.GraphcError, match="momentum must be in"):
        nn.BatchNorm(momentum=1.5)
    with pytest.raises(gc.GraphcError, match="rank >= 2"):
        nn.BatchNorm()(gc.placeholder((4,), name="v"))


def test_fit_updates_the_running_statistics_and_evaluates_with_them():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 3)) * [1.0, 2.0, 3.0] + [5.0, -1.0, 0.0]).astype(np.float32)
    y = (x[:, 0] - 5 > x[:, 1] + 1).astype(np.int64)
    model = nn.Sequential([nn.Dense(4), nn.BatchNorm(momentum=0.5), nn.Activation("relu"),
                           nn.Dense(2)])
    # lr 0: the Dense layer stays put, so three full-batch steps with momentum 0.5 move the
    # running statistics from (0, 1) to 7/8 of the batch's
    nn.fit(model, "softmax_cross_entropy", nn.SGD(0.0), x, y, epochs=3, batch_size=64,
           verbose=0)
    bn = model.layers[1]
    assert bn.name == "batchnorm_1" and len(model.state_updates) == 2
    h = x @ model.layers[0].W.value + model.layers[0].b.value
    np.testing.assert_allclose(bn.running_mean.value, 0.875 * h.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(bn.running_var.value, 0.125 + 0.875 * h.var(axis=0, ddof=1),
                               rtol=1e-4)
    pred = nn.predict(model, x)
    xv = gc.placeholder((None, 3), name="xe")
    np.testing.assert_allclose(pred, model(xv, training=False).eval({xv: x}), rtol=1e-5)


# MultiHeadAttention ---------------------------------------------------------------------

def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention_ref(mha, q, kv, causal=False):
    """Per-head loop over NumPy arrays, as written in the paper."""
    heads = []
    for h in range(mha.num_heads):
        qh = q @ mha.W_q.value[h] + mha.b_q.value[h]
        kh = kv @ mha.W_k.value[h] + mha.b_k.value[h]
        vh = kv @ mha.W_v.value[h] + mha.b_v.value[h]
        scores = qh @ np.swapaxes(kh, -1, -2) / np.sqrt(mha.d_head)
        if causal:
            scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
        heads.append(softmax(scores) @ vh)
    concat = np.concatenate(heads, axis=-1)
    return concat @ mha.W_o.value.reshape(-1, mha.d_model) + mha.b_o.value


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_a_per_head_reference_and_finite_differences(causal):
    x = gc.placeholder((None, 4, 6), "float64", name="x")
    mha = nn.MultiHeadAttention(3, causal=causal, name="mha")
    out = mha(x)
    assert out.shape == (None, 4, 6)
    assert [p.name for p in mha.params] == ["mha/W_q", "mha/b_q", "mha/W_k", "mha/b_k",
                                            "mha/W_v", "mha/b_v", "mha/W_o", "mha/b_o"]
    assert mha.W_q.shape == (3, 6, 2) and mha.attention.shape == (None, 3, 4, 4)
    for p in mha.params:
        p.value = x64(*p.shape) * 0.5
    xv = x64(2, 4, 6)
    got = compiled_equals_eval(out, {x: xv})
    np.testing.assert_allclose(got, attention_ref(mha, xv, xv, causal), atol=1e-12)
    check_grads(out, {x: xv}, [x] + mha.params)


def test_causal_attention_never_looks_ahead():
    x = gc.placeholder((1, 5, 4), "float64", name="x")
    out = nn.MultiHeadAttention(2, causal=True)(x)
    a = x64(1, 5, 4)
    b = a.copy()
    b[0, 3:] += 10.0                      # change the future of positions 0..2
    ya, yb = out.eval({x: a}), out.eval({x: b})
    np.testing.assert_allclose(ya[0, :3], yb[0, :3], atol=1e-12)
    assert not np.allclose(ya[0, 3:], yb[0, 3:])
    with pytest.raises(gc.GraphcError, match="causal=True needs known sequence lengths"):
        nn.MultiHeadAttention(2, causal=True)(gc.placeholder((1, None, 4), name="y"))


def test_cross_attention_from_queries_to_keys_and_values():
    q = gc.placeholder((None, 3, 4), "float64", name="q")
    kv = gc.placeholder((None, 5, 6), "float64", name="kv")
    mha = nn.MultiHeadAttention(2)
    out = mha(q, kv)
    assert out.shape == (None, 3, 4) and mha.W_k.shape == (2, 6, 2)
    assert mha.attention.shape == (None, 2, 3, 5)
    qv, kvv = x64(2, 3, 4), x64(2, 5, 6)
    got = compiled_equals_eval(out, {q: qv, kv: kvv})
    np.testing.assert_allclose(got, attention_ref(mha, qv, kvv), atol=1e-12)
    check_grads(out, {q: qv, kv: kvv}, [q, kv, mha.W_k])


def test_attention_errors_name_the_problem():
    with pytest.raises(gc.GraphcError, match="does not split into 4 heads"):
        nn.MultiHeadAttention(4)(gc.placeholder((None, 3, 6), name="x"))
    with pytest.raises(gc.GraphcError, match="only one unknown size"):
        nn.MultiHeadAttention(2)(gc.placeholder((None, None, 6), name="y"))
    mha = nn.MultiHeadAttention(2)
    mha(gc.placeholder((None, 3, 6), name="z"))
    with pytest.raises(gc.GraphcError, match="built for D = 6"):
        mha(gc.placeholder((None, 3, 4), name="w"))


# Embedding ------------------------------------------------------------------------------

def test_embedding_is_a_gather_whose_gradient_adds_up_repeated_ids():
    ids = gc.placeholder((None, 4), "int64", name="ids")
    emb = nn.Embedding(6, 3, dtype="float64", name="emb")
    out = emb(ids)
    assert out.shape == (None, 4, 3) and out.dtype == np.float64
    assert [p.name for p in emb.params] == ["emb/E"] and emb.E.shape == (6, 3)
    assert "one_hot" not in {n.op for n in gc.Graph([out]).nodes}
    idv = np.array([[1, 1, 5, 0], [5, 1, 2, 2]])          # repeated ids, 3 and 4 unused
    got = compiled_equals_eval(out, {ids: idv})
    np.testing.assert_array_equal(got, emb.E.value[idv])
    check_grads(out, {ids: idv}, [emb.E])
    g = gc.grad(gc.sum(out), [emb.E])[0].eval({ids: idv})
    np.testing.assert_array_equal(g[:, 0], [1, 3, 2, 0, 0, 2])    # counts of each id


def test_embedding_refuses_float_ids():
    with pytest.raises(gc.GraphcError, match="ids must be integers"):
        nn.Embedding(4, 2)(gc.placeholder((None, 3), name="x"))


def test_attention_dropout_only_while_training():
    x = gc.placeholder((None, 3, 4), name="x")
    mha = nn.MultiHeadAttention(2, dropout=0.5)
    ops_train = {n.op for n in gc.Graph([mha(x)]).nodes}
    ops_eval = {n.op for n in gc.Graph([mha(x, training=False)]).nodes}
    assert "dropout_mask" in ops_train and "dropout_mask" not in ops_eval
