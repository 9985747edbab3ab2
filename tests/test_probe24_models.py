"""probe24: random models people write today, end to end through graphc.nn (a transformer
block, recurrent nets through time, conv stacks with BatchNorm and dropout, an MLP with
BatchNorm), weight decay, clipping, every optimizer: the interpreter, compiled, optimized,
checked and exported over several calls of two batch sizes; float16; saved and loaded.
GRAPHC_PROBE24=N runs N seeds of each.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import OPS, Graph, evaluate
from tests.helpers import load_module

SEEDS = int(os.environ.get("GRAPHC_PROBE24", "0"))


# random models people write, end to end through graphc.nn -------------------------------

def clip_by_global_norm(grads, max_norm):
    """PyTorch's clip_grad_norm_: every gradient times min(1, max_norm / (norm + 1e-6))."""
    norm = gc.sqrt(sum(gc.sum(gc.cast(g, "float64") * gc.cast(g, "float64")) for g in grads))
    scale = gc.minimum(max_norm / (norm + 1e-6), 1.0)
    return [g * gc.cast(scale, g.dtype) for g in grads]


def transformer(r, dtype):
    t, d, heads = int(r.choice([3, 5])), int(r.choice([4, 6, 8])), int(r.choice([1, 2]))
    classes = int(r.integers(2, 5))
    ids = gc.placeholder((None, t), str(r.choice(["int32", "int64", "uint8"])), "ids")
    pad = gc.placeholder((None, t), "bool", "pad")
    y = gc.placeholder((None,), "int64", "y")
    emb = nn.Embedding(7, d, dtype=dtype, seed=1)
    pos = gc.variable(r.standard_normal((t, d)).astype(dtype) * 0.1, name="pos")
    ln1, ln2, ln3 = nn.LayerNorm(name="ln1"), nn.LayerNorm(name="ln2"), nn.LayerNorm(affine=False)
    mha = nn.MultiHeadAttention(heads, causal=bool(r.random() < 0.5), seed=2,
                                dropout=float(r.choice([0.0, 0.2])))
    ff = nn.Sequential([nn.Dense(2 * d, str(r.choice(["gelu", "relu", "silu"]))),
                        nn.Dense(d)], seed=3)
    head = nn.Dense(classes, seed=4)
    h = emb(ids) + pos
    h = h + mha(ln1(h), key_padding_mask=pad, training=True)
    h = h + ff(ln2(h))
    pooled = gc.mean(ln3(h), axis=1) if r.random() < 0.5 else ln3(h)[:, 0]
    logits = head(pooled)
    per = gc.softmax_cross_entropy(logits, y)
    loss = gc.mean(per) if r.random() < 0.5 else gc.sum(per)
    layers = [emb, ln1, ln2, mha, ff, head]
    params = [p for m in layers for p in m.params if not p.name.endswith("b_k")] + [pos]

    def feeds(b, k):
        p = r.random((b, t)) < 0.3
        p[:, 0] = False
        return {ids: r.integers(0, 7, (b, t)).astype(ids.dtype), pad: p,
                y: r.integers(0, classes, b)}
    return [ids, pad, y], [loss, gc.argmax(logits, -1)], params, [], feeds


def recurrent(r, dtype):
    d, u, k = int(r.integers(2, 5)), int(r.integers(2, 5)), int(r.integers(1, 4))
    seqs = bool(r.random() < 0.5)
    x = gc.placeholder((None, None, d), dtype, "x")
    target = gc.placeholder((None, None, k) if seqs else (None, k), dtype, "target")
    kind = [nn.SimpleRNN, nn.LSTM, nn.GRU][int(r.integers(3))]
    rnn = kind(u, return_sequences=seqs, seed=5)
    head = nn.Dense(k, str(r.choice(["tanh", "linear"])), seed=6)
    pred = head(rnn(x))
    diff = pred - target
    loss = gc.mean(diff * diff) if r.random() < 0.5 else gc.sum(gc.abs(diff))
    lengths = [int(v) for v in r.choice([1, 2, 4], 4)]
    lengths.append(lengths[0])                      # the export's last call: a shape it has

    def feeds(b, k_):
        n = lengths[k_]
        return {x: r.standard_normal((b, n, d)).astype(dtype),
                target: r.standard_normal((b, n, k) if seqs else (b, k)).astype(dtype)}
    return [x, target], [loss, pred], rnn.params + head.params, [], feeds


