"""probe22: the bugs probe21 left alone (check_numerics blaming step 0 for a fed NaN, eval
handing back the user's own feed, empty sequences, masks and initial states the nn layers
lacked, a hostile ONNX Resize) and a hostile probe of the newest parts (accumulating GEMM
steps, the generated per-plan entry, softmax cross-entropy by flat index); one test per bug
found, each failing before its fix.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import evaluate
from tests.helpers import load_module, numeric_grad


# check_numerics names the feed that holds a NaN ------------------------------------------

def test_check_numerics_names_the_feed_not_step_0(tmp_path):
    x = gc.placeholder((None, 3), name="pixels")
    w = gc.placeholder((3,), name="w")
    f = gc.function([x, w], gc.exp(x) * 2 + w, check_numerics=True)
    ok = np.ones((2, 3), np.float32)
    f(ok, np.ones(3, np.float32))
    bad = ok.copy()
    bad[1, 2] = np.nan
    with pytest.raises(gc.GraphcError, match=r"feed for placeholder 'pixels' \(\?, 3\) "
                                             r"float32 \(built at .*\) holds NaN") as e:
        f(bad, np.ones(3, np.float32))
    assert "step 0" not in str(e.value) and "test_probe22.py" in str(e.value)
    with pytest.raises(gc.GraphcError, match="placeholder 'w' .* holds Inf"):
        f(ok, np.array([1, np.inf, 1], np.float32))
    with pytest.raises(gc.GraphcError, match="step 0 produced Inf"):   # a step's own still
        f(ok * 100, np.ones(3, np.float32))
    path = f.export(tmp_path / "checked.py")
    mod = load_module(path, "checked")
    with pytest.raises(Exception, match="feed for placeholder 'pixels'.* holds NaN"):
        mod.run(bad, np.ones(3, np.float32))


def test_check_numerics_names_a_variable_holding_inf_even_read_in_a_loop_only():
    xs = gc.placeholder((None, 2, 3), "float64", name="xs")
    w = gc.variable(np.eye(3), name="W")
    h_last, _ = gc.scan(lambda h, x: (gc.tanh(h @ w + x),) * 2, gc.constant(np.zeros((2, 3))),
                        xs)
    f = gc.function([xs], h_last, check_numerics=True)
    f(np.ones((3, 2, 3)))
    w.value = np.full((3, 3), np.inf)
    with pytest.raises(gc.GraphcError, match=r"variable 'W' \(3, 3\) float64 \(built at "
                                             r"test_probe22.py:\d+\) holds Inf"):
        f(np.ones((3, 2, 3)))


def test_check_numerics_integer_feeds_and_loops_unchanged():
    xs = gc.placeholder((None, 2), dtype="float64", name="xs")
    k = gc.placeholder((), dtype="int64", name="k")
    _, ys = gc.scan(lambda h, x: (h + gc.log(x), h), gc.constant(np.zeros(2)), xs)
    f = gc.function([xs, k], ys * gc.cast(k, "float64"), check_numerics=True)
    assert f(np.ones((3, 2)), 2).shape == (3, 2)
    with pytest.raises(gc.GraphcError, match="produced NaN"):      # log(-1) inside the body
        f(-np.ones((3, 2)), 2)


# node.eval never hands back the user's array -----------------------------------------------

@pytest.mark.parametrize("make", [lambda x: x, lambda x: gc.reshape(x, (3, 2)),
                                  lambda x: gc.transpose(x), lambda x: x[0],
                                  lambda x: gc.cast(x, "float32")])
def test_eval_result_does_not_alias_the_feed(make):
    x = gc.placeholder((2, 3), name="x")
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    keep = a.copy()
    out = make(x)
    for r in (out.eval({x: a}), evaluate([out], {x: a})[0],
              gc.function([x], out)(a), gc.function([x], out, optimize=False)(a)):
        assert not np.shares_memory(r, a)
        r[...] = -1
        np.testing.assert_array_equal(a, keep)


# empty sequences: a scan of zero steps, RNN layers over time 0 -----------------------------

def test_scan_of_zero_steps_with_shapes_known_at_run_time(tmp_path):
    xs = gc.placeholder((None, None, 3), name="xs", dtype="float64")
    h0 = gc.placeholder((None, 3), name="h0", dtype="float64")
    w = gc.variable(np.eye(3) * 0.5, name="W")
    h_last, hs = gc.scan(lambda h, x: (gc.tanh(h @ w + x),) * 2, h0, xs)
    g_w, g_h = gc.grad(gc.sum(h_last) + gc.sum(hs), [w, h0])
    outs = [h_last, hs, g_w, g_h]
    b = np.full((2, 3), 0.25)
    for t in (0, 3):
        a = np.linspace(-1, 1, t * 6).reshape(t, 2, 3)
        want = evaluate(outs, {xs: a, h0: b})
        if t == 0:
            assert want[1].shape == (0, 2, 3)
            np.testing.assert_array_equal(want[0], b)
            np.testing.assert_array_equal(want[2], np.zeros((3, 3)))
            np.testing.assert_array_equal(want[3], np.ones((2, 3)))
        for fn in (gc.function([xs, h0], outs), gc.function([xs, h0], outs, optimize=False)):
            for got, ref in zip(fn(a, b), want):
                assert got.shape == ref.shape
                np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    fn = gc.function([xs, h0], outs)
    fn(np.zeros((0, 2, 3)), b)
    mod = load_module(fn.export(tmp_path / "empty_scan.py"), "empty_scan")
    got = mod.run(np.zeros((0, 2, 3)), b)
    for g, w in zip(got, evaluate(outs, {xs: np.zeros((0, 2, 3)), h0: b})):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("layer", [nn.SimpleRNN, nn.LSTM, nn.GRU])
def test_rnn_layers_take_an_empty_sequence(layer):
    x = gc.placeholder((None, None, 3), name="x", dtype="float64")
    rnn = layer(4, return_sequences=True, return_state=True, seed=0)
    outs = list(rnn(x))
    loss = gc.sum(outs[0]) + gc.sum(outs[1])
    grads = gc.grad(loss, rnn.params)
    a = np.zeros((2, 0, 3))
    want = evaluate(outs + grads, {x: a})
    assert want[0].shape == (2, 0, 4)
    for state in want[1:len(outs)]:
        np.testing.assert_array_equal(state, np.zeros((2, 4)))
    for g in want[len(outs):]:
        np.testing.assert_array_equal(g, 0 * g)
    got = gc.function([x], outs + grads)(a)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


# initial states of the recurrent layers (PyTorch's h0, c0) --------------------------------

def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_rnn(kind, x, w_ih, w_hh, b_ih, b_hh, h, c=None):
    """PyTorch's formulas, step by step: the sequence of h and the final (h, c)."""
    hs = []
    u = h.shape[1]
    for t in range(x.shape[1]):
        xp, hp = x[:, t] @ w_ih + b_ih, h @ w_hh + b_hh
        if kind == "lstm":
            z = xp + hp
            i, f, g, o = (z[:, k * u:(k + 1) * u] for k in range(4))
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        elif kind == "gru":
            r = sigmoid(xp[:, :u] + hp[:, :u])
            z = sigmoid(xp[:, u:2 * u] + hp[:, u:2 * u])
            n = np.tanh(xp[:, 2 * u:] + r * hp[:, 2 * u:])
            h = (1 - z) * n + z * h
        else:
            h = np.tanh(xp + hp)
        hs.append(h)
    return np.stack(hs, 1) if hs else np.zeros(h.shape[:1] + (0, u)), h, c


