"""The worker side: a replica of the model per worker (a Dask worker plugin) and the tasks.

A plugin is shipped once to every worker (and to workers that join later); `setup` rebuilds the
graph from its payload and compiles it there, so a graph a worker cannot build fails the
registration with the worker's GraphcError. Tasks carry only the plugin's name and the data.
Imported only by graphc.distributed's functions (and by the workers), never at `import graphc`.
"""
from __future__ import annotations

import threading

import numpy as np
from distributed import WorkerPlugin, get_worker

import graphc as gc
from graphc.distributed.common import unpack
from graphc.ir import GraphcError


class OutOfSync(Exception):
    """The replica is not at the version the driver expects: the driver resends the state."""


class Replica(WorkerPlugin):
    """One worker's copy of the model: the gradient step and the optimizer's update step.

    The payload's outputs are [x, y, loss, pred, *grads, *grad_inputs, *state] and its updates
    are the optimizer's; `version` counts the updates applied (the driver's step count).
    """

    def __init__(self, payload, n_params: int):
        self.payload, self.n_params = payload, n_params

    def setup(self, worker=None):
        graph, p = unpack(self.payload), self.n_params
        xp, yp, loss, pred, *rest = graph.outputs
        grads, grad_inputs, self.state = rest[:p], rest[p:2 * p], rest[2 * p:]
        self.gradient_step = gc.function([xp, yp], [loss, pred] + grads)
        self.update_step = gc.function(grad_inputs, [], updates=graph.updates)
        self.version, self.lock = 0, threading.Lock()

    def catch_up(self, version: int, grads, state) -> None:
        """Reach `version`: take the driver's state, or apply the previous step's gradients."""
        if state is not None:
            for var, value in zip(self.state, state):
                var.value = value
            self.version = version
        elif grads is not None and self.version == version - 1:
            self.update_step(*grads)
            self.version = version
        if self.version != version:
            raise OutOfSync(f"replica at version {self.version}, step needs {version}")


class Predictor(WorkerPlugin):
    """One worker's compiled inference function; the payload's outputs are [x, out]."""

    def __init__(self, payload):
        self.payload = payload

    def setup(self, worker=None):
        xp, out = unpack(self.payload).outputs
        self.function = gc.function([xp], out)
        self.lock = threading.Lock()


def plugin(name: str):
    try:
        return get_worker().plugins[name]
    except (KeyError, ValueError):
        raise GraphcError(f"graphc: {name} is not installed on this worker (compute the "
                          "result with the Dask client it was made with)") from None


def pair(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of the training data as it lives on a worker."""
    return np.asarray(x), np.asarray(y)


def train_step(name: str, version: int, grads, state, chunks, rows):
    """One worker's share of a step: (count, mean loss, predictions, mean gradients) of `rows`.

    chunks: the (x, y) chunks this worker holds, rows: the batch's row indices in each.
    Called with rows=[] to only bring the replica up to `version`.
    """
    replica = plugin(name)
    with replica.lock:
        replica.catch_up(version, grads, state)
        if not rows:
            return 0, 0.0, None, None
        xb = np.concatenate([c[0][r] for c, r in zip(chunks, rows)])
        yb = np.concatenate([c[1][r] for c, r in zip(chunks, rows)])
        loss, pred, *g = replica.gradient_step(xb, yb)
        return len(xb), float(loss), np.asarray(pred), [np.array(a) for a in g]


def replica_state(name: str):
    """The replica's version and variable values (the driver checks them against its own)."""
    replica = plugin(name)
    with replica.lock:
        return replica.version, [np.array(v.value) for v in replica.state]


def predict_block(name: str, block: np.ndarray) -> np.ndarray:
    """The compiled function of plugin `name` on one chunk."""
    predictor = plugin(name)
    with predictor.lock:
        return np.array(predictor.function(np.asarray(block)))
