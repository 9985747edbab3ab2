"""probe32: a hostile newcomer trains as a PyTorch/Keras user would -- optimizers against NumPy,
fit, checkpoints, pickles and copies, calls that fail, Ctrl-C, threads; one test per bug found,
each failing before its fix, plus the probes that found nothing but guard a promise.
"""
from __future__ import annotations

import _thread
import copy
import os
import pickle
import threading
import time

import numpy as np
import pytest

import graphc as gc
from graphc import nn

HERE = os.path.basename(__file__)


def data(n=37, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, features)).astype(np.float32),
            rng.integers(0, classes, n))


def mlp(dropout=True, seed=1):
    layers = [nn.Dense(8, "relu"), nn.BatchNorm()] + ([nn.Dropout(0.3)] if dropout else [])
    return nn.Sequential(layers + [nn.Dense(3)], seed=seed)


def values(variables):
    return [np.array(v.value) for v in variables]


def same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# fit: resuming --------------------------------------------------------------------------------

def test_a_resumed_fit_with_dropout_equals_the_uninterrupted_one(tmp_path):
    """README: fit(epochs=2) equals fit(epochs=1), then fit(epochs=2, initial_epoch=1) (also
    after save_params / load_params). With Dropout it did not: each fit compiles a new step
    whose mask generator started again from the layer's seed, so epoch 2 drew epoch 1's masks
    (losses 1.340 vs 1.231). Now each epoch's masks come from (the op's seed, the epoch)."""
    x, y = data()
    whole, opt = mlp(), nn.Adam(1e-2)
    h_whole = nn.fit(whole, "softmax_cross_entropy", opt, x, y, epochs=3, batch_size=6,
                     verbose=0)
    first, opt1 = mlp(), nn.Adam(1e-2)
    nn.fit(first, "softmax_cross_entropy", opt1, x, y, epochs=1, batch_size=6, verbose=0)
    nn.save_params(first, tmp_path / "model.npz")
    nn.save_params(opt1, tmp_path / "adam.npz")
    # the same objects go on ...
    h_on = nn.fit(first, "softmax_cross_entropy", opt1, x, y, epochs=3, initial_epoch=1,
                  batch_size=6, verbose=0)
    # ... and a fresh model and optimizer resume from the files
    again, opt2 = mlp(), nn.Adam(1e-2)
    again(gc.placeholder((None, 6), "float32"))
    opt2.build(again.params)
    nn.load_params(again, tmp_path / "model.npz")
    nn.load_params(opt2, tmp_path / "adam.npz")
    h_again = nn.fit(again, "softmax_cross_entropy", opt2, x, y, epochs=3, initial_epoch=1,
                     batch_size=6, verbose=0)
    assert h_on["loss"] == h_whole["loss"][1:] and h_again["loss"] == h_whole["loss"][1:]
    assert same(values(first.variables), values(whole.variables))
    assert same(values(again.variables + opt2.variables), values(whole.variables + opt.variables))
    # each epoch draws its own masks, and again the same when it is run again
    xp = gc.placeholder((None, 6), "float32")
    f = gc.function([xp], gc.dropout(xp, 0.5, seed=7, training=True))
    masks = {}
    for epoch in (1, 2, 1):
        nn.train.reseed(f, epoch)
        masks.setdefault(epoch, []).append(f(np.ones((4, 6), np.float32)) != 0)
    assert np.array_equal(*masks[1]) and not np.array_equal(masks[1][0], masks[2][0])


# copies and pickles of models and optimizers ------------------------------------------------