@pytest.mark.parametrize("layer", [nn.SimpleRNN, nn.LSTM, nn.GRU])
def test_rnn_initial_state_values_and_gradients(layer):
    rng = np.random.default_rng(3)
    x = gc.placeholder((None, None, 3), name="x", dtype="float64")
    h0 = gc.placeholder((None, 4), name="h0", dtype="float64")
    c0 = gc.placeholder((None, 4), name="c0", dtype="float64")
    rnn = layer(4, return_sequences=True, return_state=True, seed=1)
    lstm = layer is nn.LSTM
    outs = list(rnn(x, initial_state=(h0, c0) if lstm else h0))
    feeds = {x: rng.standard_normal((2, 5, 3)), h0: rng.standard_normal((2, 4)),
             c0: rng.standard_normal((2, 4))}
    weights = [v.data[0] for v in (rnn.W_ih, rnn.W_hh, rnn.b_ih, rnn.b_hh)]
    for v in (rnn.b_ih, rnn.b_hh):
        v.data[0][...] = rng.standard_normal(v.shape) * 0.1
    hs, h, c = numpy_rnn(rnn.kind, feeds[x], *weights, feeds[h0], feeds[c0] if lstm else None)
    want = [hs, h] + ([c] if lstm else [])
    fn = gc.function([x, h0, c0], outs)
    for got, ref in zip(fn(*feeds.values()), want):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    r = [rng.standard_normal(w.shape) for w in want]
    loss = sum(gc.sum(o * gc.constant(k)) for o, k in zip(outs, r))
    starts = [h0, c0] if lstm else [h0]
    grads = gc.function([x, h0, c0], gc.grad(loss, starts + [x]))(*feeds.values())
    for leaf, g in zip(starts + [x], grads):
        arr = feeds[leaf]

        def cost():
            hs, h, c = numpy_rnn(rnn.kind, feeds[x], *weights, feeds[h0],
                                 feeds[c0] if lstm else None)
            return sum(float(np.sum(w * k)) for w, k in zip([hs, h, c], r))
        np.testing.assert_allclose(g, numeric_grad(lambda _: cost(), arr), rtol=1e-6, atol=1e-8)