def conv_stack(r, dtype):
    c, h, w = int(r.integers(1, 4)), int(r.choice([5, 6, 7, 9])), int(r.choice([5, 7, 8]))
    classes = int(r.integers(2, 5))
    stride = [1, 2, (1, 2), (2, 1)][int(r.integers(4))]
    padding = [0, 1, (1, 0), (0, 2)][int(r.integers(4))]
    x = gc.placeholder((None, c, h, w), dtype, "x")
    y = gc.placeholder((None,), str(r.choice(["int32", "int64"])), "y")
    # not a 1x1 kernel over 1 channel before BatchNorm: its gradient is 0 but for rounding
    # (the loss does not see W's scale per channel) and Adam/RMSProp step by that noise
    layers = [nn.Conv2D(int(r.choice([3, 4])), int(r.choice([1, 2, 3] if c > 1 else [2, 3])),
                        stride=stride, padding=padding, use_bias=False),
              nn.BatchNorm(momentum=float(r.choice([0.1, 0.5]))), nn.Activation("relu")]
    if r.random() < 0.5:
        layers.append(nn.Dropout(0.3, seed=7))
    layers += [nn.Conv2D(4, 2, padding=1, activation=str(r.choice(["relu", "tanh"])))]
    if r.random() < 0.5:
        layers.append(nn.MaxPool2D(2))
    layers += [nn.Flatten(), nn.Dense(classes)]
    model = nn.Sequential(layers, seed=8)
    logits = model(x, training=True)
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))

    def feeds(b, k):
        return {x: r.standard_normal((b, c, h, w)).astype(dtype),
                y: r.integers(0, classes, b).astype(y.dtype)}
    return [x, y], [loss, logits], model.params, model.state_updates, feeds


def mlp_batchnorm(r, dtype):
    d = int(r.integers(2, 6))
    x = gc.placeholder((None, d), dtype, "x")
    y = gc.placeholder((None, 1), str(r.choice(["bool", dtype])), "y")
    model = nn.Sequential([nn.Dense(5, use_bias=False), nn.BatchNorm(),
                           nn.Activation(str(r.choice(["relu", "tanh", "elu"]))),
                           nn.Dropout(0.25, seed=9), nn.Dense(1)], seed=10)
    logits = model(x, training=True)
    target = gc.cast(y, dtype) if y.dtype == bool else y
    loss = nn.binary_cross_entropy(logits, target, from_logits=True)

    def feeds(b, k):
        return {x: r.standard_normal((b, d)).astype(dtype),
                y: (r.random((b, 1)) < 0.5).astype(y.dtype)}
    return [x, y], [loss, gc.sigmoid(logits)], model.params, model.state_updates, feeds


MODELS = [transformer, recurrent, conv_stack, mlp_batchnorm]


def random_model_step(seed: int, dtype: str | None = None):
    """A random model of today (a transformer block, a recurrent net, a conv stack with
    BatchNorm and dropout, an MLP with BatchNorm), a loss with a reduction, maybe weight
    decay (an l2 term) and gradient clipping by global norm, any optimizer; the
    training-mode state updates (running statistics) too."""
    r = np.random.default_rng(seed)
    dtype = dtype or str(r.choice(["float32", "float64"], p=[0.3, 0.7]))
    inputs, outs, params, state, feeds = MODELS[seed % len(MODELS)](r, dtype)
    loss = outs[0]
    if r.random() < 0.5:
        loss = loss + nn.l2([p for p in params if p.ndim >= 2], 1e-3)
    grads = gc.grad(loss, params)
    if r.random() < 0.5:
        grads = clip_by_global_norm(grads, float(r.choice([0.1, 1.0, 100.0])))
    opt = [nn.SGD(0.05), nn.SGD(0.05, momentum=0.9), nn.Adam(0.01),
           nn.RMSProp(0.01)][int(r.integers(4))]
    updates = opt.pairs(params, grads) + state
    news = [u for _, u in updates[int(r.integers(2)):][::3]]    # new values as outputs too
    return inputs, [loss] + outs[1:] + news, updates, feeds, dtype


def random_ops(outs, updates) -> bool:
    g = Graph(outs + [u for _, u in updates])
    return any(n.op in OPS and OPS[n.op].random for n in g.nodes)


