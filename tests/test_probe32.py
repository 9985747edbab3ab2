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

SLOW = {"go": threading.Event()}


def slow_kernel(x):
    """In a thread other than the main one, waits for SLOW["go"]: a long call that holds its
    variables' locks meanwhile."""
    if threading.current_thread() is not threading.main_thread():
        SLOW["go"].wait(10)
    return x * 1.0


if "probe32_slow" not in gc.ir.OPS:
    gc.register_op(gc.OpDef("probe32_slow", lambda x: (x.shape, x.dtype, {}),
                            kernel=slow_kernel, vjp=lambda g, out, x: (g,), elementwise=True))


@pytest.mark.parametrize("planned", [False, True])   # the general path; a plan's entry
def test_ctrl_c_while_waiting_for_another_threads_call_is_raised_at_once(planned):
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
