"""Losses (each the mean over the batch, a scalar node) and regularization terms."""
from __future__ import annotations

from typing import Sequence

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn.module import hyper
from graphc.scope import user_line


def check_ranks(what: str, pred: Node, target) -> None:
    """(n, 1) against (n,) would broadcast to (n, n): a silent classic, so refuse it; so is a
    target that widens the prediction ((n, 1) against (n, 2): the loss of each prediction
    against both targets, averaged)."""
    if not isinstance(target, Node):
        return
    if target.ndim != pred.ndim:
        raise GraphcError(f"{what}: prediction {format_shape(pred.shape)} and target "
                          f"{format_shape(target.shape)} have different ranks; reshape the "
                          f"target (e.g. y.reshape(-1, 1)) (built at {pred.where})")
    if any(p == 1 and isinstance(t, int) and t > 1 for p, t in zip(pred.shape, target.shape)):
        raise GraphcError(f"{what}: the target {format_shape(target.shape)} would broadcast "
                          f"the prediction {format_shape(pred.shape)} to a larger shape; they "
                          f"should have the same shape (built at {pred.where})")


def mse(pred: Node, target) -> Node:
    """Mean squared error over every element."""
    check_ranks("mse", pred, target)
    with gc.name_scope("mse"):
        diff = pred - target
        return gc.mean(diff * diff)


def binary_cross_entropy(p: Node, y, from_logits: bool = False, eps: float = 1e-7) -> Node:
    """Mean binary cross-entropy of probabilities p (or logits) against 0/1 targets y.

    When p is a sigmoid node, the loss is computed from its logits (stable, as Keras does);
    other probabilities are clipped to [eps, 1 - eps] so a saturated p gives no log(0).
    """
    check_ranks("binary_cross_entropy", p, y)
    with gc.name_scope("binary_cross_entropy"):
        if not from_logits and p.op == "sigmoid":
            p, from_logits = p.inputs[0], True
        elif not from_logits:
            p = gc.minimum(gc.maximum(p, eps), 1.0 - eps)
        return gc.mean(gc.binary_cross_entropy(p, y, from_logits=from_logits))


def softmax_cross_entropy(logits: Node, labels) -> Node:
    """Mean cross-entropy of softmax(logits) against integer or one-hot labels."""
    with gc.name_scope("softmax_cross_entropy"):
        return gc.mean(gc.softmax_cross_entropy(logits, labels))


def l1(params: Sequence[Node], scale: float) -> Node:
    """scale * sum |w| over every weight of every parameter."""
    scale = hyper(scale, "l1")
    with gc.name_scope("l1"):
        return scale * total(gc.sum(gc.abs(p)) for p in params)


def l2(params: Sequence[Node], scale: float) -> Node:
    """scale * sum w^2 over every weight of every parameter (weight decay)."""
    scale = hyper(scale, "l2")
    with gc.name_scope("l2"):
        return scale * total(gc.sum(p * p) for p in params)


def total(terms) -> Node:
    terms = list(terms)
    if not terms:
        raise GraphcError("regularization needs at least one parameter (call the model first)")
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out


LOSSES = {"mse": mse, "binary_cross_entropy": binary_cross_entropy,
          "softmax_cross_entropy": softmax_cross_entropy}


def get(loss) -> callable:
    """A loss function from its name or the callable itself."""
    if callable(loss):
        return loss
    try:
        return LOSSES[loss]
    except KeyError:
        raise GraphcError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)} "
                          f"or pass a function (pred, target) -> scalar node\n"
                          f"  at {user_line()}") from None
