"""Values meeting declared types: a feed against its placeholder, a Python value against the
dtype it becomes, a run-time shape against the broadcasts the graph declares. Below ir.py (it
reads nodes' attributes, never builds them): the interpreter, the compiled call's guard,
`nn.fit` and Node.assign all check values here, so they refuse the same inputs alike."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from graphc.listing import format_shape
from graphc.opdef import GraphcError
from graphc.scope import user_line

if TYPE_CHECKING:
    from graphc.ir import Node


def short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_feed(ph: Node, value) -> np.ndarray:
    """The fed value as an array of the placeholder's dtype and rank, or a clear error that
    names the user's line (the call) and where the placeholder was built: it named neither."""
    try:
        return checked_feed(ph, value)
    except GraphcError as e:
        raise GraphcError(f"{e}\n  at {user_line()} (placeholder built at {ph.where})") \
            from None


def checked_feed(ph: Node, value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if type(value) is not np.ndarray:   # np.matrix, masked: the plan runs plain arrays
            value = np.asarray(value)
        if value.dtype != ph.dtype and not np.can_cast(value.dtype, ph.dtype, "safe"):
            raise GraphcError(f"feed for placeholder {ph.label()}: expected dtype "
                              f"{ph.dtype.name}, got {value.dtype.name} (cast it first, e.g. "
                              f"x.astype('{ph.dtype.name}'))")
        arr = value.astype(ph.dtype, copy=False)
    else:
        try:
            raw = np.asarray(value)
            if raw.dtype == object:       # None would become NaN, a huge int overflow
                raise GraphcError(f"feed for placeholder {ph.label()}: expected numbers of "
                                  f"dtype {ph.dtype.name}, got {short_repr(value)}")
            with np.errstate(all="ignore"):
                arr = raw.astype(ph.dtype, copy=False)
            if arr is not raw and not fits(raw, arr):
                raise GraphcError(f"feed for placeholder {ph.label()}: {short_repr(value)} "
                                  f"does not fit dtype {ph.dtype.name} (as an array it is "
                                  f"{raw.dtype.name}; cast it first if that is meant)")
        except (TypeError, ValueError) as e:
            raise GraphcError(f"feed for placeholder {ph.label()}: {e}") from None
    if arr.ndim != len(ph.shape) or any(isinstance(d, int) and d != n
                                        for d, n in zip(ph.shape, arr.shape)):
        raise GraphcError(f"feed for placeholder {ph.label()}: expected shape "
                          f"{format_shape(ph.shape)}, got {format_shape(arr.shape)}")
    return arr


def fits(raw: np.ndarray, arr: np.ndarray) -> bool:
    """A Python value converted keeps its values: integers and truth values exactly (300 is
    not 44 in int8, nor label 1.5 label 1), floats up to rounding (1e5 is not inf in float16)."""
    if arr.dtype.kind in "biu":
        return bool(np.array_equal(arr, raw))
    if raw.dtype == object:     # Python ints past int64 (2**70): finite, as floats too
        raw = raw.astype(np.float64)
    return arr.dtype.kind != "f" or not (np.isinf(arr) & np.isfinite(raw)).any()


def refuse_unknown_broadcast(n: Node, shapes: Sequence[tuple], out: tuple) -> None:
    """An elementwise n whose input has a dim known only at run time (None or a name) that
    is 1 there against a larger result (x (None, 3) fed (1, 3) times y (None, 3) fed (4, 3)):
    NumPy would broadcast it, but gradients sum only over the broadcasts the graph shows and
    the optimizer takes such an input's shape for the result's. Refused, naming the op."""
    for x, shape in zip(n.inputs, shapes):
        if shape == out or 1 not in shape:
            continue
        lead = len(out) - len(shape)
        for k, d in enumerate(x.shape):
            if shape[k] == 1 and out[lead + k] != 1 and not isinstance(d, int):
                got = ", ".join(format_shape(s) for s in shapes)
                raise GraphcError(
                    f"{n.op}({got}): the input declared {format_shape(x.shape)} is 1 along "
                    f"axis {k}, known only at run time, against {out[lead + k]} (dims known "
                    f"only at run time do not broadcast: declare it 1)\n  at {n.where}")


def check_result(n: Node, out: np.ndarray, shape: tuple) -> None:
    """A kernel's value has its node's dtype and `shape` (the node's, or its rule's at the run's
    shapes): a user's kernel returning x[:1] or float64 flowed on as another shape or dtype
    than the graph declares."""
    if out.dtype != n.dtype or out.ndim != len(shape) or any(
            isinstance(d, int) and d != k for d, k in zip(shape, out.shape)):
        raise GraphcError(f"the kernel of {n.op} returned {format_shape(out.shape)} "
                          f"{out.dtype.name}, but its shape rule gives "
                          f"{format_shape(shape)} {n.dtype.name}\n  at {n.where}")


def checked_kernel(kernel, n: Node, shape: tuple, *args, rule: tuple | None = None) -> np.ndarray:
    """A user's kernel as a compiled step calls it: its value checked as `evaluate` checks it,
    against the plan's shape for the node (the buffers of the steps after it have that shape:
    another would be broadcast into them). `rule`: the rule's shape when it leaves a dim to
    the values (the plan took the first call's): another such shape is refused as that, not
    as a broken rule (eval runs it)."""
    out = kernel(*args)
    out = out if isinstance(out, np.ndarray) else np.asarray(out, n.dtype)
    if rule is not None and out.shape != shape and out.dtype == n.dtype and out.ndim == len(
            rule) and all(not isinstance(d, int) or d == k for d, k in zip(rule, out.shape)):
        raise GraphcError(f"the kernel of {n.op} returned {format_shape(out.shape)}, where "
                          f"this compiled plan has {format_shape(shape)}: its shape rule gives "
                          f"{format_shape(rule)}, a shape the values decide, which a compiled "
                          f"function takes from the first call of each input shape (eval "
                          f"runs it; a rule giving every dim from the shapes compiles)"
                          f"\n  at {n.where}")
    check_result(n, out, shape)
    return out
