"""Function.export as a demanding user tries it: graphc.nn models with their optimizers, odd
outputs and feeds, paths, several modules in one process, threads; each module's values against
the Function's, call by call (the module is imported in this process: it needs only NumPy, which
tests/test_export.py checks in a graphc-free interpreter)."""
from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest

import graphc as gc
from graphc import nn

_count = [0]


def import_file(path):
    _count[0] += 1
    spec = importlib.util.spec_from_file_location(f"exported_probe_{_count[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def follows(f, module, calls, rtol=1e-5):
    """The module gives what f gives on each call, and its state ends as f's variables."""
    for args in calls:
        want, got = as_list(f(*args)), as_list(module.run(*args))
        assert len(want) == len(got)
        for w, g in zip(want, got):
            assert w.dtype == g.dtype and w.shape == g.shape
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * 0.1)
    variables = {v.name: v for v in f.graph.variables}
    assert sorted(module.state) == sorted(variables)
    for name, value in module.state.items():
        np.testing.assert_allclose(value, variables[name].value, rtol=rtol, atol=rtol * 0.1,
                                   err_msg=name)


def training_step(model, x, y, optimizer):
    pred = model(x, training=True)
    loss = gc.mean(gc.softmax_cross_entropy(pred, y))
    updates = optimizer.updates(loss, model.params) + list(model.state_updates)
    return gc.function([x, y], [loss, pred], updates=updates)