def test_rnn_initial_state_shared_by_the_batch_and_refused_when_wrong():
    x = gc.placeholder((None, 3, 2), name="x", dtype="float64")
    lstm = nn.LSTM(4, return_state=True, seed=0)
    h0 = gc.variable(np.full((1, 4), 0.5), name="h0")        # one learned state for every example
    c0 = gc.variable(np.zeros((1, 4)), name="c0")
    out, h, c = lstm(x, initial_state=[h0, c0])
    a = np.random.default_rng(0).standard_normal((3, 3, 2))
    weights = [v.data[0] for v in (lstm.W_ih, lstm.W_hh, lstm.b_ih, lstm.b_hh)]
    _, h_want, _ = numpy_rnn("lstm", a, *weights, np.full((3, 4), 0.5), np.zeros((3, 4)))
    np.testing.assert_allclose(gc.function([x], h)(a), h_want, rtol=1e-12)
    g = gc.function([x], gc.grad(gc.sum(h), h0))(a)
    assert g.shape == (1, 4)
    for bad, match in [((h0,), "initial_state is h0 and c0, got 1"),
                       ((gc.variable(np.zeros((2, 5))), c0), r"h0 must be \(batch, 4\)"),
                       ((gc.variable(np.zeros(4)), c0), r"h0 must be .* got \(4,\)")]:
        with pytest.raises(gc.GraphcError, match=match) as e:
            lstm(x, initial_state=bad)
        assert "test_probe22.py" in str(e.value)
    with pytest.raises(gc.GraphcError, match="Dense takes no argument 'initial_state'"):
        nn.Dense(3)(x, initial_state=h0)


# ONNX Resize with hostile scales -----------------------------------------------------------

def resize_model(scales):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(scales, np.float32), "scales"),
             numpy_helper.from_array(np.zeros(0, np.float32), "roi")]
    node = helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode="linear", name="up")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                             opset_imports=[onnx.helper.make_opsetid("", 18)])


@pytest.mark.parametrize("scales, match", [
    ([1, 1, 1e6, 1e6], r"node 'up' \(Resize\): Resize of \[1, 1, 8, 8\] to \[1, 1, 8000000, "
                       r"8000000\] float32 needs .* GiB, more than this machine's memory"),
    ([1, 1, 1e9, 1], "more than this machine's memory"),
    ([1, 1, -1, 2], r"node 'up' \(Resize\): Resize: scales must be positive finite numbers"),
    ([1, 1, np.nan, 2], "positive finite"), ([1, 1, np.inf, 2], "positive finite")])
