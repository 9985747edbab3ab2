"""Small helpers the rule tables are written with: constant tests, shape fitting, zeros."""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Node, apply, constant


CONSTANT = ("constant",)    # Rule.needs of rules that test for a constant (glue over one counts)


def const_value(n: Node) -> np.ndarray | None:
    """The value of a constant, seen through broadcast_to, reshape and cast (a cast changes
    values: -1 in uint8 is 255, 0.4 in int64 is 0); None if not constant."""
    casts = []
    while n.inputs and OPS[n.op].glue:
        if n.op == "cast":
            casts.append(n.dtype)
        n = n.inputs[0]
    if n.op != "constant":
        return None
    return cast_value(n.data, casts) if casts else n.data


def cast_value(arr: np.ndarray, casts: list) -> np.ndarray:
    """arr through casts (the outermost first in the list), as the cast kernel computes."""
    with np.errstate(all="ignore"):
        for dtype in reversed(casts):
            arr = arr.astype(dtype)
    return arr


def is_value(n: Node, v: float) -> bool:
    """n is a constant whose every element equals v."""
    casts = None
    while n.inputs and OPS[n.op].glue:      # const_value, inlined (every rule asks)
        if n.op == "cast":
            casts = (casts or []) + [n.dtype]
        n = n.inputs[0]
    if n.op != "constant":
        return False
    arr = n.data if casts is None else cast_value(n.data, casts)
    if arr.size == 0:
        return False
    return bool(arr.flat[0] == v) if arr.size == 1 else bool(np.all(arr == v))


def positive(x: Node, depth: int = 4) -> bool:
    """x is > 0 in exact arithmetic (it may still round to 0): safe to cancel as a divisor.
    Known positive ops, 1 - sigmoid, and products, quotients, sums and broadcasts of those."""
    if x.inputs and OPS[x.op].positive:
        return True
    if x.op == "sub" and is_value(x.inputs[0], 1) and x.inputs[1].op == "sigmoid":
        return True                                   # 1 - sigmoid(z) = sigmoid(-z)
    if depth == 0 or x.op not in ("mul", "div", "add", "sum", "broadcast_to", "reshape"):
        return False
    args = x.inputs[:1] if x.op in ("sum", "broadcast_to", "reshape") else x.inputs
    return all(positive(a, depth - 1) for a in args)


def static(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def fit(x: Node | None, n: Node) -> Node | None:
    """x given n's dtype and shape (cast, broadcast), or None when the shape cannot be known."""
    if x is None:
        return None
    if x.dtype != n.dtype:
        x = apply("cast", x, dtype=n.dtype.name)
    if x.shape == n.shape:
        return x
    if static(n.shape):
        return apply("broadcast_to", x, shape=n.shape)
    like = next((i for i in n.inputs if i.shape == n.shape), None)
    return apply("broadcast_to", x, like) if like is not None else None


def zeros(n: Node) -> Node | None:
    """Zeros of n's shape and dtype (a broadcast scalar)."""
    return fit(constant(np.zeros((), n.dtype)), n)


LEAF_RANK = {"placeholder": 1, "variable": 2, "constant": 3}


def order_key(x: Node) -> tuple:
    """Canonical operand order for commutative ops: computed values, then placeholders,
    variables and constants (so `x @ W + b` stays in that order), each in build order."""
    return (LEAF_RANK.get(x.op, 0), x.id)