def test_a_copied_or_pickled_model_and_optimizer_train_on_as_the_original():
    """`copy.deepcopy((model, opt))` (to branch a training run) silently restarted the copy's
    Adam moments at zero while its step count went on: the optimizer found a parameter's
    state by id(p), and the copy's parameters have other ids. `pickle.dumps(model)` failed
    with "Can't pickle <lambda>" (the activations by name were lambdas). Now both copies take
    the same next steps as the original."""
    x, y = data()
    model, opt = mlp(dropout=False), nn.Adam(1e-2)
    nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=1, batch_size=6, verbose=0)
    copies = [copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]
    for m, o in copies:
        assert not any(np.shares_memory(a.value, b.value)
                       for a, b in zip(m.variables, model.variables))
        assert same(values(m.variables + o.variables), values(model.variables + opt.variables))
    history = nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=2, initial_epoch=1,
                     batch_size=6, verbose=0)
    for m, o in copies:
        assert nn.fit(m, "softmax_cross_entropy", o, x, y, epochs=2, initial_epoch=1,
                      batch_size=6, verbose=0) == history
        assert same(values(m.variables + o.variables), values(model.variables + opt.variables))
        assert len(o.slots) == len(opt.slots)        # no second, fresh set of moments
    for activation in ["relu", "gelu_tanh", "softmax", None, "linear"]:
        layer = nn.Dense(2, activation)
        layer(gc.placeholder((None, 3), "float64"))
        pickle.loads(pickle.dumps(layer))


# checkpoints while another thread trains ----------------------------------------------------

def test_parameters_saved_or_loaded_while_another_thread_trains_are_one_steps(tmp_path):
    """save_params read the arrays as a call of another thread wrote them: a checkpoint held
    A after step k+1 and B after step k (18 of 30 saves were torn); load_params assigned one
    variable after the other, so a call between two assignments saw half a checkpoint. Both
    now hold the variables' storage locks, as compiled calls do (and load defers Ctrl-C)."""
    shape = (200, 200)
    a, b = gc.variable(np.zeros(shape), name="A"), gc.variable(np.zeros(shape), name="B")
    one = gc.placeholder((), "float64")
    train = gc.function([one], [], updates=[(a, a + one), (b, b + one)])
    gap = gc.function([], [gc.max(gc.abs(a - b))])
    stop, gaps = threading.Event(), []

    def training():
        while not stop.is_set():
            train(np.float64(1.0))

    def watching(done):
        while not done.is_set():
            gaps.append(float(gap()[0]))

    path = tmp_path / "ab.npz"
    torn = 0
    thread = threading.Thread(target=training)
    thread.start()
    try:
        for k in range(20):
            nn.save_params([a, b], path)
            with np.load(path) as saved:
                torn += not (np.ptp(saved["A"]) == 0 and np.array_equal(saved["A"], saved["B"]))
            np.savez(path, A=np.full(shape, -k - 1.0), B=np.full(shape, -k - 1.0))
            done = threading.Event()
            watcher = threading.Thread(target=watching, args=(done,))
            watcher.start()
            nn.load_params([a, b], path)
            time.sleep(0.002)
            done.set()
            watcher.join()
    finally:
        stop.set()
        thread.join()
    assert torn == 0 and gaps and max(gaps) == 0.0


