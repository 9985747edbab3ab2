"""Reverse-mode gradients as graphs: a reverse walk over each op's VJP rule.

Gradient nodes are ordinary nodes built inside `backward_of(node)`, so they record the forward
node they belong to; broadcasting is undone here, in one place, not in the rules.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from graphc.ir import GraphcError, Node, apply, as_node, backward_of, constant, evaluate, \
    format_shape, lines_below, paused_gc, toposort
from graphc.ops import fused
from graphc.scope import user_line


def unbroadcast(g: Node, x: Node) -> Node:
    """Sum g (of a broadcast result's shape) back to x's shape."""
    if g.shape == x.shape:
        return g
    lead = g.ndim - x.ndim
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(x.shape) if d == 1 and g.shape[lead + i] != 1)
    if axes:
        g = apply("sum", g, axis=axes, keepdims=False)
    if g.shape != x.shape:
        g = apply("reshape", g, x)
    return g


def conform(t: Node, like: Node) -> Node:
    """t broadcast to like's shape, unless it already is that shape (a known size standing
    for an unknown one counts: a fed (4, 3) tangent fits a (None, 3) placeholder)."""
    if t.ndim == like.ndim and all(a == b or not isinstance(a, int) or not isinstance(b, int)
                                   for a, b in zip(t.shape, like.shape)):
        return t
    return apply("broadcast_to", t, like)


def zeros_like(x: Node) -> Node:
    return apply("broadcast_to", as_node(0, like=x), x)


def differentiable(x: Node) -> bool:
    return x.dtype.kind == "f"


def vjp(outputs: Sequence[Node] | Node, wrt: Sequence[Node] | Node,
        cotangents: Sequence | object, disconnected: str = "zero",
        leaves: bool = False) -> list[Node] | Node:
    """Gradients of sum(outputs[i] * cotangents[i]) with respect to each of `wrt`. With
    `leaves`, partial ones: a gradient stops at a `wrt` node instead of going on to the
    nodes it is made from (a loop body's captured values, W and W.T, are its inputs each)."""
    # a big walk makes many nodes and no cycles to collect; its nodes share one user line
    with paused_gc(), lines_below(sys._getframe()):
        return reverse_walk(outputs, wrt, cotangents, disconnected, leaves)


def reverse_walk(outputs, wrt, cotangents, disconnected: str,
                 leaves: bool = False) -> list[Node] | Node:
    single = isinstance(wrt, Node)
    try:                   # grad(cost, None), vjp(None, ...): TypeError "not iterable"
        wrt = [wrt] if single else list(wrt)
        outputs = [outputs] if isinstance(outputs, Node) else list(outputs)
    except TypeError:
        bad = wrt if not isinstance(wrt, list) else outputs
        raise GraphcError(f"grad/vjp: expected a node or a list of nodes, got "
                          f"{type(bad).__name__}\n  at {user_line()}") from None
    cotangents = [cotangents] if not isinstance(cotangents, (list, tuple)) else list(cotangents)
    if len(cotangents) != len(outputs):
        raise GraphcError(f"vjp: {len(outputs)} outputs but {len(cotangents)} cotangents"
                          f"\n  at {user_line()}")
    if disconnected not in ("zero", "raise"):
        raise GraphcError(f"disconnected must be 'zero' or 'raise', got {disconnected!r}"
                          f"\n  at {user_line()}")
    for w in wrt:
        if not isinstance(w, Node):
            raise GraphcError(f"grad: wrt must be graph nodes, got {type(w).__name__}"
                              f"\n  at {user_line()}")
        if not differentiable(w):
            raise GraphcError(f"grad: cannot differentiate with respect to {w.label()} of "
                              f"integer/bool dtype {w.dtype.name}\n  at {user_line()}")

    order = toposort(outputs)
    wanted = {id(w) for w in wrt}
    depends: set[int] = set()       # nodes that depend on some wrt
    for n in order:
        if id(n) in wanted or any(id(i) in depends for i in n.inputs):
            depends.add(id(n))

    parts: dict[int, list[Node]] = {}
    for out, ct in zip(outputs, cotangents):
        ct = conform(as_node(ct, like=out), out)
        parts.setdefault(id(out), []).append(ct)

    totals: dict[int, Node] = {}
    for node in reversed(order):
        if id(node) not in depends or id(node) not in parts:
            continue
        with backward_of(node):
            g = per_item(node, parts.pop(id(node))) if is_tuple(node) \
                else accumulate(parts.pop(id(node)))
            totals[id(node)] = g
            if not node.inputs or leaves and id(node) in wanted:
                continue
            if node.opdef.vjp is None:      # a user's op declared without one: TypeError
                raise GraphcError(f"grad: op {node.op!r} has no VJP rule (give its OpDef "
                                  f"vjp=), so {node.label()} {format_shape(node.shape)} cannot "
                                  f"be differentiated\n  at {node.where}")
            grads = node.opdef.vjp(g, node, *node.inputs, **node.attrs)
            for x, gx in zip(node.inputs, grads):
                if gx is None or id(x) not in depends:
                    continue
                if is_tuple(x):             # gx = (index, cotangent of that item)
                    parts.setdefault(id(x), []).append(gx)
                    continue
                if not differentiable(x):
                    continue
                gx = unbroadcast(as_node(gx, like=x), x)
                if gx.dtype != x.dtype:
                    gx = apply("cast", gx, dtype=x.dtype.name)
                parts.setdefault(id(x), []).append(gx)

    result = []
    for w in wrt:
        if id(w) in totals:
            result.append(totals[id(w)])
        elif disconnected == "raise":
            raise GraphcError(f"grad: the output does not depend on {w!r} (built at {w.where})")
        else:
            result.append(zeros_like(w))
    return result[0] if single else result


def is_tuple(x: Node) -> bool:
    return bool(x.inputs) and x.opdef.items is not None


def per_item(node: Node, parts: list[tuple[int, Node]]) -> tuple:
    """The cotangents of a tuple node's items, summed per item; None for an unused item."""
    grouped: list[list[Node]] = [[] for _ in node.opdef.items(node)]
    for index, g in parts:
        grouped[index].append(g)
    return tuple(accumulate(gs) if gs else None for gs in grouped)


def accumulate(parts: list[Node]) -> Node:
    total = parts[0]
    for p in parts[1:]:
        total = apply("add", total, p)
    return total


fused.VJP.append(vjp)      # the fused op's VJP differentiates its body with this walk


def grad(cost: Node, wrt: Sequence[Node] | Node, disconnected: str = "zero"):
    """d cost / d wrt as graph nodes, one per `wrt` with its shape; cost must be a scalar."""
    if not isinstance(cost, Node):
        raise GraphcError(f"grad: cost must be a graph node, got {type(cost).__name__}"
                          f"\n  at {user_line()}")
    if cost.shape != ():
        raise GraphcError(f"grad: cost must be a scalar, got shape {format_shape(cost.shape)} "
                          f"(built at {cost.where}); reduce it with gc.sum or gc.mean, "
                          "or use gc.vjp for non-scalar outputs")
    if not differentiable(cost):
        raise GraphcError(f"grad: cost must be floating point, got {cost.dtype.name} (built "
                          f"at {cost.where})")
    return vjp([cost], wrt, [1.0], disconnected)


# forward mode, Jacobians and Hessians, all as graphs built from the VJP --------------------

def as_list(x) -> tuple[list, bool]:
    return ([x], True) if isinstance(x, Node) else (list(x), False)


def dummy_cotangent(out: Node) -> Node:
    """A stand-in for the cotangent of `out`: the VJP is linear in it, so its value (zero)
    never matters, only the graph built on it."""
    zero = as_node(0.0, like=out)
    if all(isinstance(d, int) for d in out.shape):
        return apply("broadcast_to", zero, shape=out.shape)
    return apply("broadcast_to", zero, out)


def jvp(outputs, wrt, tangents):
    """Forward mode: d outputs along `tangents` (one per wrt, its shape), as graph nodes.

    Built by transposing the VJP: with u a cotangent, vjp(outputs, wrt, u) is linear in u and
    its own VJP with respect to u, taken at the tangents, is J·t (JAX's linear transpose).
    Returns one node per output, in the form `outputs` was given.
    """
    outs, single = as_list(outputs)
    ws, one_wrt = as_list(wrt)
    ts = [tangents] if one_wrt else list(tangents)    # a single wrt takes one tangent, as is
    if len(ts) != len(ws):
        raise GraphcError(f"jvp: {len(ws)} wrt nodes but {len(ts)} tangents")
    floats = [o for o in outs if differentiable(o)]
    us = [dummy_cotangent(o) for o in floats]
    gs = vjp(floats, ws, us) if floats else []
    tangent_nodes = []
    for w, t in zip(ws, ts):
        tangent_nodes.append(conform(as_node(t, like=w), w))
    ys = iter(vjp(gs, us, tangent_nodes) if floats else [])
    result = [next(ys) if differentiable(o) else zeros_like(o) for o in outs]
    return result[0] if single else result


def static_size(node: Node, what: str, fn: str) -> int:
    if not all(isinstance(d, int) for d in node.shape):
        raise GraphcError(f"{fn}: {what} {node.label()} has shape {format_shape(node.shape)}; "
                          "Jacobians are built element by element and need known sizes "
                          f"(built at {node.where})")
    return int(np.prod(node.shape, dtype=np.int64))


def jacobian(y: Node, wrt):
    """d y / d wrt as a node of shape y.shape + wrt.shape (one per wrt when a list is given),
    built from one VJP per element of y: meant for small sizes."""
    ws, single = as_list(wrt)
    if not isinstance(y, Node):
        raise GraphcError(f"jacobian: y must be a graph node, got {type(y).__name__}"
                          f"\n  at {user_line()}")
    m = static_size(y, "y", "jacobian")
    for w in ws:
        static_size(w, "wrt", "jacobian")
    if y.shape == ():                        # a gradient: no stacking (formulas stay scalar)
        grads = vjp([y], ws, [as_node(1.0, like=y)])
        return grads[0] if single else grads
    rows: list[list[Node]] = [[] for _ in ws]
    for i in range(m):
        onehot = np.zeros(m, dtype=y.dtype)
        onehot[i] = 1
        grads = vjp([y], ws, [constant(onehot.reshape(y.shape))])
        for k, g in enumerate(grads):
            rows[k].append(apply("reshape", g, shape=(1,) + g.shape))
    result = []
    for w, parts in zip(ws, rows):
        stacked = parts[0] if len(parts) == 1 else apply("concat", *parts, axis=0)
        result.append(apply("reshape", stacked, shape=y.shape + w.shape))
    return result[0] if single else result


def hessian(cost: Node, wrt):
    """Second derivatives of a scalar cost: for one node x, a node of shape x.shape * 2; for a
    list [x1, x2, ...], the blocks [[d2 cost / dxi dxj]] (scalars give the textbook matrix)."""
    ws, single = as_list(wrt)
    grads = grad(cost, ws)
    blocks = [jacobian(g, ws) for g in grads]
    return blocks[0][0] if single else blocks


# checking gradients against central differences ---------------------------------------------

DEFAULT_STEP = {8: 1e-6, 4: 1e-3, 2: 1e-2}          # by float size in bytes
DEFAULT_TOL = {8: (1e-5, 1e-8), 4: (1e-2, 1e-3), 2: (1e-1, 1e-2)}   # (rtol, atol)


@dataclass
class GradCheck:
    """What check_grad found: the worst entry over all wrt nodes, and whether all passed."""
    ok: bool
    wrt: str
    index: tuple
    analytic: float
    numeric: float
    abs_err: float
    rel_err: float
    checked: int
    failed: int

    def __str__(self) -> str:
        verdict = "ok" if self.ok else f"FAILED at {self.failed} of {self.checked} entries"
        return (f"check_grad {verdict}; worst entry {self.wrt}{list(self.index)}: "
                f"graphc {self.analytic:.10g} vs central differences {self.numeric:.10g} "
                f"(abs err {self.abs_err:.3g}, rel err {self.rel_err:.3g})")


def check_grad(cost: Node, wrt, feeds: dict, eps: float | None = None,
               rtol: float | None = None, atol: float | None = None,
               raise_error: bool = True) -> GradCheck:
    """Compare grad(cost, wrt) with central differences (cost(x+eps) - cost(x-eps)) / 2eps,
    entry by entry, like torch.autograd.gradcheck; report the worst entry and raise a
    GraphcError when some entry is off (use float64 for tight tolerances).

    wrt are placeholders (perturbed in `feeds`) or variables (perturbed in place, restored).
    """
    ws, _ = as_list(wrt)
    for w in ws:
        if w.op not in ("placeholder", "variable"):
            raise GraphcError(f"check_grad: wrt must be placeholders or variables, got a "
                              f"{w.op} node {w.label()}")
    unseeded = [n for n in toposort([cost]) if n.inputs and n.opdef.random
                and n.attrs.get("seed") is None]
    if unseeded:
        raise GraphcError(f"check_grad: the cost draws random values without a seed "
                          f"({unseeded[0].op} built at {unseeded[0].where}); give it a seed")
    if not isinstance(feeds, dict):      # a list of arrays: AttributeError 'items'
        raise GraphcError(f"check_grad: feeds must be a dict {{placeholder: array}}, got "
                          f"{type(feeds).__name__}\n  at {user_line()}")
    for what, v in (("eps", eps), ("rtol", rtol), ("atol", atol)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not v >= 0):
            raise GraphcError(f"check_grad: {what} must be a number >= 0, got {v!r}\n"
                              f"  at {user_line()}")
    feeds = {k: np.array(v, dtype=k.dtype) for k, v in feeds.items()}
    analytic = evaluate(grad(cost, ws), feeds)
    worst, checked, failed = None, 0, 0
    for w, a in zip(ws, analytic):
        size = w.dtype.itemsize
        step = eps or DEFAULT_STEP.get(size, 1e-3)
        rt, at = DEFAULT_TOL.get(size, (1e-2, 1e-3))
        rt, at = rtol if rtol is not None else rt, atol if atol is not None else at
        for idx, num in central_differences(cost, w, feeds, step):
            err = abs(float(a[idx]) - num)
            score = err / (at + rt * abs(num))
            checked += 1
            failed += score > 1
            if worst is None or score > worst[0]:
                worst = (score, w.label(), idx, float(a[idx]), num, err,
                         err / max(abs(num), 1e-300))
    if worst is None:
        return GradCheck(True, "", (), 0.0, 0.0, 0.0, 0.0, 0, 0)
    report = GradCheck(failed == 0, *worst[1:], checked, failed)
    if failed and raise_error:
        raise GraphcError(str(report))
    return report


def central_differences(cost: Node, w: Node, feeds: dict, eps: float):
    """(index, d cost / d w[index]) for every entry of w, by central differences."""
    if w.op == "placeholder":
        if w not in feeds:
            raise GraphcError(f"check_grad: placeholder {w.label()} needs a feed")
        arr = feeds[w]
    else:
        arr = w.data[0]
    saved = arr.copy()
    try:
        for idx in np.ndindex(*arr.shape):
            vals = []
            for delta in (eps, -eps):
                arr[idx] = saved[idx] + delta
                vals.append(float(evaluate([cost], feeds)[0]))
            arr[idx] = saved[idx]
            yield idx, (vals[0] - vals[1]) / (2 * eps)
    finally:
        np.copyto(arr, saved)
