"""Synchronous data-parallel training on Dask, equivalent to `graphc.nn.fit` in one process.

Every worker holds a replica of the model (graphc.distributed.replica). Each step the driver
takes nn.fit's global batch (same seed, same batches), splits it by where the rows live, and
each worker returns the mean loss and gradients of its rows; weighted by row count and summed
they are the gradient of the batch's mean loss. Every replica, the driver's model included,
applies the optimizer's update graph to that sum, so all hold the same parameters.
"""
from __future__ import annotations

import sys
import time
import uuid
from typing import NamedTuple

import numpy as np

import graphc as gc
from graphc.distributed.common import forget_plugin, get_client, need_dask, pack
from graphc.distributed.shards import Shards, is_dask
from graphc.ir import GraphcError
from graphc.nn import losses as losses_mod
from graphc.nn import train
from graphc.nn.module import whole


class WorkerLost(Exception):
    """A step could not finish on the workers it was given (the driver recomputes it)."""


def fit(model, loss, optimizer, x, y, *, client=None, epochs: int = 10, batch_size: int = 32,
        validation_data=None, seed: int = 0, l1: float = 0.0, l2: float = 0.0,
        metric="auto", verbose: int = 1, out=None, workers=None, timeout: float = 300.0,
        retries: int = 3, initial_epoch: int = 0) -> dict[str, list[float]]:
    """nn.fit on the workers of a Dask client; the same arguments, batches and history.

    x (an array, or a tuple of arrays for a model with several inputs) and y may be NumPy or
    Dask arrays; their rows stay on the workers (y is also gathered to the driver for the
    accuracy). The loss must be a mean over the batch, as nn's losses are. `workers`: the
    worker addresses to train on (default: all of the client's). A step that loses a worker
    is recomputed on the others (at most `retries` times); one that takes longer than
    `timeout` seconds fails the call. Dropout masks and BatchNorm statistics are
    per worker, so such models train alike but not to the same bits as nn.fit.
    """
    need_dask()
    client = get_client(client)
    train.check_model(model, "distributed.fit", optimizer)
    x, y, y_local = check_inputs(x, y)
    batch_size = whole(batch_size, "fit: batch_size")
    loss_fn = losses_mod.get(loss)
    graphs = build(model, loss_fn, optimizer, x, y, l1, l2)
    metric_fn = train.pick_metric(metric, graphs.pred_shape, y_local)
    if validation_data is not None:
        validation_data = train.check_data(*validation_data, "fit validation_data")
    out = out or sys.stdout
    if verbose:
        print(f"Dask dashboard: {client.dashboard_link}", file=out, flush=True)

    from graphc.distributed import replica
    name = f"graphc-fit-{uuid.uuid4().hex[:12]}"
    trainer = None
    try:
        client.register_plugin(replica.Replica(graphs.payload, graphs.counts), name=name)
        allowed = None if workers is None else set(workers)
        arrays = [*x, y] if isinstance(x, tuple) else [x, y]
        shards = Shards(client, arrays, live_workers(client, allowed))
        trainer = Trainer(client, name, graphs, shards, allowed, timeout, retries,
                          out if verbose else None)
        history = train_epochs(trainer, graphs.eval_step, metric_fn, y_local,
                               (initial_epoch, epochs), batch_size, validation_data, seed,
                               verbose, out)
        trainer.check_replicas()
        return history
    finally:
        if trainer is not None:
            trainer.shards.release()
        forget_plugin(client, name, timeout)     # a hung worker never answers


class Graphs(NamedTuple):
    """What a replica compiles (`payload`, with its part `counts`) and the driver's parts."""
    payload: tuple
    counts: tuple[int, int, int]    # inputs, parameters, running statistics
    update_step: gc.Function        # the optimizer's update, fed the summed gradients
    state: list                     # every variable a replica holds (statistics last)
    eval_step: gc.Function
    pred_shape: tuple


def build(model, loss_fn, optimizer, x, y, l1: float, l2: float) -> Graphs:
    """The training graphs, as nn.fit builds them, cut where the workers' gradients meet.

    A replica computes [loss, pred, *grads, *new statistics] of its rows (the statistics are
    what the model's state updates, e.g. BatchNorm's running means, would assign).
    """
    xp, yp = train.placeholders(x, y)
    xps = train.as_list(xp)
    pred = model(*xps, training=True)
    data_loss = loss_fn(pred, yp)
    params = list(model.params)
    grad_inputs = [gc.placeholder(p.shape, p.dtype, name=f"grad/{p.name}") for p in params]
    updates = optimizer.updates(update_cost(model, params, grad_inputs, l1, l2), params)
    stats = list(getattr(model, "state_updates", ()))
    grads = gc.grad(data_loss, params)
    state = params + list(optimizer.variables) + [v for v, _ in stats]
    payload = pack([*xps, yp, data_loss, pred, *grads, *[new for _, new in stats],
                    *grad_inputs, *state], updates)
    return Graphs(payload, (len(xps), len(params), len(stats)),
                  gc.function(grad_inputs, [], updates=updates), state,
                  train.evaluation_step(model, loss_fn, xp, yp), pred.shape)