def test_ctrl_c_while_parameters_load_leaves_all_old_or_all_new(tmp_path, monkeypatch):
    """A Ctrl-C between two assignments of load_params left a model half loaded; it is now
    raised once every variable holds the file's value (as in a compiled call's writes)."""
    a, b = gc.variable(np.zeros(3), name="a"), gc.variable(np.zeros(3), name="b")
    np.savez(tmp_path / "ab.npz", a=np.ones(3), b=np.ones(3))
    copyto, calls = np.copyto, []

    def interrupted(*args, **kwargs):      # Ctrl-C arrives while the first value is copied
        copyto(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            _thread.interrupt_main()

    monkeypatch.setattr(np, "copyto", interrupted)
    with pytest.raises(KeyboardInterrupt):
        nn.load_params([a, b], tmp_path / "ab.npz")
    monkeypatch.undo()
    assert len(calls) == 2 and a.value.tolist() == b.value.tolist() == [1.0, 1.0, 1.0]


# calls that fail ------------------------------------------------------------------------------

def test_a_batch_too_big_for_memory_names_the_value_and_changes_nothing():
    """A batch whose plan cannot be allocated raised NumPy's "Unable to allocate 2.62 TiB for
    an array with shape (2880000000064,) and data type uint8" (the plan's arena), naming
    neither a node nor a line. Now a GraphcError names the largest value, its shape and the
    line that built it; variables, optimizer state and the plan cache are as before, and the
    next call is right."""
    x = gc.placeholder((None, 3), "float64", name="x")
    w = gc.variable(np.full((3, 3), 0.1), name="W")
    h = x @ w
    outer = gc.reshape(h, (-1, 1)) * gc.reshape(h, (1, -1))      # (3N, 3N)
    cost = gc.mean(outer)
    opt = nn.Adam(1e-3)
    f = gc.function([x], cost, updates=opt.updates(cost, [w]))
    small = np.ones((4, 3))
    f(small)
    before = values([w] + opt.variables)
    with pytest.raises(gc.GraphcError) as e:
        f(np.ones((200_000, 3)))
    text = str(e.value)
    assert "does not fit in memory" in text and "(600000, 600000) float64" in text, text
    assert "mul(" in text and f"{HERE}:" in text
    assert same(values([w] + opt.variables), before) and len(f.plans) == 1
    expected = cost.eval({x: small})
    assert f(small) == pytest.approx(expected) and not same(values([w]), before[:1])


def test_errors_of_fit_data_name_the_users_line():
    """fit's checks of x, y and validation_data named no line ("fit validation_data: 20
    examples but 5 targets"); a list of two input arrays (one array to NumPy) said "2 examples
    but 20 targets" without saying why. Now every one names the line of the call, and the
    list says to pass a tuple; nothing was trained."""
    x, y = data(n=20)
    model = mlp(dropout=False)
    calls = [lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), x, y[:5], verbose=0),
             lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), [x, x], y, verbose=0),
             lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), x, y, verbose=0,
                            validation_data=(x, y[:5])),
             lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), x, y, verbose=0,
                            validation_data=[x]),
             lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), x, y, verbose=0,
                            validation_data=((x, x), y)),
             lambda: nn.fit(model, "softmax_cross_entropy", nn.SGD(), (x, x[:3]), y,
                            verbose=0),
             lambda: nn.evaluate(model, "softmax_cross_entropy", x[:0], y[:0])]
    for call in calls:
        with pytest.raises(gc.GraphcError) as e:
            call()
        assert f"{HERE}:" in str(e.value), str(e.value)
    with pytest.raises(gc.GraphcError, match="x is a list: one array"):
        calls[1]()
    assert model.variables == []


