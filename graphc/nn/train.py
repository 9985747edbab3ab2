"""The training loop: compile one training step and one evaluation step, run them over batches.

`fit` builds the training graph (`model(x, training=True)`, loss, regularization, the
optimizer's updates) and the evaluation graph (`model(x, training=False)`) over the same
variables, compiles each once with gc.function, and reports per-epoch loss and accuracy.
"""
from __future__ import annotations

import sys
from typing import Callable

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, check_feed
from graphc.nn import losses as losses_mod
from graphc.nn.module import Layer, whole
from graphc.opdef import OPS
from graphc.scope import user_line

try:
    from tqdm import tqdm
except ImportError:          # the progress bar is optional
    tqdm = None


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    """Fraction right: argmax over the last axis for several classes (per token for
    (N, T, classes) against (N, T)), threshold 0.5 for one column (probabilities)."""
    pred, y = np.asarray(pred), np.asarray(y)
    if pred.ndim >= 2 and pred.shape[-1] > 1:
        labels = y if y.ndim == pred.ndim - 1 else y.argmax(axis=-1)
        return float(np.mean(pred.argmax(axis=-1) == labels))
    return float(np.mean((pred.reshape(len(y), -1) > 0.5) == (y.reshape(len(y), -1) > 0.5)))


def pick_metric(metric, out_shape, y: np.ndarray) -> Callable | None:
    """'auto': accuracy for classes (several outputs, or 0/1 targets), none for regression."""
    if metric == "accuracy":
        return accuracy
    if metric != "auto":
        return metric
    if len(out_shape) >= 2 and out_shape[-1] not in (None, 1) and y.ndim >= len(out_shape) - 1:
        # targets of the prediction's shape are one-hot or probabilities (in [0, 1]); others
        # are a regression of several outputs, whose "accuracy" compared argmaxes
        if y.ndim == len(out_shape) - 1 or y.size == 0 or (y.min() >= 0 and y.max() <= 1):
            return accuracy
        return None
    if np.isin(y, (0, 1)).all():
        return accuracy
    return None


def placeholders(x, y: np.ndarray):
    """Placeholders for batches of x and y (the batch size is free); for a tuple of input
    arrays (a model with several inputs) a list of placeholders, 'x0', 'x1'..."""
    return (input_placeholders(x),
            gc.placeholder((None,) + y.shape[1:], dtype=y.dtype, name="y"))


def input_placeholders(x):
    if isinstance(x, tuple):
        return [gc.placeholder((None,) + a.shape[1:], dtype=a.dtype, name=f"x{i}")
                for i, a in enumerate(x)]
    return gc.placeholder((None,) + x.shape[1:], dtype=x.dtype, name="x")


def as_list(xp) -> list:
    """The model's input placeholders as a list (one placeholder, or several)."""
    return list(xp) if isinstance(xp, (list, tuple)) else [xp]


def as_inputs(x, what: str):
    """An array, or a tuple of arrays for a model with several inputs (a list is one array,
    as NumPy reads it)."""
    if isinstance(x, tuple):
        x = tuple(np.asarray(a) for a in x)
        if len({len(a) for a in x}) != 1:
            raise GraphcError(f"{what}: the inputs have different numbers of examples "
                              f"{[len(a) for a in x]}\n  at {user_line()}")
        return x
    return np.asarray(x)


def rows(x, idx):
    return tuple(a[idx] for a in x) if isinstance(x, tuple) else (x[idx],)


def count(x) -> int:
    return len(x[0]) if isinstance(x, tuple) else len(x)


def batches(n: int, batch_size: int, order: np.ndarray | None = None):
    """Index arrays of consecutive batches; the last one may be smaller."""
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def run_batches(step, x, y, batch_size: int, order=None, bar=None):
    """Run `step(xb, yb) -> (loss, out)` over batches: (mean loss, all outputs)."""
    total, outs = 0.0, []
    for idx in batches(count(x), batch_size, order):
        loss, out = step(*rows(x, idx), y[idx])
        total += float(loss) * len(idx)
        outs.append(np.asarray(out))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
    return total / count(x), np.concatenate(outs)