def run_model_seed(seed: int, folder, dtype: str | None = None) -> None:
    inputs, outs, updates, feeds, dtype = random_model_step(seed, dtype)
    variables = [v for v, _ in updates]
    calls = [feeds(b, k) for k, b in enumerate((3, 3, 1, 4, 3))]
    start = [v.value.copy() for v in variables]
    # float32: a conv before BatchNorm has a gradient of cancellations (~1e-4 of it rounds
    # differently in two orders), which RMSProp divides by its own small average
    tol = {"float64": dict(rtol=1e-8, atol=1e-9), "float32": dict(rtol=1e-2, atol=1e-3),
           "float16": dict(rtol=5e-2, atol=5e-3)}[dtype]
    results = {}
    modes = [("eval", None, None), ("plain", False, False), ("optimized", True, False),
             ("checked", True, True)]
    for mode, optimize, check in modes:
        for v, a in zip(variables, start):
            v.value = a.copy()
        got = []
        if mode == "eval":
            for fd in calls:
                vals = evaluate(outs + [u for _, u in updates], fd)
                for v, val in zip(variables, vals[len(outs):]):
                    v.value = val
                got.append((vals[:len(outs)], [v.value.copy() for v in variables]))
            results[mode] = got
            continue
        f = gc.function(inputs, outs, updates=updates, optimize=optimize, check_numerics=check)
        run, state = f, None
        for k, fd in enumerate(calls):
            if k == 3 and mode == "optimized":             # the rest through the export
                mod = load_module(f.export(os.path.join(str(folder), f"m{seed}.py"),
                                           *calls[3].values()), f"m{seed}")
                run, state = mod.run, mod.state
            outs_k = run(*fd.values())
            values = [(v.value if state is None else state[v.name]).copy() for v in variables]
            got.append((outs_k, values))
        results[mode] = got
    # the interpreter draws a dropout mask afresh per call; a Function's generator goes on
    ref = "plain" if random_ops(outs, updates) else "eval"
    for mode, got in results.items():
        for k, ((go, gv), (wo, wv)) in enumerate(zip(got, results[ref])):
            if mode == "eval" and ref != "eval" and k > 0:
                break
            what = f"seed {seed} {mode} against {ref}, call {k}"
            for g, w in zip(go, wo):
                assert g.shape == w.shape and g.dtype == w.dtype, what
                np.testing.assert_allclose(g, w, **tol, err_msg=what)
            for v, g, w in zip(variables, gv, wv):
                np.testing.assert_allclose(g, w, **tol, err_msg=f"{what} {v.name}")


@pytest.mark.parametrize("seed", range(SEEDS or 12))
def test_random_models_train_alike_evaluated_compiled_optimized_checked_exported(seed,
                                                                                  tmp_path):
    run_model_seed(seed, tmp_path)


@pytest.mark.parametrize("seed", range(SEEDS or 4))
def test_random_models_in_float16_train_alike(seed, tmp_path):
    """The same in float16 (the optimizers' state in float32), one seed per model kind."""
    run_model_seed(seed, tmp_path, "float16")


@pytest.mark.parametrize("seed", range(SEEDS) if SEEDS else [0, 1, 6, 10])   # 6: a conv
def test_random_models_saved_and_loaded_train_alike(seed, tmp_path):
    """gc.save of a random model's step (outputs, updates) and gc.load of it: the loaded graph
    compiled makes the same outputs and new values as the original evaluated (without
    dropout: a loaded graph starts its own generators)."""
    inputs, outs, updates, feeds, dtype = random_model_step(seed)
    if random_ops(outs, updates):
        pytest.skip("dropout: a loaded graph's generators start afresh")
    fd = feeds(3, 0)
    want = evaluate(outs + [u for _, u in updates], fd)
    loaded = gc.load(gc.save(outs, tmp_path / "step", updates=updates))
    placeholders = {n.name: n for n in Graph(list(loaded.outputs) + [u for _, u in loaded.updates]
                                             ).nodes if n.op == "placeholder"}
    f = gc.function([placeholders[x.name] for x in inputs], list(loaded.outputs),
                    updates=loaded.updates)
    got = list(f(*fd.values())) + [v.value for v, _ in loaded.updates]
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == "float64" else dict(rtol=1e-4, atol=1e-5)
    for k, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, **tol, err_msg=f"seed {seed} value {k}")