def update_cost(model, params, grad_inputs, l1: float, l2: float):
    """A cost whose gradient is the fed gradients plus regularization, for optimizer.updates.

    d/dp sum(p * g) = g, so the optimizer builds the same update graph as in nn.fit, with the
    summed gradients of the workers where nn.fit has the gradient of the data loss.
    """
    cost = losses_mod.total(gc.sum(p * g) for p, g in zip(params, grad_inputs))
    if l1:
        cost = cost + losses_mod.l1(model.kernels, l1)
    if l2:
        cost = cost + losses_mod.l2(model.kernels, l2)
    return cost


def check_inputs(x, y):
    """(x, y, y on the driver): NumPy arrays checked as nn.fit does, Dask arrays by shape.

    x is an array or a tuple of arrays (a model with several inputs), as for nn.fit.
    """
    inputs = list(x) if isinstance(x, tuple) else [x]
    if not any(is_dask(a) for a in inputs + [y]):
        x, y = train.check_data(x, y, "distributed.fit")
        return x, y, y
    sizes = [a.shape[0] for a in inputs + [y]]
    if any(np.isnan(n) for n in sizes):
        raise GraphcError("distributed.fit: the Dask arrays have unknown chunk sizes; call "
                          "x.compute_chunk_sizes() (and y's) first")
    if len(set(sizes)) != 1 or sizes[0] == 0:
        raise GraphcError(f"distributed.fit: {sizes[0]} examples but {sizes[-1]} targets"
                          + ("" if len(sizes) == 2 else f" (inputs: {sizes[:-1]})"))
    return x, y, np.asarray(y)