def test_a_regression_of_several_outputs_reports_no_accuracy():
    """fit(model, "mse", ...) of 3 real-valued outputs reported an "accuracy" (the share of
    rows whose largest output is where the target's largest is); the 'auto' metric promises
    none for regression. Integer labels, one-hot and probability targets keep it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    targets = (x @ rng.normal(size=(4, 3))).astype(np.float32)
    model = nn.Sequential([nn.Dense(3)], seed=0)
    assert list(nn.fit(model, "mse", nn.SGD(0.01), x, targets, epochs=1, verbose=0)) == ["loss"]
    assert list(nn.evaluate(model, "mse", x, targets)) == ["loss"]
    labels = rng.integers(0, 3, 20)
    soft = rng.dirichlet(np.ones(3), 20).astype(np.float32)
    for y in (labels, np.eye(3, dtype=np.float32)[labels], soft):
        assert "accuracy" in nn.evaluate(model, "softmax_cross_entropy", x, y)


def test_the_resume_recipe_works_for_an_optimizer_without_state(tmp_path):
    """README's resume: opt.build(model.params), load_params of model and optimizer, fit on.
    With plain SGD (no state) load_params(opt) refused: "the model has no variables yet ...
    (an optimizer: optimizer.build(model.params))", which had just been called. A built
    optimizer (or a called model) without variables now loads nothing; unbuilt ones still
    say so, and a missing file is still an error."""
    x, y = data(n=20)
    model, opt = mlp(dropout=False), nn.SGD(0.1)
    nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=1, verbose=0)
    nn.save_params(model, tmp_path / "model.npz")
    nn.save_params(opt, tmp_path / "sgd.npz")
    again, opt2 = mlp(dropout=False), nn.SGD(0.1)
    with pytest.raises(gc.GraphcError, match="optimizer.build"):
        nn.load_params(opt2, tmp_path / "sgd.npz")
    again(gc.placeholder((None, 6), "float32"))
    assert opt2.build(again.params) == []
    nn.load_params(again, tmp_path / "model.npz")
    nn.load_params(opt2, tmp_path / "sgd.npz")
    with pytest.raises(gc.GraphcError, match="cannot read"):
        nn.load_params(opt2, tmp_path / "nothing.npz")
    h = nn.fit(model, "softmax_cross_entropy", opt, x, y, epochs=2, initial_epoch=1, verbose=0)
    assert nn.fit(again, "softmax_cross_entropy", opt2, x, y, epochs=2, initial_epoch=1,
                  verbose=0) == h
    assert same(values(again.variables), values(model.variables))


def test_a_graph_saved_while_another_thread_trains_holds_one_steps_values(tmp_path):
    """gc.save read the variables' arrays as a call of another thread wrote them (A after
    step k+1, B after step k); it now copies them under their storage locks."""
    shape = (200, 200)
    a, b = gc.variable(np.zeros(shape), name="A"), gc.variable(np.zeros(shape), name="B")
    one = gc.placeholder((), "float64")
    train = gc.function([one], [], updates=[(a, a + one), (b, b + one)])
    stop = threading.Event()

    def training():
        while not stop.is_set():
            train(np.float64(1.0))

    thread = threading.Thread(target=training)
    thread.start()
    torn = 0
    try:
        for _ in range(20):
            gc.save(a - b, tmp_path / "gap")
            gap = gc.load(tmp_path / "gap.json")
            a_saved, b_saved = (n.value for n in gap.inputs)
            torn += not (np.ptp(a_saved) == 0 and np.array_equal(a_saved, b_saved))
    finally:
        stop.set()
        thread.join()
    assert torn == 0


def test_a_frozen_batchnorm_keeps_its_statistics_and_runs_in_inference_mode():
    """`base.trainable = False` (Keras's flag) left gamma and beta alone but fit still updated
    the frozen BatchNorm's running statistics (README: fit leaves a frozen layer's variables
    as they are). Now a BatchNorm frozen itself or inside a frozen layer normalizes with its
    running statistics while training too, as Keras does, and keeps them; unfrozen, it
    trains and updates them again."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 4)) * 3 + 2).astype(np.float32)
    y = rng.integers(0, 2, 20)
    base = nn.Sequential([nn.Dense(5, "relu"), nn.BatchNorm()], name="base")
    model = nn.Sequential([base, nn.Dense(2)], seed=0)
    xp = gc.placeholder((None, 4), "float32")
    model(xp)
    bn = base.layers[1]
    bn.running_mean.value = np.full(5, 0.5, np.float32)
    bn.running_var.value = np.full(5, 4.0, np.float32)
    for frozen in (base, bn):
        frozen.trainable = False
        kept = values(frozen.variables)
        nn.fit(model, "softmax_cross_entropy", nn.Adam(0.1), x, y, epochs=1, verbose=0)
        assert same(values(frozen.variables), kept)
        train_out = gc.function([xp], model(xp, training=True))(x)
        eval_out = gc.function([xp], model(xp, training=False))(x)
        np.testing.assert_array_equal(train_out, eval_out)
        frozen.trainable = True
    nn.fit(model, "softmax_cross_entropy", nn.Adam(0.1), x, y, epochs=1, verbose=0)
    assert not np.array_equal(bn.running_mean.value, kept[-2])


# Ctrl-C and threads ---------------------------------------------------------------------------

FAIL = {"on": False}


def failing_kernel(v):
    if FAIL["on"]:
        raise ValueError("boom")
    return v * 1.0



