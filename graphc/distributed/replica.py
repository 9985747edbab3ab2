"""The worker side: a replica of the model per worker (a Dask worker plugin) and the tasks.

A plugin is shipped once to every worker (and to workers that join later); `setup` rebuilds the
graph from its payload and compiles it there, so a graph a worker cannot build fails the
registration with the worker's GraphcError. Tasks carry only the plugin's name and the data.
Imported only by graphc.distributed's functions (and by the workers), never at `import graphc`.
"""
from __future__ import annotations

import contextlib
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

    The payload's outputs are [*inputs, y, loss, pred, *grads, *new statistics, *grad inputs,
    *state] (counts: inputs, parameters, statistics) and its updates are the optimizer's;
    `version` counts the updates applied (the driver's step count).
    """

    def __init__(self, payload, counts: tuple[int, int, int]):
        self.payload, self.counts = payload, counts

    def setup(self, worker=None):
        n_in, p, s = self.counts
        with naming(worker):
            graph = unpack(self.payload)
            inputs, (loss, pred, *rest) = graph.outputs[:n_in + 1], graph.outputs[n_in + 1:]
            outs, grad_inputs, self.state = rest[:p + s], rest[p + s:2 * p + s], rest[2 * p + s:]
            self.gradient_step = gc.function(list(inputs), [loss, pred] + outs)
            self.update_step = gc.function(grad_inputs, [], updates=graph.updates)
        self.n_grads, self.stat_vars = p, self.state[len(self.state) - s:]
        self.version, self.lock = 0, threading.Lock()

    def catch_up(self, version: int, pending, state) -> None:
        """Reach `version`: take the driver's state, or apply the previous step's gradients
        and statistics (`pending`)."""
        if state is not None:
            for var, value in zip(self.state, state):
                var.value = value
            self.version = version
        elif pending is not None and self.version == version - 1:
            grads, stats = pending
            self.update_step(*grads)
            for var, value in zip(self.stat_vars, stats):
                var.value = value
            self.version = version
        if self.version != version:
            raise OutOfSync(f"replica at version {self.version}, step needs {version}")


class Predictor(WorkerPlugin):
    """One worker's compiled inference function; the payload's outputs are [x, out]."""

    def __init__(self, payload):
        self.payload = payload

    def setup(self, worker=None):
        with naming(worker):
            xp, out = unpack(self.payload).outputs
            self.function = gc.function([xp], out)
        self.lock = threading.Lock()


@contextlib.contextmanager
def naming(worker):
    """A GraphcError raised while building the graph says on which worker it happened."""
    try:
        yield
    except GraphcError as e:
        where = getattr(worker, "address", "a worker")
        raise GraphcError(f"Dask worker {where} cannot build the graph: {e}") from None


def plugin(name: str):
    try:
        return get_worker().plugins[name]
    except (KeyError, ValueError):
        raise GraphcError(f"graphc: {name} is not installed on this worker (compute the "
                          "result with the Dask client it was made with)") from None


def bundle(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """One chunk of the training data (inputs, then targets) as it lives on a worker."""
    return tuple(np.asarray(a) for a in arrays)


def train_step(name: str, version: int, pending, state, chunks, rows):
    """One worker's share of a step: (count, mean loss, predictions, mean gradients, new
    statistics) of `rows`. chunks: the chunks this worker holds, rows: the batch's row
    indices in each. Called with rows=[] to only bring the replica up to `version`.
    """
    replica = plugin(name)
    with replica.lock:
        replica.catch_up(version, pending, state)
        if not rows:
            return 0, 0.0, None, None, None
        columns = [np.concatenate([c[j][r] for c, r in zip(chunks, rows)])
                   for j in range(len(chunks[0]))]
        loss, pred, *outs = replica.gradient_step(*columns)
        outs = [np.array(a) for a in outs]      # copies: the plan reuses its buffers
        p = replica.n_grads
        return len(columns[0]), float(loss), np.array(pred), outs[:p], outs[p:]


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