def test_onnx_resize_refuses_hostile_scales_at_once(scales, match):
    import graphc.onnx
    with pytest.raises(gc.GraphcError, match=match):
        graphc.onnx.load(resize_model(scales))
    model = graphc.onnx.load(resize_model([1, 1, 2, 1.5]))      # a real one still imports
    assert model.outputs["y"].shape == (1, 1, 16, 12)


# MultiHeadAttention masks (PyTorch's attn_mask / key_padding_mask) -------------------------

def numpy_attention(mha, q, kv, attn_mask=None, padding=None, causal=False):
    """PyTorch's masked attention: a True (bool) entry may not attend (-inf), a float mask
    is added; padding (B, S) masks keys per example."""
    w = {n: getattr(mha, n).data[0] for n in ("W_q", "W_k", "W_v", "W_o", "b_q", "b_k", "b_v",
                                               "b_o")}
    qh = (q[:, None] @ w["W_q"] + w["b_q"]) / np.sqrt(mha.d_head)
    kh = kv[:, None] @ w["W_k"] + w["b_k"]
    vh = kv[:, None] @ w["W_v"] + w["b_v"]
    s = qh @ np.swapaxes(kh, -1, -2)                        # (B, H, Tq, Tk)
    b, h, tq, tk = s.shape
    if causal:
        s = np.where(np.tril(np.ones((tq, tk), bool)), s, -np.inf)
    if attn_mask is not None:
        m = attn_mask.reshape(b, h, tq, tk) if attn_mask.ndim == 3 else attn_mask
        s = np.where(m, -np.inf, s) if m.dtype == bool else s + m
    if padding is not None:
        s = np.where(padding[:, None, None, :], -np.inf, s)
    e = np.exp(s - s.max(-1, keepdims=True))
    a = e / e.sum(-1, keepdims=True)
    return np.sum((a @ vh) @ w["W_o"], axis=1) + w["b_o"]


def test_attention_masks_match_numpy_compiled_and_eval():
    rng = np.random.default_rng(5)
    b, tq, tk, d, heads = 3, 4, 5, 8, 2
    q = gc.placeholder((None, tq, d), name="q", dtype="float64")
    kv = gc.placeholder((None, tk, d), name="kv", dtype="float64")
    pad = gc.placeholder((None, tk), name="pad", dtype="bool")
    feeds = {q: rng.standard_normal((b, tq, d)), kv: rng.standard_normal((b, tk, d)),
             pad: rng.random((b, tk)) < 0.3}
    feeds[pad][:, 0] = False                                  # every query sees a key
    bool_mask = rng.random((tq, tk)) < 0.3
    bool_mask[:, 1] = False
    float_mask = rng.standard_normal((tq, tk))
    per_head = rng.random((b * heads, tq, tk)) < 0.3
    per_head[:, :, 2] = False
    cases = [dict(attn_mask=bool_mask), dict(attn_mask=float_mask),
             dict(key_padding_mask=pad), dict(attn_mask=per_head),
             dict(attn_mask=gc.constant(float_mask), key_padding_mask=pad)]
    for k, kw in enumerate(cases):
        mha = nn.MultiHeadAttention(heads, seed=k)
        out = mha(q, kv, **kw)
        for name in ("b_q", "b_k", "b_v", "b_o"):
            v = getattr(mha, name)
            v.data[0][...] = rng.standard_normal(v.shape) * 0.1
        m = kw.get("attn_mask")
        m = m.data if isinstance(m, gc.Node) else m
        want = numpy_attention(mha, feeds[q], feeds[kv], m,
                               feeds[pad] if "key_padding_mask" in kw else None)
        np.testing.assert_allclose(out.eval(feeds), want, rtol=1e-10, atol=1e-12)
        got = gc.function([q, kv, pad], out)(*feeds.values())
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_attention_mask_with_causal_and_self_attention_gradients():
    rng = np.random.default_rng(7)
    t, d = 4, 4
    x = gc.placeholder((2, t, d), name="x", dtype="float64")
    pad = np.array([[False, False, True, True], [False, False, False, True]])
    mha = nn.MultiHeadAttention(2, causal=True, seed=3)
    out = mha(x, key_padding_mask=pad)
    xa = rng.standard_normal((2, t, d))
    np.testing.assert_allclose(out.eval({x: xa}), numpy_attention(mha, xa, xa, None, pad,
                                                                  causal=True), rtol=1e-10)
    r = rng.standard_normal((2, t, d))
    g = gc.function([x], gc.grad(gc.sum(out * gc.constant(r)), x))(xa)

    def cost():
        return float(np.sum(numpy_attention(mha, xa, xa, None, pad, causal=True) * r))
    np.testing.assert_allclose(g, numeric_grad(lambda _: cost(), xa), rtol=1e-6, atol=1e-8)


