"""Move a constant scalar factor through ops linear in it, to where multiplying costs least.

`W - 0.1 * (x.T @ g)` multiplies a weight-sized array; the same 0.1 can ride along the
gradient's linear chain (matmul, transpose, sum, broadcast, masks, the softmax-CE gradient's
scale input ...) down to the scalar seed `1 / n`, where it is one folded constant, and the
update becomes one in-place subtract. A value is only scaled when every one of its users
wants it scaled (or it is a small constant, which is copied), so no other value changes.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import Graph, Node, apply, constant
from graphc.passes.patterns import is_value
from graphc.passes.rewrite import rebuild_node

UNKNOWN_DIM = 1024      # a dimension known only at run time counts as this many elements
COPY_CONST = 16         # constants up to this size are scaled as a copy (folded, free)


def _where(n: Node) -> tuple[int, ...]:
    # where(c, x, 0) and where(c, 0, x) are linear in x
    return (1,) if is_value(n.inputs[2], 0) else (2,) if is_value(n.inputs[1], 0) else ()


def _dense(n: Node) -> tuple[int, ...]:
    # a plain product (no bias, no activation) is linear in either factor
    return (0, 1) if len(n.inputs) == 2 and n.attrs.get("activation") is None else ()


def _sce_grad(n: Node) -> tuple[int, ...]:
    # (softmax(z) - onehot(y)) * g[:, None] is linear in its scale g
    return (2,) if len(n.inputs) == 3 else ()


# op -> the input positions it is linear in (op(.., s*x, ..) == s * op(.., x, ..))
LINEAR = {
    "mul": lambda n: (0, 1), "div": lambda n: (0,), "neg": lambda n: (0,),
    "matmul": lambda n: (0, 1), "dense": _dense, "where": _where,
    "transpose": lambda n: (0,), "reshape": lambda n: (0,), "broadcast_to": lambda n: (0,),
    "sum": lambda n: (0,), "softmax_cross_entropy_grad": _sce_grad,
    "conv2d": lambda n: (0, 1), "conv2d_grad_input": lambda n: (0, 1),
    "conv2d_grad_weight": lambda n: (0, 1), "max_pool2d_grad": lambda n: (0,),
    "max_pool2d_gather": lambda n: (0,), "avg_pool2d": lambda n: (0,),
    "avg_pool2d_grad": lambda n: (0,),
}


def push_scalar_factors(graph: Graph) -> Graph:
    """`mul(x, s)` with a constant scalar s: s moves into x's linear chain when that makes the
    multiplications smaller in total (one scalar at a time, the most used first)."""
    tried: set[tuple] = set()
    for _ in range(8):
        scalar = next((s for s in factors(graph) if factor_key(s) not in tried), None)
        if scalar is None:
            return graph
        tried.add(factor_key(scalar))
        graph = push_one(graph, scalar)
    return graph


def factor_key(s: Node) -> tuple:
    """Equal constants are one factor (CSE may not have merged them yet)."""
    return s.dtype.str, s.data.item()


def factors(graph: Graph) -> list[Node]:
    """The finite, nonzero 0-d float constants that multiply a larger value, most users first."""
    count: dict[tuple, list] = {}
    for n in graph.nodes:
        s = sink_scalar(n)
        if s is not None:
            count.setdefault(factor_key(s), [s, 0])[1] += 1
    return [s for s, _ in sorted(count.values(), key=lambda p: -p[1])]


def sink_scalar(n: Node) -> Node | None:
    if n.op != "mul" or n.inputs[0] is n.inputs[1]:
        return None
    for s, x in (n.inputs, n.inputs[::-1]):
        if s.op == "constant" and s.shape == () and s.dtype == n.dtype and x.shape == n.shape \
                and x.ndim > 0 and n.dtype.kind == "f" and np.isfinite(s.data) and s.data != 0:
            return s
    return None


def sink_of(n: Node, scalar: Node) -> Node | None:
    """x when n is mul(x, scalar) (either order), else None."""
    s = sink_scalar(n)
    if s is None or factor_key(s) != factor_key(scalar):
        return None
    return n.inputs[1] if n.inputs[0] is s else n.inputs[0]


def linear_in(u: Node, x: Node) -> bool:
    """u is linear in x, which it reads once."""
    fn = LINEAR.get(u.op)
    if fn is None or sum(i is x for i in u.inputs) != 1:
        return False
    return u.inputs.index(x) in fn(u)


def cost(n: Node) -> int:
    if n.op == "constant" and n.data.size <= COPY_CONST:
        return 0                                    # folded into a scaled copy
    return int(np.prod([d if isinstance(d, int) else UNKNOWN_DIM for d in n.shape]))


def push_one(graph: Graph, scalar: Node) -> Graph:
    nodes, users = graph.nodes, graph.users()
    kept = {id(o) for o in graph.outputs} | {id(u) for _, u in graph.updates}
    sinks = {id(n): x for n in nodes if (x := sink_of(n, scalar)) is not None}
    blocked = ancestors(scalar) | kept | set(sinks)
    # 1. the values that could be scaled: every user is a sink or linear in them
    can: set[int] = set()
    for n in reversed(nodes):
        if id(n) in blocked or n.dtype != scalar.dtype or not n.inputs and n.op != "constant":
            continue
        us = users[id(n)]
        ok = [sinks.get(id(u)) is n or id(u) in can and linear_in(u, n) for u in us]
        if us and (all(ok) or any(ok) and cost(n) == 0):
            can.add(id(n))
    # 2. per value, the cheapest way down: scale here, or ask a linear input
    best: dict[int, tuple[int, Node | None]] = {}
    for n in nodes:
        if id(n) in can:
            best[id(n)] = min([(cost(n), None)] + [
                (best[id(x)][0], x) for x in n.inputs if id(x) in best and linear_in(n, x)],
                key=lambda p: p[0])
    # 3. two plans: the cheapest way per value, and one that also asks any value read by
    # several users (its one product may serve them all), then keep the cheaper
    def ask(n: Node) -> Node | None:
        xs = [(best[id(x)][0], x) for x in n.inputs if id(x) in best and linear_in(n, x)]
        c, x = min(xs, key=lambda p: p[0], default=(0, None))
        return x if x is not None and (c < cost(n) or len(users[id(x)]) > 1) else None
    shared = {id(n): ask(n) for n in nodes if id(n) in can}
    plans = []                                     # (cost after - cost before, region)
    for choice in ({k: b[1] for k, b in best.items()}, shared):
        region = settle(nodes, users, can, sinks, choice)
        before = sum(cost(n) for n in nodes if id(sinks.get(id(n))) in region)
        after = sum(cost(n) for n in nodes if region.get(id(n), 1) is None)
        plans.append((after - before, region))
    gain, region = min(plans, key=lambda p: p[0])
    if gain >= 0:
        return graph
    return rebuild(graph, scalar, sinks, region)


def settle(nodes, users, can: set, sinks: dict, choice: dict) -> dict[int, Node | None]:
    """The values that get scaled: all of their users (of a copied constant: some) are sinks
    or pass the scale down to them; each maps to the input it asks (None: scaled here)."""
    region: dict[int, Node | None] = {}
    for n in reversed(nodes):
        if id(n) not in can:
            continue
        ok = [sinks.get(id(u)) is n or id(u) in region and region[id(u)] is n
              for u in users[id(n)]]
        if ok and (all(ok) or any(ok) and cost(n) == 0):
            region[id(n)] = choice[id(n)]
    for k, x in region.items():                    # an input that stayed out: scale here
        if x is not None and id(x) not in region:
            region[k] = None
    return region


def ancestors(n: Node) -> set[int]:
    seen, stack = set(), [n]
    while stack:
        x = stack.pop()
        if id(x) not in seen:
            seen.add(id(x))
            stack.extend(x.inputs)
    return seen


def rebuild(graph: Graph, scalar: Node, sinks: dict, region: dict) -> Graph:
    done: dict[Node, Node] = {}
    scaled: dict[int, Node] = {}
    for n in graph.nodes:
        x = sinks.get(id(n))
        if x is not None and id(x) in region:
            done[n] = scaled[id(x)]
            continue
        done[n] = rebuild_node(n, [done[i] for i in n.inputs], done)
        if id(n) not in region:
            continue
        via = region[id(n)]
        if via is not None:
            scaled[id(n)] = rebuild_node(n, [scaled[id(i)] if i is via else done[i]
                                             for i in n.inputs], done)
        elif n.op == "constant":
            scaled[id(n)] = constant(np.asarray(n.data * scalar.data, n.dtype))
        else:
            scaled[id(n)] = apply("mul", done[n], scalar, _where=n.where, _scope=n.scope,
                                  _grad_of=n.grad_of)
    return Graph([done[o] for o in graph.outputs],
                 [(done[v], done[u]) for v, u in graph.updates])