SLOW = {"go": threading.Event()}


def slow_kernel(x):
    """In a thread other than the main one, waits for SLOW["go"]: a long call that holds its
    variables' locks meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        SLOW["go"].wait(10)
    return x * 1.0


@pytest.fixture
def user_ops():
    """The tests' own ops, registered for one test only (the op table's tests and the fuzzer
    want a row for every registered op)."""
    for name, kernel in (("probe32_slow", slow_kernel), ("probe32_fails", failing_kernel)):
        gc.register_op(gc.OpDef(name, lambda x: (x.shape, x.dtype, {}), kernel=kernel,
                                vjp=lambda g, out, x: (g,), elementwise=True))
    try:
        yield
    finally:
        for name in ("probe32_slow", "probe32_fails"):
            gc.ir.OPS.pop(name, None)


@pytest.mark.parametrize("planned", [False, True])   # the general path; a plan's entry
def test_ctrl_c_while_waiting_for_another_threads_call_is_raised_at_once(planned, user_ops):
    """A call waiting for the locks of a call running in another thread held Ctrl-C until it
    had the locks: 4.8 s for a 5 s call, for ever for one that hangs (a notebook's interrupt
    did nothing). Now it is raised within ~0.05 s, the locks already taken are given back
    (another thread's call of one of them runs), nothing ran, and every call works after."""
    SLOW["go"] = threading.Event()
    b = gc.variable(np.zeros(3), name="B")       # B's lock ranks before A's
    bump_b = gc.function([], [], updates=[(b, b + 1.0)])
    a = gc.variable(np.zeros(3), name="A")
    slow = gc.function([], [], updates=[(a, gc.apply("probe32_slow", a + 1.0))])
    both = gc.function([], [], updates=[(a, a + 10.0), (b, b + 10.0)])  # takes B, waits for A
    if planned:
        both()
    start_a, start_b = float(a.value[0]), float(b.value[0])
    runner = threading.Thread(target=slow)
    runner.start()
    try:
        time.sleep(0.1)
        timer = threading.Timer(0.2, _thread.interrupt_main)
        start = time.monotonic()
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            both()
        assert time.monotonic() - start < 2.0 and runner.is_alive()
        other = threading.Thread(target=bump_b)     # B was given back
        other.start()
        other.join(2.0)
        assert not other.is_alive() and b.value.tolist() == [start_b + 1.0] * 3
    finally:
        SLOW["go"].set()
        runner.join()
        timer.join()
    both()
    assert a.value.tolist() == [start_a + 11.0] * 3 and b.value.tolist() == [start_b + 11] * 3


# Dask ---------------------------------------------------------------------------------------

def test_distributed_fit_with_a_worker_that_stops_answering_fails_in_time():
    """A worker that hangs (SIGSTOP here; a machine cut off looks alike) made gd.fit's step
    fail after `timeout` seconds, as promised, but its cleanup then waited for every worker
    to unregister the replica plugin: the call hung until the scheduler dropped the worker
    (worker-ttl, minutes). The cleanup now waits at most `timeout` seconds."""
    distributed = pytest.importorskip("distributed")
    import signal

    import graphc.distributed as gd
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    stopped, outcome = [], []
    try:
        client.wait_for_workers(2, timeout=60)
        victim = sorted(client.ncores())[1]
        pid = client.run(os.getpid, workers=[victim])[victim]
        x, y = data(n=64, features=5)

        def training():
            try:
                gd.fit(nn.Sequential([nn.Dense(3)], seed=0), "softmax_cross_entropy",
                       nn.SGD(0.1), x, y, client=client, epochs=10_000, batch_size=8,
                       verbose=0, timeout=5.0)
                outcome.append("finished")
            except gc.GraphcError as e:
                outcome.append(str(e))

        def replica_version(dask_worker) -> int:
            return max([getattr(p, "version", -1) for n, p in dask_worker.plugins.items()
                        if n.startswith("graphc-fit-")], default=-1)

        thread = threading.Thread(target=training, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stopped:
            if client.run(replica_version, workers=[victim]).get(victim, -1) >= 2:
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            time.sleep(0.02)
        assert stopped
        thread.join(60)             # 5 s for the step, at most 5 s for the cleanup
        assert not thread.is_alive() and "within timeout=5" in outcome[0], outcome
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        client.close()
        cluster.close()


# promises that held (guards) ------------------------------------------------------------------

def numpy_steps(kind, w, grad, lrs, **h):
    """An independent NumPy version of each optimizer's update over several steps."""
    state = {"v": np.zeros_like(w), "m": np.zeros_like(w), "s": np.zeros_like(w)}
    out = []
    for t, lr in enumerate(lrs, start=1):
        g = grad(w)
        if kind == "sgd":
            state["v"] = h["momentum"] * state["v"] - lr * g
            w = w + state["v"]
        elif kind == "rmsprop":
            state["s"] = h["rho"] * state["s"] + (1 - h["rho"]) * g * g
            w = w - lr * g / (np.sqrt(state["s"]) + h["eps"])
        else:
            state["m"] = h["beta1"] * state["m"] + (1 - h["beta1"]) * g
            state["s"] = h["beta2"] * state["s"] + (1 - h["beta2"]) * g * g
            m_hat, v_hat = state["m"] / (1 - h["beta1"] ** t), state["s"] / (1 - h["beta2"] ** t)
            w = w - lr * m_hat / (np.sqrt(v_hat) + h["eps"])
        out.append(w)
    return out


@pytest.mark.parametrize("kind, make, hyper", [
    ("sgd", nn.SGD, {"momentum": 0.0}),
    ("sgd", nn.SGD, {"momentum": 0.9}),
    ("adam", nn.Adam, {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("adam", nn.Adam, {"beta1": 0.5, "beta2": 0.6, "eps": 1e-3}),
    ("rmsprop", nn.RMSProp, {"rho": 0.8, "eps": 1e-7}),
])
def test_optimizers_match_numpy_with_a_schedule_and_weight_decay(kind, make, hyper):
    """Five steps of a least-squares fit with L2 (weight decay as a loss term), the learning
    rate a variable changed between steps (a schedule): every step equals NumPy's."""
    rng = np.random.default_rng(0)
    xs, ys, w0 = rng.normal(size=(16, 5)), rng.normal(size=(16, 3)), rng.normal(size=(5, 3))
    decay, lrs = 1e-2, [0.1, 0.1, 0.03, 0.01, 0.0]
    x, y = gc.placeholder((None, 5), "float64"), gc.placeholder((None, 3), "float64")
    w, lr = gc.variable(w0.copy(), name="W"), gc.variable(np.float64(0.1), name="lr")
    cost = gc.mean((x @ w - y) ** 2) + decay * gc.sum(w * w)
    step = gc.function([x, y], cost, updates=make(lr, **hyper).updates(cost, [w]))
    got = []
    for value in lrs:
        lr.value = value
        step(xs, ys)
        got.append(w.value.copy())
    want = numpy_steps(kind, w0, lambda v: 2 * xs.T @ (xs @ v - ys) / ys.size + 2 * decay * v,
                       lrs, **hyper)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_fit_shuffles_reproducibly_and_trains_alike_on_labels_or_one_hot():
    """Same seed: same history and weights; integer labels and one-hot targets: the same
    training; a last batch of 1 and batches of 1 run (BatchNorm keeps its statistics for a
    batch of one row, where PyTorch refuses it)."""
    x, y = data(n=37)
    runs = []
    for targets in (y, y, np.eye(3, dtype=np.float32)[y]):
        model = mlp()
        runs.append((nn.fit(model, "softmax_cross_entropy", nn.Adam(1e-2), x, targets,
                            epochs=2, batch_size=6, verbose=0), values(model.variables)))
    assert runs[0][0] == runs[1][0] and same(runs[0][1], runs[1][1])
    np.testing.assert_allclose(runs[2][0]["loss"], runs[0][0]["loss"], rtol=1e-6)
    other = nn.fit(mlp(), "softmax_cross_entropy", nn.Adam(1e-2), x, y, epochs=2,
                   batch_size=6, seed=1, verbose=0)
    assert other["loss"] != runs[0][0]["loss"]
    model = mlp()
    h = nn.fit(model, "softmax_cross_entropy", nn.SGD(0.01), x, y, epochs=1, batch_size=1,
               verbose=0)
    bn = model.layers[1]
    assert np.isfinite(h["loss"][0]) and (bn.running_var.value == 1).all()


def test_batchnorm_follows_pytorchs_formulas_in_training_and_evaluation():
    """Training: the batch's biased variance normalizes; the running variance takes the
    unbiased one with momentum; evaluation reads the running statistics (NCHW channels)."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 3, 4, 4), "float64")
    bn = nn.BatchNorm(momentum=0.2)
    step = gc.function([x], bn(x, training=True), updates=bn.state_updates)
    evaluate = gc.function([x], bn(x, training=False))
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(3):
        batch = rng.normal(size=(5, 3, 4, 4)) * 3 + 1
        out = step(batch)
        m, v, n = batch.mean((0, 2, 3)), batch.var((0, 2, 3)), 5 * 16
        np.testing.assert_allclose(out, (batch - m[:, None, None]) / np.sqrt(
            v[:, None, None] + 1e-5), atol=1e-12)
        mean, var = 0.8 * mean + 0.2 * m, 0.8 * var + 0.2 * v * n / (n - 1)
        np.testing.assert_allclose(bn.running_mean.value, mean, atol=1e-12)
        np.testing.assert_allclose(bn.running_var.value, var, atol=1e-12)
    batch = rng.normal(size=(2, 3, 4, 4))
    np.testing.assert_allclose(evaluate(batch), (batch - mean[:, None, None]) / np.sqrt(
        var[:, None, None] + 1e-5), atol=1e-12)


def test_a_failing_step_at_any_point_leaves_every_variable_and_slot_as_it_was(user_ops):
    """A user kernel raising in the gradient, in an update's value or in a velocity; a NaN
    caught by check_numerics; a label out of range: the call raises a GraphcError naming the
    step and the line, every parameter, slot and step count is as before, the next call is
    right."""
    rng = np.random.default_rng(0)
    xs, labels = rng.normal(size=(4, 5)), np.array([0, 1, 2, 0])
    for place in ("gradient", "value", "slot"):
        for make in (lambda: nn.SGD(0.1, momentum=0.9), lambda: nn.Adam(0.1),
                     lambda: nn.RMSProp(0.1)):
            x, y = gc.placeholder((None, 5), "float64"), gc.placeholder((None,), "int64")
            w, b = gc.variable(np.ones((5, 3)), name="W"), gc.variable(np.zeros(3), name="b")
            cost = gc.mean(gc.softmax_cross_entropy(x @ w + b, y))
            opt = make()
            gw, gb = gc.grad(cost, [w, b])
            if place == "gradient":
                gb = gc.apply("probe32_fails", gb)
            pairs = opt.pairs([w, b], [gw, gb])
            pairs = [(v, gc.apply("probe32_fails", new)
                      if (place == "value" and v is b) or (place == "slot" and v is pairs[0][0])
                      else new) for v, new in pairs]
            for check in (False, True):
                step = gc.function([x, y], cost, updates=pairs, check_numerics=check)
                step(xs, labels)
                before = values([w, b] + opt.variables)
                for bad in ("kernel", "label", "nan"):
                    FAIL["on"] = bad == "kernel"
                    feeds = (xs, labels + 3 * (bad == "label"))
                    if bad == "nan":
                        if not check:
                            continue
                        feeds = (np.where(xs > 1, np.nan, xs), labels)
                    with pytest.raises(gc.GraphcError) as e:
                        step(*feeds)
                    FAIL["on"] = False
                    assert f"{HERE}:" in str(e.value)
                    assert same(values([w, b] + opt.variables), before), (place, bad)
                expected = cost.eval({x: xs, y: labels})
                assert step(xs, labels) == pytest.approx(expected)


def test_ctrl_c_at_random_moments_of_training_steps_leaves_whole_steps():
    """interrupt_main at random moments around 200 Adam steps of an MLP with BatchNorm: after
    each, every variable is as before the call or every one has changed (whole steps)."""
    import random
    x = gc.placeholder((None, 20), "float64")
    y = gc.placeholder((None,), "int64")
    model = nn.Sequential([nn.Dense(32, "relu"), nn.BatchNorm(), nn.Dense(10)], seed=0)
    opt = nn.Adam(1e-3)
    cost = nn.losses.softmax_cross_entropy(model(x, training=True), y)
    step = gc.function([x, y], cost, updates=opt.updates(cost, model.params)
                       + model.state_updates)
    rng = np.random.default_rng(0)
    xs, labels = rng.normal(size=(64, 20)), rng.integers(0, 10, 64)
    step(xs, labels)
    variables = model.variables + opt.variables
    random.seed(0)
    interrupted = 0                  # interrupts that came inside a call
    for k in range(2000):            # a loaded machine's timer threads come late: go on longer
        if k >= 200 and interrupted >= 10:
            break
        before = values(variables)
        timer = threading.Timer(random.random() * 0.001, _thread.interrupt_main)
        inside = False
        try:
            timer.start()
            inside = True
            step(xs, labels)
            inside = False
            time.sleep(0.002)
        except KeyboardInterrupt:
            interrupted += inside
        while True:                  # the interrupt, wherever it comes, is over after this
            try:
                timer.join()
                time.sleep(0.002)
                break
            except KeyboardInterrupt:
                pass
        changed = [not np.array_equal(a, v.value) for a, v in zip(before, variables)]
        assert all(changed) or not any(changed)
    assert interrupted > 0


def test_threads_calling_functions_that_share_variables_give_a_serial_result():
    """Four threads: two call a Function updating (A, B), one a Function updating (B, C),
    one reads A - (B - C) (always 0: never half an update) and one reads A.value; one Adam
    step Function called from 4 threads equals the same number of calls in one thread."""
    shape = (50, 50)
    a, b, c = (gc.variable(np.zeros(shape), name=n) for n in "ABC")
    one = gc.placeholder((), "float64")
    ab = gc.function([one], [], updates=[(a, a + one), (b, b + one)])
    bc = gc.function([one], [], updates=[(b, b + one), (c, c + one)])
    gap = gc.function([], gc.max(gc.abs(a - (b - c))))
    gaps = []
    jobs = [lambda: [ab(np.float64(1)) for _ in range(100)],
            lambda: [ab(np.float64(1)) for _ in range(100)],
            lambda: [bc(np.float64(1)) for _ in range(100)],
            lambda: gaps.extend(float(gap()) for _ in range(100)),
            lambda: [a.value for _ in range(100)]]
    threads = [threading.Thread(target=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and max(gaps) == 0.0
    assert (a.value == 200).all() and (b.value == 300).all() and (c.value == 100).all()
    x, y = gc.placeholder((None, 5), "float64"), gc.placeholder((None,), "int64")
    w = gc.variable(np.full((5, 3), 0.1), name="W")
    cost = gc.mean(gc.softmax_cross_entropy(x @ w, y))
    opt = nn.Adam(0.01)
    step = gc.function([x, y], cost, updates=opt.updates(cost, [w]))
    xs, labels = np.random.default_rng(0).normal(size=(8, 5)), np.arange(8) % 3
    threads = [threading.Thread(target=lambda: [step(xs, labels) for _ in range(25)])
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    threaded = values([w] + opt.variables)
    w.value = np.full((5, 3), 0.1)
    for v in opt.variables:
        v.value = np.zeros(v.shape, v.dtype)
    for _ in range(100):
        step(xs, labels)
    assert same(values([w] + opt.variables), threaded) and opt.t.value == 100