def test_attention_mask_refusals_name_the_layer_and_line():
    x = gc.placeholder((None, 4, 8), name="x")
    mha = nn.MultiHeadAttention(2, name="att")
    for kw, match in [(dict(attn_mask=np.zeros((4, 5), bool)), r"attn_mask \(4, 5\) does not "
                                                               r"fit the scores"),
                      (dict(attn_mask=np.zeros((4, 4), np.int64)), "bool .* or float"),
                      (dict(key_padding_mask=np.zeros((2, 3), bool)), r"\(batch, key\)"),
                      (dict(key_padding_mask=np.zeros((2, 2, 4), bool)), r"\(batch, key\)"),
                      (dict(attn_mask=np.zeros((1, 4, 4), bool)),   # PyTorch refuses too
                       r"attn_mask \(1, 4, 4\) does not fit"),
                      (dict(mask=np.zeros((4, 4), bool)), "takes no argument 'mask'")]:
        with pytest.raises(gc.GraphcError, match=match) as e:
            mha(x, **kw)
        assert "test_probe22.py" in str(e.value)


# random training steps: GEMM updates, repeated fused forms, cross-entropy by flat index ----

SEEDS = int(os.environ.get("GRAPHC_PROBE22", "0"))
MODES = ((True, False), (False, False), (True, True))       # (optimize, check_numerics)


def interpreted(calls, outs, updates, variables) -> list:
    """The interpreter's (outputs, variables after) for each call, one after another."""
    want = []
    for fd in calls:
        vals = evaluate(outs + [u for _, u in updates], fd)
        for v, val in zip(variables, vals[len(outs):]):
            v.value = val
        want.append((vals[:len(outs)], [v.value.copy() for v in variables]))
    return want


def random_step(seed: int):
    """A random MLP training step: equal-width hidden layers (the same fused forms again and
    again: stamped), activations, a softmax cross-entropy over labels of a random int dtype
    (or mse), an optimizer with state (SGD with momentum: GEMM updates with beta; Adam;
    RMSProp), a weight read twice, an extra output; (inputs, outputs, updates, variables,
    feeds(batch))."""
    r = np.random.default_rng(seed)
    dtype = str(r.choice(["float32", "float64"]))
    width, depth = int(r.choice([3, 8, 16])), int(r.integers(1, 5))
    d_in, classes = int(r.integers(2, 12)), int(r.integers(2, 7))
    ldt = str(r.choice(["int8", "uint8", "int16", "int32", "uint32", "int64", "uint64"]))
    x = gc.placeholder((None, d_in), dtype, name="x")
    y = gc.placeholder((None,), ldt, name="y")
    model_layers = [nn.Dense(width, str(r.choice(["relu", "tanh", "gelu", "sigmoid",
                                                  "leaky_relu", "silu"])))
                    for _ in range(depth)] + [nn.Dense(classes)]
    model = nn.Sequential(model_layers, seed=seed)
    logits = model(x)
    if r.random() < 0.75:
        loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    else:
        loss = gc.mean((gc.softmax(logits) - gc.one_hot(y, classes, dtype)) ** 2)
    w0 = model.params[0]
    if r.random() < 0.5:                      # a weight read twice: an L2 term
        loss = loss + 0.01 * gc.sum(w0 * w0)
    opt = [nn.SGD(0.1, momentum=float(r.choice([0.0, 0.9]))), nn.Adam(0.01),
           nn.RMSProp(0.01)][int(r.integers(3))]
    updates = opt.updates(loss, model.params)
    outs = [loss, gc.argmax(logits, axis=-1)]
    variables = [v for v, _ in updates]

    def feeds(batch):
        return {x: r.standard_normal((batch, d_in)).astype(dtype),
                y: r.integers(0, classes, batch).astype(ldt)}
    return [x, y], outs, updates, variables, feeds, dtype