def train_epochs(trainer, eval_step, metric_fn, y, epochs, batch_size, validation_data, seed,
                 verbose, out):
    """nn.fit's epoch loop, with the trainer's step for the compiled training step;
    epochs: (initial_epoch, last epoch)."""
    history: dict[str, list[float]] = {"loss": []}
    n = len(y)
    rows = np.arange(n)     # run_batches indexes its "x" with the batch: here the rows
    initial_epoch, epochs = epochs
    for epoch, order in train.epoch_orders(n, epochs, initial_epoch, seed):
        trainer.take_in_new_workers()
        bar = None
        if verbose and train.tqdm is not None:
            bar = train.tqdm(total=-(-n // batch_size), desc=f"epoch {epoch}/{epochs}",
                             leave=False, file=sys.stderr, dynamic_ncols=True, disable=None)
        train_loss, outs = train.run_batches(lambda idx, _: trainer.step(idx), rows, rows,
                                             batch_size, order, bar)
        if bar is not None:
            bar.close()
        train.record(history, "", train_loss, metric_fn, outs, y[order])
        if validation_data is not None:
            vx, vy = validation_data
            val_loss, vouts = train.run_batches(eval_step, vx, vy, max(batch_size, 256))
            train.record(history, "val_", val_loss, metric_fn, vouts, vy)
        if verbose:
            print(f"epoch {epoch}/{epochs}  " + "  ".join(
                f"{k} {v[-1]:.4f}" for k, v in history.items()), file=out, flush=True)
    return history


def weighted_sum(total, parts, weight: float):
    """total + weight * parts, elementwise over lists of arrays (total None: the first)."""
    scaled = [a * weight for a in parts]
    return scaled if total is None else [t + a for t, a in zip(total, scaled)]


def live_workers(client, allowed=None) -> list[str]:
    """The addresses of the workers there now (among `allowed` when given), sorted."""
    live = sorted(w for w in client.ncores() if allowed is None or w in allowed)
    if not live:
        raise GraphcError("distributed.fit: no worker to train on" + (
            "" if allowed is None else f" among {sorted(allowed)}"))
    return live


class Trainer:
    """The driver's side of the steps: which worker gets which rows, recovery from lost ones.

    `version` counts the updates applied; a step's tasks carry the previous step's summed
    gradients (each replica applies them, then computes its gradients), or after a failure the
    driver's whole state, so replicas that missed a step are brought back in one message.
    """

    def __init__(self, client, name, graphs: Graphs, shards, allowed, timeout, retries, log):
        self.client, self.name, self.shards, self.allowed = client, name, shards, allowed
        self.update_step, self.state = graphs.update_step, graphs.state
        self.stat_vars = graphs.state[len(graphs.state) - graphs.counts[2]:]
        self.timeout, self.retries, self.log = timeout, retries, log
        self.workers = shards.workers
        self.version, self.pending, self.send_state = 0, None, False
        self.distributed = need_dask()

    def step(self, idx: np.ndarray):
        """One training step on the batch `idx`: (mean loss, predictions) as nn.fit's step.

        Gradients and new statistics are the row-weighted sums of the workers' (for the
        statistics, e.g. a running mean, that is the global batch's; a running variance
        leaves out the spread between the workers' means).
        """
        size, loss, grads, stats, pred = len(idx), 0.0, None, None, None
        for count, part_loss, part_pred, part_grads, part_stats, positions in self.run(idx):
            if count == 0:
                continue
            loss += part_loss * count / size
            grads = weighted_sum(grads, part_grads, count / size)
            stats = weighted_sum(stats, part_stats, count / size)
            if pred is None:
                pred = np.empty((size,) + part_pred.shape[1:], part_pred.dtype)
            pred[positions] = part_pred
        self.update_step(*grads)
        for var, value in zip(self.stat_vars, stats):
            var.value = value
        self.version, self.pending = self.version + 1, (grads, stats)
        return loss, pred

    def run(self, idx: np.ndarray):
        """Each worker's part of the step, recomputed on the remaining workers after a loss."""
        for attempt in range(self.retries + 1):
            try:
                return self.submit(idx)
            except WorkerLost as e:
                if attempt == self.retries:
                    raise GraphcError(f"distributed.fit: step {self.version + 1} failed "
                                      f"{attempt + 1} times; last: {e}") from None
                self.recover(e)

    def submit(self, idx: np.ndarray):
        from graphc.distributed import replica
        pending, state = self.pending, None
        if self.send_state:
            pending, state = None, [np.array(v.value) for v in self.state]
        shares = self.shards.split(idx, self.workers)
        futures = [self.client.submit(replica.train_step, self.name, self.version, pending,
                                      state, chunks, rows, workers=[w],
                                      allow_other_workers=False, pure=False)
                   for w, (chunks, rows, _) in shares.items()]
        results = self.gather(futures, list(shares))
        self.send_state = False
        return [r + (positions,) for r, (_, _, positions) in zip(results, shares.values())]

    def gather(self, futures, workers):
        """The futures' results; WorkerLost when a worker left or a task failed on its own,
        the worker's GraphcError when graphc refused (no retry can help), and no hang."""
        distributed = self.distributed
        deadline = time.monotonic() + self.timeout
        try:
            while True:
                try:
                    distributed.wait(futures, timeout=0.25)
                except TimeoutError:
                    pass
                for f in futures:
                    if f.status == "error":
                        exc = f.exception()
                        if isinstance(exc, GraphcError):
                            raise exc
                        raise WorkerLost(f"{type(exc).__name__}: {exc}")
                if all(f.status == "finished" for f in futures):
                    try:
                        return [f.result(timeout=1.0) for f in futures]
                    except TimeoutError:     # a result went with its worker: look who left
                        pass
                gone = sorted(set(workers) - set(self.client.ncores()))
                if gone:
                    raise WorkerLost(f"worker {', '.join(gone)} left")
                if time.monotonic() > deadline:
                    raise GraphcError(f"distributed.fit: step {self.version + 1} did not "
                                      f"finish within timeout={self.timeout:g} s")
        except GraphcError:
            self.client.cancel(futures)
            raise
        except Exception as e:       # noqa: BLE001 - a result lost with its worker, a cancel
            self.client.cancel(futures)
            raise e if isinstance(e, WorkerLost) else WorkerLost(f"{type(e).__name__}: {e}")

    def recover(self, error: WorkerLost) -> None:
        """Continue on the workers still there: their rows move, every replica gets the state."""
        try:
            self.client.wait_for_workers(1, timeout=self.timeout)
        except Exception:            # noqa: BLE001 - dask's TimeoutError
            raise GraphcError(f"distributed.fit: no worker left ({error})") from None
        self.workers = live_workers(self.client, self.allowed)
        self.shards.reassign(self.workers)
        self.send_state = True
        if self.log is not None:
            print(f"step {self.version + 1}: {error}; recomputing it on "
                  f"{len(self.workers)} worker(s)", file=self.log, flush=True)

    def take_in_new_workers(self) -> None:
        """At an epoch's start, spread the rows over the workers there now (new ones too)."""
        live = live_workers(self.client, self.allowed)
        if live and live != self.workers:
            self.workers = live
            self.shards.reassign(live, rebalance=True)
            self.send_state = True

    def check_replicas(self) -> None:
        """Bring every replica to the final version and check it holds the driver's values."""
        from graphc.distributed import replica
        self.run(np.empty(0, np.int64))
        futures = [self.client.submit(replica.replica_state, self.name, workers=[w],
                                      allow_other_workers=False, pure=False)
                   for w in self.workers]
        try:
            states = self.gather(futures, self.workers)
        except WorkerLost:         # training is done and the driver holds the result
            return
        mine = [np.asarray(v.value) for v in self.state]
        for w, (version, values) in zip(self.workers, states):
            worst = max((float(np.max(np.abs(a - b), initial=0.0))
                         for a, b in zip(values, mine)), default=0.0)
            if version != self.version or not all(
                    np.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(values, mine)):
                raise GraphcError(f"distributed.fit: the replica on {w} diverged from the "
                                  f"driver's model (version {version} of {self.version}, "
                                  f"max abs difference {worst:.3g})")