def check_model(model, what: str, optimizer=None) -> None:
    """A layer or model, or an object that acts as one (called with `training=`, listing
    `params`); a plain function failed with TypeError "unexpected keyword argument
    'training'". And an optimizer object (nn.SGD, the class, or "adam", failed in
    `updates` with TypeError / AttributeError)."""
    if not isinstance(model, Layer) and not (callable(model) and hasattr(model, "params")):
        raise GraphcError(f"{what}: the model must be an nn layer or model (nn.Sequential, "
                          f"a subclass of nn.Model), got {type(model).__name__}\n"
                          f"  at {user_line()}")
    if optimizer is not None and (isinstance(optimizer, type)
                                  or not callable(getattr(optimizer, "updates", None))):
        name = getattr(optimizer, "__name__", None) or repr(optimizer)
        raise GraphcError(f"{what}: the optimizer must be an optimizer object, e.g. "
                          f"nn.Adam(1e-3) or nn.SGD(0.1), got {name}\n  at {user_line()}")


def check_data(x, y, what: str):
    for name, a in (("x", x), ("y", y)):
        for part in (a if isinstance(a, tuple) else (a,)):
            if isinstance(part, gc.Node) or np.ndim(part) == 0:   # len() failed: TypeError
                raise GraphcError(f"{what}: {name} must be an array of examples (or, for x, a "
                                  f"tuple of them), got {part!r}\n  at {user_line()}")
    listed = isinstance(x, list)
    x, y = as_inputs(x, what), np.asarray(y)
    if count(x) != len(y):
        hint = " (x is a list: one array, as NumPy reads it; the inputs of a model with " \
               "several are a tuple)" if listed else ""
        raise GraphcError(f"{what}: {count(x)} examples but {len(y)} targets{hint}\n"
                          f"  at {user_line()}")
    if count(x) == 0:                    # said as "0 examples but 0 targets" before
        raise GraphcError(f"{what}: no examples (x and y are empty)\n  at {user_line()}")
    return x, y


def fit(model, loss, optimizer, x, y, epochs: int = 10, batch_size: int = 32,
        validation_data=None, seed: int = 0, l1: float = 0.0, l2: float = 0.0,
        metric="auto", verbose: int = 1, out=None,
        initial_epoch: int = 0) -> dict[str, list[float]]:
    """Train `model` on (x, y); returns the history {'loss': [...], 'accuracy': [...], ...}.

    `loss` is a name ('softmax_cross_entropy', 'mse', 'binary_cross_entropy') or a function
    (pred, target) -> scalar node; l1/l2 add regularization of the model's kernels. x is an
    array, or a tuple of arrays for a model called on several inputs (`model(x0, x1)`). The
    model's state updates (BatchNorm's running statistics) run with each step. Batches
    are reshuffled each epoch with a generator seeded by `seed`. verbose: 0 silent, 1 a
    progress bar and one line per epoch. `initial_epoch` resumes (Keras's meaning): epochs
    initial_epoch + 1 .. epochs run, with the batches they have in one uninterrupted fit, and
    the optimizer continues from its state, so fit(epochs=2) equals fit(epochs=1) followed by
    fit(epochs=2, initial_epoch=1) (also after save_params/load_params of model and optimizer).
    """
    check_model(model, "fit", optimizer)
    x, y = check_data(x, y, "fit")
    batch_size = whole(batch_size, "fit: batch_size")
    orders = epoch_orders(count(x), epochs, initial_epoch, seed)
    loss_fn = losses_mod.get(loss)
    xp, yp = placeholders(x, y)
    if validation_data is not None:
        validation_data = check_validation(validation_data, xp, yp)
    pred = model(*as_list(xp), training=True)
    data_loss = loss_fn(pred, yp)
    cost = data_loss
    if l1:
        cost = cost + losses_mod.l1(model.kernels, l1)
    if l2:
        cost = cost + losses_mod.l2(model.kernels, l2)
    updates = optimizer.updates(cost, model.params) + list(model.state_updates)
    train_step = gc.function([*as_list(xp), yp], [data_loss, pred], updates=updates)
    eval_step = evaluation_step(model, loss_fn, xp, yp)
    metric_fn = pick_metric(metric, pred.shape, y)

    history: dict[str, list[float]] = {"loss": []}
    out = out or sys.stdout
    n_batches = -(-count(x) // batch_size)
    for epoch, order in orders:
        reseed(train_step, epoch)
        bar = None
        if verbose and tqdm is not None:
            bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", leave=False,
                       file=sys.stderr, dynamic_ncols=True, disable=None)   # None: tty only
        train_loss, outs = run_batches(train_step, x, y, batch_size, order, bar)
        if bar is not None:
            bar.close()
        record(history, "", train_loss, metric_fn, outs, y[order])
        if validation_data is not None:
            vx, vy = validation_data
            val_loss, vouts = run_batches(eval_step, vx, vy, max(batch_size, 256))
            record(history, "val_", val_loss, metric_fn, vouts, vy)
        if verbose:
            print(f"epoch {epoch}/{epochs}  " + "  ".join(
                f"{k} {v[-1]:.4f}" for k, v in history.items()), file=out, flush=True)
    return history