def run_step_seed(seed: int, folder) -> None:
    inputs, outs, updates, variables, feeds, dtype = random_step(seed)
    calls = [feeds(b) for b in (4, 4, 1, 4, 1)]
    start = [v.value.copy() for v in variables]
    want = interpreted(calls, outs, updates, variables)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == "float64" else dict(rtol=2e-4, atol=2e-5)
    for optimize, check in MODES:
        for v, a in zip(variables, start):
            v.value = a.copy()
        f = gc.function(inputs, outs, updates=updates, optimize=optimize, check_numerics=check)
        run, state = f, None
        for k, (fd, (wo, wv)) in enumerate(zip(calls, want)):
            if k == 3 and optimize and not check:      # the rest through the export
                mod = load_module(f.export(os.path.join(str(folder), f"s{seed}.py"),
                                           *calls[4].values()), f"s{seed}")
                run, state = mod.run, mod.state
            got = run(*fd.values())
            what = f"seed {seed} optimize={optimize} check={check} call {k}"
            np.testing.assert_allclose(got[0], wo[0], **tol, err_msg=what)
            if dtype == "float64":
                np.testing.assert_array_equal(got[1], wo[1], err_msg=what)
            for v, b in zip(variables, wv):
                value = v.value if state is None else state[v.name]
                np.testing.assert_allclose(value, b, **tol, err_msg=f"{what} {v.name}")


@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_random_training_steps_agree_compiled_optimized_checked_exported(seed, tmp_path,
                                                                         monkeypatch):
    from graphc.runtime import blas
    monkeypatch.setattr(blas, "MIN_WORK", 0 if seed % 2 else blas.MIN_WORK)   # GEMM for all
    run_step_seed(seed, tmp_path)


def random_sequence_step(seed: int):
    """A random sequence model step: maybe attention with a key padding mask (fed) and an
    attn_mask, then a recurrent layer with maybe an initial state (fed, or a learned (1, u)
    variable), a dense head, softmax cross-entropy, Adam or SGD; sequences of any length
    (time 0 too) when there is no attention."""
    r = np.random.default_rng(seed)
    dtype = str(r.choice(["float32", "float64"]))
    d, u, classes = int(r.choice([4, 6])), int(r.integers(2, 6)), int(r.integers(2, 5))
    attend = bool(r.random() < 0.5)
    t = 5 if attend else None
    x = gc.placeholder((None, t, d), dtype, name="x")
    y = gc.placeholder((None,), "int64", name="y")
    pad = gc.placeholder((None, 5), "bool", name="pad")
    h0 = gc.placeholder((None, u), dtype, name="h0")
    inputs, seq = [x, y], x
    layers = []
    if attend:
        mha = nn.MultiHeadAttention(int(r.choice([1, 2])), causal=bool(r.random() < 0.5),
                                    seed=seed)
        mask = np.triu(np.ones((5, 5), bool), int(r.integers(1, 3)))
        seq = seq + mha(seq, key_padding_mask=pad,
                        attn_mask=mask if r.random() < 0.5 else np.where(mask, -2.0, 0.0))
        inputs.append(pad)
        layers.append(mha)
    kind = [nn.SimpleRNN, nn.LSTM, nn.GRU][int(r.integers(3))]
    rnn = kind(u, return_state=True, seed=seed)
    how = str(r.choice(["none", "fed", "learned"]))
    state = None
    if how == "fed":
        state, _ = h0, inputs.append(h0)
    elif how == "learned":
        state = gc.variable(np.full((1, u), 0.1, dtype), name="h_start")
    if state is not None and kind is nn.LSTM:
        state = (state, state * 0.5)
    out = rnn(seq, initial_state=state)
    head = nn.Dense(classes, seed=seed)
    loss = gc.mean(gc.softmax_cross_entropy(head(out[1]), y))
    layers += [rnn, head]
    # b_k's gradient is 0 but for rounding (a softmax does not see a shift of every key's
    # score): Adam would amplify that noise, which is not the same in two evaluation orders
    params = [p for layer in layers for p in layer.params if not p.name.endswith("b_k")]
    if how == "learned":
        params.append(state[0] if isinstance(state, tuple) else state)
    opt = nn.Adam(0.05) if r.random() < 0.5 else nn.SGD(0.1, momentum=0.9)
    updates = opt.updates(loss, params)
    lengths = [5] * 4 if attend else [int(v) for v in r.choice([0, 1, 3, 4], 4)]

    def feeds(batch, k):
        out = {x: r.standard_normal((batch, lengths[k], d)).astype(dtype),
               y: r.integers(0, classes, batch)}
        if attend:
            p = r.random((batch, 5)) < 0.3
            p[:, 0] = False
            out[pad] = p
        if how == "fed":
            out[h0] = r.standard_normal((batch, u)).astype(dtype)
        return out
    return inputs, [loss], updates, [v for v, _ in updates], feeds, dtype


