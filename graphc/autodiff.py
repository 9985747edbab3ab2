"""Reverse-mode gradients as graphs: a reverse walk over each op's VJP rule.

Gradient nodes are ordinary nodes built inside `backward_of(node)`, so they record the forward
node they belong to; broadcasting is undone here, in one place, not in the rules.
"""
from __future__ import annotations

from typing import Sequence

from graphc.ir import GraphcError, Node, apply, as_node, backward_of, format_shape, toposort


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


def zeros_like(x: Node) -> Node:
    return apply("broadcast_to", as_node(0, like=x), x)


def differentiable(x: Node) -> bool:
    return x.dtype.kind == "f"


def vjp(outputs: Sequence[Node] | Node, wrt: Sequence[Node] | Node,
        cotangents: Sequence | object, disconnected: str = "zero") -> list[Node] | Node:
    """Gradients of sum(outputs[i] * cotangents[i]) with respect to each of `wrt`."""
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    outputs = [outputs] if isinstance(outputs, Node) else list(outputs)
    cotangents = [cotangents] if not isinstance(cotangents, (list, tuple)) else list(cotangents)
    if len(cotangents) != len(outputs):
        raise GraphcError(f"vjp: {len(outputs)} outputs but {len(cotangents)} cotangents")
    if disconnected not in ("zero", "raise"):
        raise GraphcError(f"disconnected must be 'zero' or 'raise', got {disconnected!r}")
    for w in wrt:
        if not isinstance(w, Node):
            raise GraphcError(f"grad: wrt must be graph nodes, got {type(w).__name__}")
        if not differentiable(w):
            raise GraphcError(f"grad: cannot differentiate with respect to {w.label()} of "
                              f"integer/bool dtype {w.dtype.name}")

    order = toposort(outputs)
    wanted = {id(w) for w in wrt}
    depends: set[int] = set()       # nodes that depend on some wrt
    for n in order:
        if id(n) in wanted or any(id(i) in depends for i in n.inputs):
            depends.add(id(n))

    parts: dict[int, list[Node]] = {}
    for out, ct in zip(outputs, cotangents):
        ct = as_node(ct, like=out)
        if ct.shape != out.shape:
            ct = apply("broadcast_to", ct, out)
        parts.setdefault(id(out), []).append(ct)

    totals: dict[int, Node] = {}
    for node in reversed(order):
        if id(node) not in depends or id(node) not in parts:
            continue
        with backward_of(node):
            g = per_item(node, parts.pop(id(node))) if is_tuple(node) \
                else accumulate(parts.pop(id(node)))
            totals[id(node)] = g
            if not node.inputs:
                continue
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


def grad(cost: Node, wrt: Sequence[Node] | Node, disconnected: str = "zero"):
    """d cost / d wrt as graph nodes, one per `wrt` with its shape; cost must be a scalar."""
    if not isinstance(cost, Node):
        raise GraphcError(f"grad: cost must be a graph node, got {type(cost).__name__}")
    if cost.shape != ():
        raise GraphcError(f"grad: cost must be a scalar, got shape {format_shape(cost.shape)} "
                          f"(built at {cost.where}); reduce it with gc.sum or gc.mean, "
                          "or use gc.vjp for non-scalar outputs")
    if not differentiable(cost):
        raise GraphcError(f"grad: cost must be floating point, got {cost.dtype.name}")
    return vjp([cost], wrt, [1.0], disconnected)
