"""Move a constant scalar factor through ops linear in it, to where multiplying costs least.

`W - 0.1 * (x.T @ g)` multiplies a weight-sized array; the same 0.1 can ride along the
gradient's linear chain (matmul, transpose, sum, broadcast, masks, the softmax-CE gradient's
scale input ...) down to the scalar seed `1 / n`, where it is one folded constant, and the
update becomes one in-place subtract. A value is only scaled when every one of its users
wants it scaled (or it is a small constant, which is copied), so no other value changes.
"""
from __future__ import annotations

import math

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
    seen = None
    for _ in range(8):
        if graph is not seen:               # a factor that stayed put left the graph as it was
            groups, seen = sinks_by_factor(graph), graph
        key = next((k for k in groups if k not in tried), None)
        if key is None:
            return graph
        tried.add(key)
        graph = push_one(graph, groups[key])
    return graph


def factor_key(s: Node) -> tuple:
    """Equal constants are one factor (CSE may not have merged them yet)."""
    return s.dtype.str, s.data.item()


def sinks_by_factor(graph: Graph) -> dict[tuple, dict[int, tuple]]:
    """factor -> {id(mul): (x, s)} for each mul(x, s) of a finite, positive 0-d float
    constant s and a larger x that a linear op made (else nothing could move); the factors
    with the most products first. Not in float16: its range is too narrow to move a factor
    (lr 1e-5 into the seed 1 / 1024 underflows to 0, and every update with it). Not a
    negative s: s * where(c, x, 0) is -0.0 where c is False, where(c, s * x, 0) +0.0 (and
    so are zeros a sum makes: s * (a @ b) against (s * a) @ b), so 1 / it was +inf for -inf."""
    groups: dict[tuple, dict[int, tuple]] = {}
    checked: dict[int, bool] = {}          # id(constant) -> usable as a factor
    for n in graph.nodes:
        if n.op != "mul" or n.dtype.kind != "f" or n.inputs[0] is n.inputs[1]:
            continue
        for s, x in (n.inputs, n.inputs[::-1]):
            if s.op != "constant" or s.shape != () or x.ndim == 0 or x.op not in LINEAR:
                continue
            ok = checked.get(id(s))
            if ok is None:
                ok = checked[id(s)] = s.dtype == n.dtype and bool(np.isfinite(s.data)) \
                    and s.data > 0 and n.dtype.itemsize >= 4
            if ok and x.shape == n.shape:
                groups.setdefault(factor_key(s), {})[id(n)] = (x, s)
                break
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def cost(n: Node) -> int:
    if n.op == "constant" and n.data.size <= COPY_CONST:
        return 0                                    # folded into a scaled copy
    return math.prod(d if isinstance(d, int) else UNKNOWN_DIM for d in n.shape)


def linear_inputs(u: Node) -> tuple[Node, ...]:
    """The inputs u is linear in and reads once."""
    fn = LINEAR.get(u.op)
    if fn is None:
        return ()
    return tuple(u.inputs[k] for k in fn(u) if sum(i is u.inputs[k] for i in u.inputs) == 1)


def push_one(graph: Graph, group: dict[int, tuple]) -> Graph:
    """Move one factor (its products: id(mul) -> (x, s)) where it costs least, if anywhere."""
    if stays_put(graph, group):
        return graph
    users = graph.users()
    kept = {id(o) for o in graph.outputs} | {id(u) for _, u in graph.updates}
    sinks = {k: x for k, (x, _) in group.items()}
    scalar = next(iter(group.values()))[1]
    blocked = ancestors(scalar) | kept | set(sinks)
    nodes = reachable(graph.nodes, sinks.values())  # the only values a product could move to
    lin = {id(n): {id(x) for x in linear_inputs(n)} for n in nodes}
    costs = {id(n): cost(n) for n in nodes}
    # 1. the values that could be scaled: every user is a sink or linear in them
    can: set[int] = set()
    for n in reversed(nodes):
        k = id(n)
        if k in blocked or n.dtype != scalar.dtype or not n.inputs and n.op != "constant":
            continue
        us = users[k]
        ok = [sinks.get(id(u)) is n or id(u) in can and k in lin[id(u)] for u in us]
        if us and (all(ok) or any(ok) and costs[k] == 0):
            can.add(k)
    # 2. per value, the cheapest way down: scale here, or ask a linear input
    best: dict[int, tuple[int, Node | None]] = {}
    down: dict[int, list] = {}                     # id -> [(best cost, linear input in can)]
    for n in nodes:
        if id(n) in can:
            down[id(n)] = [(best[id(x)][0], x) for x in n.inputs
                           if id(x) in best and id(x) in lin[id(n)]]
            best[id(n)] = min([(costs[id(n)], None)] + down[id(n)], key=lambda p: p[0])
    # 3. two plans: the cheapest way per value, and one that also asks any value read by
    # several users (its one product may serve them all), then keep the cheaper
    def ask(n: Node) -> Node | None:
        c, x = min(down[id(n)], key=lambda p: p[0], default=(0, None))
        return x if x is not None and (c < costs[id(n)] or len(users[id(x)]) > 1) else None
    shared = {id(n): ask(n) for n in nodes if id(n) in can}
    plans = []                                     # (cost after - cost before, region)
    for choice in ({k: b[1] for k, b in best.items()}, shared):
        region = settle(nodes, users, can, sinks, choice, costs)
        before = sum(cost(x) for x in sinks.values() if id(x) in region)
        after = sum(costs[k] for k, via in region.items() if via is None)
        plans.append((after - before, region))
    gain, region = min(plans, key=lambda p: p[0])
    if gain >= 0:
        return graph
    return rebuild(graph, scalar, sinks, region)