MODELS = {
    "mlp_dropout_sgd": (lambda: nn.Sequential([nn.Dense(16, "relu"), nn.Dropout(0.3),
                                               nn.Dense(4)], seed=0),
                        (6, 10), "float32", lambda: nn.SGD(0.1)),
    "mlp_batchnorm_momentum": (lambda: nn.Sequential([nn.Dense(16), nn.BatchNorm(),
                                                      nn.Activation("relu"), nn.Dense(4)],
                                                     seed=1),
                               (6, 10), "float32", lambda: nn.SGD(0.1, momentum=0.9)),
    "cnn_batchnorm_adam": (lambda: nn.Sequential([nn.Conv2D(4, 3, padding=1, activation="relu"),
                                                  nn.BatchNorm(), nn.MaxPool2D(2), nn.Flatten(),
                                                  nn.Dense(4)], seed=2),
                           (5, 1, 8, 8), "float32", lambda: nn.Adam(1e-2)),
    "embedding_layernorm_rmsprop": (lambda: nn.Sequential([nn.Embedding(10, 6), nn.LayerNorm(),
                                                           nn.Flatten(), nn.Dense(4)], seed=3),
                                    (5, 3), "int64", lambda: nn.RMSProp(1e-2)),
    "lstm_adam": (lambda: nn.Sequential([nn.LSTM(8), nn.Dense(4)], seed=4),
                  (5, 6, 3), "float32", lambda: nn.Adam(1e-2)),
    "gru_rnn_momentum": (lambda: nn.Sequential([nn.GRU(8, return_sequences=True),
                                                nn.SimpleRNN(5), nn.Dense(4)], seed=5),
                         (5, 6, 3), "float32", lambda: nn.SGD(0.1, momentum=0.5)),
    "attention_dropout_adam": (lambda: nn.Sequential([nn.MultiHeadAttention(2, causal=True,
                                                                            dropout=0.1),
                                                      nn.LayerNorm(), nn.Flatten(),
                                                      nn.Dense(4)], seed=6),
                               (3, 5, 8), "float32", lambda: nn.Adam(1e-2)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_nn_training_steps_follow_the_function(name, tmp_path):
    make_model, shape, dtype, make_optimizer = MODELS[name]
    rng = np.random.default_rng(0)
    x = gc.placeholder((None,) + shape[1:], dtype=dtype, name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    f = training_step(make_model(), x, y, make_optimizer())

    def batch():
        xb = rng.integers(0, 10, shape) if dtype == "int64" \
            else rng.standard_normal(shape).astype(dtype)
        return [xb, rng.integers(0, 4, shape[0])]

    f(*batch())
    module = import_file(f.export(tmp_path / "step.py"))
    follows(f, module, [batch() for _ in range(3)])


def test_a_call_in_another_thread_waits_for_the_running_one(tmp_path):
    """The plan's buffers are shared by calls, so the module's run holds a lock as the
    Function's call does: thread B's call, made while thread A is inside the plan, neither
    overwrites A's buffers nor gets A's values."""
    x = gc.placeholder((None, 4), dtype="float64", name="x")
    W = gc.variable(np.random.default_rng(0).standard_normal((4, 4)), name="W")
    f = gc.function([x], gc.sum(gc.tanh(x @ W) * 2.0, axis=1))
    a, b = np.ones((3, 4)), -np.arange(12.0).reshape(3, 4)
    f(a)
    module = import_file(f.export(tmp_path / "step.py"))
    tanh, inside, b_done = module.xp.tanh, threading.Event(), threading.Event()

    def paused_tanh(*args, **kwargs):           # A stops inside the plan until B is done
        if threading.current_thread().name == "A":
            inside.set()
            b_done.wait(timeout=0.5)          # with the lock, B cannot finish meanwhile
        return tanh(*args, **kwargs)

    module.xp.tanh = paused_tanh
    got = {}

    def call(name, feed):
        if name == "B":
            inside.wait(timeout=5)
        got[name] = module.run(feed)
        if name == "B":
            b_done.set()

    threads = [threading.Thread(target=call, args=(n, v), name=n) for n, v in (("A", a),
                                                                               ("B", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "A" in got and "B" in got
    np.testing.assert_allclose(got["A"], f(a), rtol=1e-12)
    np.testing.assert_allclose(got["B"], f(b), rtol=1e-12)


def test_export_into_a_folder_that_does_not_exist_yet(tmp_path):
    """As the README's `step.export("out/step.py")`: the folders are made (a path with spaces
    too), the module and its .npz land there and run."""
    x = gc.placeholder((None, 3), dtype="float32", name="x")
    W = gc.variable(np.ones(3, np.float32), name="W")
    f = gc.function([x], x * W, updates=[(W, W * 2)])
    f(np.ones((2, 3), np.float32))
    path = f.export(tmp_path / "new folder" / "out" / "my step.py")
    assert (tmp_path / "new folder" / "out" / "my step.npz").exists()
    follows(f, import_file(path), [[np.full((2, 3), 2.0, np.float32)]])


def test_every_shape_the_function_ran_is_exported(tmp_path):
    """A training loop's batches of 6 and its last batch of 4, and an inference call on 1:
    the module runs each of these shapes (the plans the Function holds), with one `state`
    and one generator per random op across them; another shape is refused, naming the shapes
    it runs."""
    model = nn.Sequential([nn.Dense(8, "relu"), nn.Dropout(0.5), nn.Dense(3)], seed=0)
    x = gc.placeholder((None, 5), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    f = training_step(model, x, y, nn.Adam(1e-2))
    rng = np.random.default_rng(0)

    def batch(n):
        return [rng.standard_normal((n, 5)).astype(np.float32), rng.integers(0, 3, n)]

    for n in (6, 4, 1):
        f(*batch(n))
    module = import_file(f.export(tmp_path / "step.py"))
    follows(f, module, [batch(n) for n in (4, 6, 1, 6, 4)])
    with pytest.raises(Exception, match=r"feeds x \(5, 5\), y \(5,\): this module runs "
                                        r"x \(1, 5\), y \(1,\); x \(4, 5\), y \(4,\); "
                                        r"x \(6, 5\), y \(6,\)") as e:
        module.run(*batch(5))
    assert type(e.value).__name__ == "GraphcError"     # the module's own (no graphc there)


def test_plans_of_a_recurrent_model_for_two_batch_sizes(tmp_path):
    """Each plan's loop body is its own plan too; a plan made only to show `source` (its loop
    never ran) is left out rather than refused."""
    model = nn.Sequential([nn.GRU(6, return_sequences=True), nn.LSTM(4), nn.Dense(2)], seed=7)
    x = gc.placeholder((None, 5, 3), name="x")
    f = gc.function([x], model(x, training=False))
    assert "def run(" in f.source                  # a plan for batch 1, never run
    rng = np.random.default_rng(3)
    data = {n: [rng.standard_normal((n, 5, 3)).astype(np.float32)] for n in (2, 3)}
    f(*data[2])
    f(*data[3])
    module = import_file(f.export(tmp_path / "step.py"))
    follows(f, module, [data[2], data[3], data[2]])
    assert sorted(module.PLANS) == [((2, 5, 3),), ((3, 5, 3),)]


def test_placeholder_names_that_clash_with_the_fallback_names(tmp_path):
    """run's parameters are the placeholders' names; a name taken twice falls back to x<k>,
    which may itself be another placeholder's name: every parameter stays distinct."""
    c = gc.placeholder((2,), dtype="float64", name="x2")
    a = gc.placeholder((2,), dtype="float64", name="x1")
    b = gc.placeholder((2,), dtype="float64", name="x1")
    f = gc.function([c, a, b], a * 2.0 + b * 3.0 + c * 5.0)
    feeds = [np.array([1.0, 2.0]), np.array([3.0, 4.0]), np.array([5.0, 6.0])]
    f(*feeds)
    module = import_file(f.export(tmp_path / "step.py"))
    follows(f, module, [feeds], rtol=1e-14)


def test_assigning_a_variable_in_state_is_what_the_next_call_reads(tmp_path):
    """step.state["W"] = trained (not only state["W"][...] = trained) sets the variable: the
    value is copied into the array the plans read; a wrong shape or an unknown name is an
    error, never a silent no-op."""
    x = gc.placeholder((None, 3), dtype="float64", name="x")
    W = gc.variable(np.ones((3, 2)), name="W")
    f = gc.function([x], x @ W, updates=[(W, W * 0.5)])
    xb = np.arange(6.0).reshape(2, 3)
    f(xb)
    module = import_file(f.export(tmp_path / "step.py"))
    trained = np.arange(6.0).reshape(3, 2)
    module.state["W"] = trained.tolist()
    W.value[...] = trained
    follows(f, module, [[xb], [xb]], rtol=1e-14)
    with pytest.raises(Exception, match=r"state\['W'\] has shape \(3, 2\), got \(2, 3\)"):
        module.state["W"] = np.zeros((2, 3))
    with pytest.raises(Exception, match=r"'V' is not a variable of this module \(its "
                                        r"variables: 'W'\)"):
        module.state["V"] = np.zeros(2)


def test_a_step_that_raises_is_named_as_the_function_names_it(tmp_path):
    """An embedding id out of range: the module's error names the step, its node and the
    user's line, in the Function's words; state is left as it was."""
    ids = gc.placeholder((None, 3), dtype="int64", name="ids")
    E = gc.variable(np.random.default_rng(0).standard_normal((10, 4)), name="E")
    cost = gc.sum(gc.take(E, ids))
    f = gc.function([ids], cost, updates=[(E, E - 0.1 * gc.grad(cost, [E])[0])])
    good, bad = np.array([[1, 2, 3], [4, 5, 6]]), np.array([[1, 2, 3], [4, 5, 60]])
    f(good)
    module = import_file(f.export(tmp_path / "step.py"))
    with pytest.raises(gc.GraphcError) as want:
        f(bad)
    with pytest.raises(Exception) as got:
        module.run(bad)
    assert type(got.value).__name__ == "GraphcError" and str(got.value) == str(want.value)
    assert "step 0 failed at run time: IndexError" in str(got.value)
    follows(f, module, [[good]], rtol=1e-12)