def run_sequence_seed(seed: int, folder) -> None:
    inputs, outs, updates, variables, feeds, dtype = random_sequence_step(seed)
    calls = [feeds(b, k) for k, b in enumerate((3, 3, 1, 3))]
    start = [v.value.copy() for v in variables]
    want = interpreted(calls, outs, updates, variables)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == "float64" else dict(rtol=5e-4, atol=5e-5)
    for optimize, check in MODES:
        for v, a in zip(variables, start):
            v.value = a.copy()
        f = gc.function(inputs, outs, updates=updates, optimize=optimize, check_numerics=check)
        run, state = f, None
        for k, (fd, (wo, wv)) in enumerate(zip(calls, want)):
            if k == 3 and optimize and not check:
                mod = load_module(f.export(os.path.join(str(folder), f"q{seed}.py"),
                                           *fd.values()), f"q{seed}")
                run, state = mod.run, mod.state
            what = f"seed {seed} optimize={optimize} check={check} call {k}"
            np.testing.assert_allclose(run(*fd.values())[0], wo[0], **tol, err_msg=what)
            for v, b in zip(variables, wv):
                value = v.value if state is None else state[v.name]
                np.testing.assert_allclose(value, b, **tol, err_msg=f"{what} {v.name}")


@pytest.mark.parametrize("seed", range(SEEDS or 8))
def test_random_sequence_models_with_masks_and_states_agree_everywhere(seed, tmp_path):
    run_sequence_seed(seed, tmp_path)


def one_node_model(op, x_shape, consts, inputs):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    node = helper.make_node(op, inputs, ["y"], name="n")
    return helper.make_model(helper.make_graph([node], "g", [x], [y], inits),
                             opset_imports=[onnx.helper.make_opsetid("", 20)])


@pytest.mark.parametrize("op, x_shape, consts, inputs", [
    ("DFT", [1, 8, 2], {"n": np.array(10**12), "axis": np.array(1)}, ["x", "n", "axis"]),
    ("STFT", [1, 10**7, 1], {"step": np.array(1), "size": np.array(10**6)},
     ["x", "step", "", "size"]),
    ("Col2Im", [1, 1, 10**6], {"image": np.array([10**4, 10**4]), "block": np.array([1, 1])},
     ["x", "image", "block"]),
    ("AffineGrid", [1, 2, 3], {"size": np.array([1, 1, 10**6, 10**6])}, ["x", "size"])])
def test_onnx_ops_with_constant_matrices_refuse_what_cannot_fit(op, x_shape, consts, inputs):
    import graphc.onnx
    with pytest.raises(gc.GraphcError, match=rf"node 'n' \({op}\): {op} .* needs .* GiB, more "
                                             r"than this machine's memory"):
        graphc.onnx.load(one_node_model(op, x_shape, consts, inputs))