def stays_put(graph: Graph, group: dict[int, tuple]) -> bool:
    """A cheap proof that push_one's plans leave every product as it is (False: no proof).
    A plan scales anything but the products' own x only when some x asks a linear input:
    the cheapest-way plan when something below x costs less than x, the shared plan also
    when that input has other users. Neither: each x is scaled where it is, as now."""
    scalar = next(iter(group.values()))[1]
    xs = [x for x, _ in group.values()]
    if len({id(x) for x in xs}) < len(xs):
        return False                               # one x, two products: scaling x gains
    below = cheapest_below(xs, scalar.dtype)
    ask: dict[int, int] = {}                       # id(linear input of an x) -> its users
    for x in xs:
        if below.get(id(x), math.inf) < cost(x):
            return False
        ask.update((id(i), 0) for i in scalable_inputs(x, scalar.dtype))
    if ask:
        for n in graph.nodes:                      # reads, not users: counts more, never fewer
            for i in n.inputs:
                if id(i) in ask:
                    ask[id(i)] += 1
    return all(c <= 1 for c in ask.values())


def scalable_inputs(n: Node, dtype) -> list[Node]:
    """The inputs n is linear in that a plan could scale (computed values of the factor's
    dtype, or constants)."""
    fn = LINEAR.get(n.op)
    return [] if fn is None else [
        i for i in (n.inputs[k] for k in fn(n))
        if i.dtype == dtype and (i.inputs or i.op == "constant")]


def cheapest_below(starts: list[Node], dtype) -> dict[int, float]:
    """id(n) -> the least cost of a value a plan could scale below n (through the inputs n
    is linear in, transitively), for the starts and everything they reach."""
    below: dict[int, float] = {}
    stack = [(n, False) for n in starts]
    while stack:
        n, ready = stack.pop()
        if id(n) in below:
            continue
        kids = scalable_inputs(n, dtype)
        if ready or not kids:
            below[id(n)] = min((min(cost(i), below[id(i)]) for i in kids), default=math.inf)
            continue
        stack.append((n, True))
        stack.extend((i, False) for i in kids if id(i) not in below)
    return below


def settle(nodes, users, can: set, sinks: dict, choice: dict,
           costs: dict) -> dict[int, Node | None]:
    """The values that get scaled: all of their users (of a copied constant: some) are sinks
    or pass the scale down to them; each maps to the input it asks (None: scaled here)."""
    region: dict[int, Node | None] = {}
    for n in reversed(nodes):
        if id(n) not in can:
            continue
        ok = [sinks.get(id(u)) is n or id(u) in region and region[id(u)] is n
              for u in users[id(n)]]
        if ok and (all(ok) or any(ok) and costs[id(n)] == 0):
            region[id(n)] = choice[id(n)]
    for k, x in region.items():                    # an input that stayed out: scale here
        if x is not None and id(x) not in region:
            region[k] = None
    return region


def reachable(nodes: list[Node], starts) -> list[Node]:
    """The nodes (in graph order) reached from `starts` through linear inputs."""
    seen: set[int] = set()
    stack = list(starts)
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        fn = LINEAR.get(n.op)
        if fn is not None:
            stack.extend(n.inputs[k] for k in fn(n))
    return [n for n in nodes if id(n) in seen]


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