def check_validation(data, xp, yp):
    """validation_data checked against the training placeholders before the first step: a
    pair of the wrong shape or dtype failed after the first epoch had trained the model."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise GraphcError(f"fit: validation_data must be a pair (x, y), got "
                          f"{type(data).__name__}\n  at {user_line()}")
    vx, vy = check_data(*data, "fit validation_data")
    parts = list(vx) if isinstance(vx, tuple) else [vx]
    if len(parts) != len(as_list(xp)):
        raise GraphcError(f"fit validation_data: {len(parts)} inputs, but the model is "
                          f"trained on {len(as_list(xp))}\n  at {user_line()}")
    for ph, part in zip(as_list(xp) + [yp], parts + [vy]):
        try:
            check_feed(ph, part[:1])
        except GraphcError as e:
            raise GraphcError(f"fit validation_data: {e}") from None
    return vx, vy


def epoch_orders(n: int, epochs: int, initial_epoch: int, seed: int):
    """(epoch, order of the rows) from initial_epoch + 1 to epochs; the orders of the epochs
    skipped are drawn too, so a resumed fit shuffles as the uninterrupted one did."""
    epochs = whole(epochs, "fit: epochs", least=0)       # checked now, before any step runs
    seed = whole(seed, "fit: seed", least=0)
    initial_epoch = whole(initial_epoch, "fit: initial_epoch", least=0)
    return shuffled(n, epochs, initial_epoch, seed)


def shuffled(n: int, epochs: int, initial_epoch: int, seed: int):
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        if epoch > initial_epoch:
            yield epoch, order


def reseed(step: gc.Function, epoch: int) -> None:
    """Start the generators of step's random ops (Dropout's masks) at (their seed, the
    epoch): each fit compiles a new step whose generators started at the seed again, so a
    resumed or continued fit drew the masks of its first epoch where the uninterrupted one
    drew those of its later epochs. Ops without a seed keep drawing from the OS's entropy."""
    for n in step.graph.nodes:
        seed = n.attrs.get("seed")
        if getattr(OPS.get(n.op), "random", False) and seed is not None:
            start = np.random.default_rng([seed, epoch]).bit_generator.state
            step.rngs.setdefault(id(n), np.random.default_rng(seed)).bit_generator.state = start


def record(history, prefix, loss, metric_fn, outs, y):
    history.setdefault(prefix + "loss", []).append(loss)
    if metric_fn is not None:
        history.setdefault(prefix + "accuracy", []).append(metric_fn(outs, y))


def evaluation_step(model, loss_fn, xp, yp):
    pred = model(*as_list(xp), training=False)
    return gc.function([*as_list(xp), yp], [loss_fn(pred, yp), pred])


def evaluate(model, loss, x, y, batch_size: int = 256, metric="auto") -> dict[str, float]:
    """Loss (and accuracy for classification) of the model in evaluation mode."""
    check_model(model, "evaluate")
    x, y = check_data(x, y, "evaluate")
    batch_size = whole(batch_size, "evaluate: batch_size")
    loss_fn = losses_mod.get(loss)
    xp, yp = placeholders(x, y)
    step = evaluation_step(model, loss_fn, xp, yp)
    value, outs = run_batches(step, x, y, batch_size)
    result = {"loss": value}
    metric_fn = pick_metric(metric, outs.shape, y)
    if metric_fn is not None:
        result["accuracy"] = metric_fn(outs, y)
    return result


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """The model's outputs in evaluation mode, batch by batch (x: an array or a tuple)."""
    check_model(model, "predict")
    x = as_inputs(x, "predict")
    batch_size = whole(batch_size, "predict: batch_size")
    xp = as_list(input_placeholders(x))
    step = gc.function(xp, model(*xp, training=False))
    parts = [np.asarray(step(*rows(x, idx))) for idx in batches(count(x), batch_size)]
    # no rows: the outputs of an empty batch, (0, classes) (was a bare ValueError)
    return np.concatenate(parts) if parts else np.asarray(step(*rows(x, slice(0, 0))))
