"""Lowering as data: how each op becomes code, as one table.

An entry says what kind of step the op is ("view": an expression that may share memory with
its inputs; "buffer": NumPy calls writing a planned buffer with out=), when its fast form
applies (`ok`; otherwise the step calls the op's registered kernel), and how to write its code.
Elementwise ops need no entry: any op with a template in emit.py (derived from a ufunc kernel)
lowers through `ELEMENTWISE`. Families of ops that lower together (softmax cross-entropy
forward and backward; convolutions, pooling and their gradients) are explicit entries naming
their family, whose per-plan state (pairs, workspaces) lives in one object per plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphc.ir import OPS
from graphc.runtime import emit, lower_conv, rules


@dataclass(frozen=True)
class Lower:
    kind: str                                 # "view" or "buffer"
    code: Callable                            # code(low, n, a, o) -> the step's line
    ok: Callable | None = None                # ok(low, n): the fast form applies here
    family: str | None = None                 # shares per-plan state with its family
    fresh: bool = False                       # its kernel returns a new array (no view)
    raises: bool = False                      # may raise on valid shapes (label checks):
                                              # no variable is written before it


class SoftmaxCE:
    """The forward step keeps exp(z - max) and its row sums; the gradient step of the same
    logits and labels is then one multiply and one scatter."""

    def __init__(self):
        self.pair: dict[int, object] = {}     # gradient id -> its forward node
        self.probs: dict[int, tuple] = {}     # forward id -> (e, sums, rows) constants

    def before(self, low) -> None:
        index = {id(n): i for i, n in enumerate(low.graph.nodes)}
        fwd = {(id(n.inputs[0]), id(n.inputs[1])): n for n in low.graph.nodes
               if n.op == "softmax_cross_entropy" and self.forward_ok(low, n)}
        for n in low.graph.nodes:
            if n.op == "softmax_cross_entropy_grad":
                f = fwd.get((id(n.inputs[0]), id(n.inputs[1])))
                if f is not None and index[id(f)] < index[id(n)] \
                        and low.shapes[id(n.inputs[2])][1] == n.dtype == f.dtype:
                    self.pair[id(n)] = f

    def after(self, low, kinds: dict) -> None:
        pass

    @staticmethod
    def forward_ok(low, n) -> bool:
        z, y = n.inputs
        return y.dtype.kind in "iu" and z.ndim == 2 and z.dtype.kind == "f"

    def backward_ok(self, low, n) -> bool:
        return id(n) in self.pair

    def forward(self, low, n, a: list[str], o: str) -> str:
        rows, classes = low.shapes[id(n.inputs[0])][0]
        p = low.const(np.empty((rows, classes), n.dtype))
        mx, s = low.const(np.empty((rows, 1), n.dtype)), low.const(np.empty(rows, n.dtype))
        starts, at = low.const(np.arange(rows) * classes), low.const(np.empty(rows, np.int64))
        self.probs[id(n)] = (p, s, at)
        return f"xp.sce_forward({a[0]}, {a[1]}, {o}, {p}, {mx}, {s}, {starts}, {at})"

    def backward(self, low, n, a: list[str], o: str) -> str:
        p, s, at = self.probs[id(self.pair[id(n)])]
        return f"xp.sce_backward({p}, {s}, {at}, {a[2]}, {o})"


FAMILIES = {"softmax_ce": SoftmaxCE, "conv": lower_conv.ConvStack}


def same_dtypes(low, n) -> bool:
    return len({low.shapes[id(x)][1] for x in n.inputs} | {n.dtype}) == 1


def float_same(low, n) -> bool:
    return same_dtypes(low, n) and n.dtype.kind == "f"


def family_call(family: str, method: str) -> Callable:
    return lambda low, n, *rest: getattr(low.families[family], method)(low, n, *rest)


def view(low, n, a, o=None):
    return rules.view_code(low, n, a)


TABLE: dict[str, Lower] = {
    **{op: Lower("view", view) for op in ("transpose", "reshape", "broadcast_to")},
    "size": Lower("view", view, fresh=True),
    "dense": Lower("buffer", rules.dense_code, same_dtypes),
    "matmul": Lower("buffer", lambda low, n, a, o: f"xp.matmul({a[0]}, {a[1]}, out={o})",
                    lambda low, n: same_dtypes(low, n) and min(x.ndim for x in n.inputs) >= 2,
                    fresh=True),
    "sum": Lower("buffer", rules.sum_code, float_same, fresh=True),
    "fused": Lower("buffer", lambda low, n, a, o: low.emit_fused(n, a, o),
                   lambda low, n: low.fused_ok(n)),
    "softmax_cross_entropy": Lower("buffer", family_call("softmax_ce", "forward"),
                                   SoftmaxCE.forward_ok, "softmax_ce", fresh=True, raises=True),
    "softmax_cross_entropy_grad": Lower("buffer", family_call("softmax_ce", "backward"),
                                        family_call("softmax_ce", "backward_ok"), "softmax_ce",
                                        fresh=True, raises=True),
    **{op: Lower("buffer", family_call("conv", "code"), float_same, "conv", fresh=True)
       for op in lower_conv.OPS},
}

FRESH = {op for op, e in TABLE.items() if e.fresh}
RAISING = {op for op, e in TABLE.items() if e.raises}

ELEMENTWISE = Lower("buffer", lambda low, n, a, o: rules.elementwise_code(
    low, n, a, o, lambda x: low.shapes[id(x)][0]),
    lambda low, n: emit.ufunc_ok(n, [low.shapes[id(x)][1] for x in n.inputs]))


def entry(op: str) -> Lower | None:
    """The op's lowering; None: its kernel is called."""
    if op in TABLE:
        return TABLE[op]
    return ELEMENTWISE if emit.template(op) is not None else None


def classify(low, n) -> str:
    """"view", "buffer" (the fast form applies) or "kernel" (a call of the op's kernel)."""
    e = entry(n.op)
    if e is None:
        return "kernel"
    if e.kind == "view":
        return "view"
    return "buffer" if e.ok is None or e.ok(low, n) else "kernel"


def code(low, n, a: list[str], o: str) -> str:
    return entry(n.op).code(low, n, a, o)


def why_kernel(low, n) -> str:
    """Why a step calls a kernel (for the plan report): the op has no fast form, or this
    node is not on it (dtypes, ranks), or a fused group runs through the interpreter."""
    if n.op == "fused":
        for b in n.attrs["body"].nodes:
            if b.inputs:
                dts = [low.shapes[(id(n), id(x))][1] for x in b.inputs]
                if not emit.ufunc_ok(b, dts, in_group=True):
                    return f"interpreter (fused group): {emit.why_not(b, dts)}"
        return "interpreter (fused group): its output is an input"
    dts = [low.shapes[id(x)][1] for x in n.inputs]
    if OPS[n.op].elementwise:
        return emit.why_not(n, dts)
    if n.op in TABLE:
        names = ", ".join(np.dtype(d).name for d in dts)
        return f"not on the fast path here (inputs {names} -> {n.dtype.name}, " \
               f"ranks {[x.ndim for x in n.inputs]})"
    return "no fast lowering: the op's own NumPy kernel"
