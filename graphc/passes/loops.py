"""Passes over loops: every pass also runs inside loop bodies; a loop that nobody
differentiates stops saving its carries; a short loop of static length may be unrolled."""
from __future__ import annotations

from typing import Callable

from graphc.ir import OPS, Graph, Node, apply
from graphc.ops.fused import Body
from graphc.passes.fuse import note
from graphc.passes.rewrite import rebuild_node
from graphc.scan import inline, loop_parts, static_length

UNROLL_STEPS = 4        # loops of at most this many (static) steps are unrolled


def loops(graph: Graph) -> list[Node]:
    return [n for n in graph.nodes if n.op == "scan"]


def with_attrs(n: Node, inputs: list[Node], **attrs) -> Node:
    """Loop node n on `inputs` with some attributes changed (same name, line and tags)."""
    return apply(n.op, *inputs, _where=n.where, _name=n.name, _scope=n.scope,
                 _grad_of=n.grad_of, **{**n.attrs, **attrs})


def map_loops(graph: Graph, fn: Callable[[Node, list[Node]], Node | None]) -> Graph:
    """The graph with every loop node n replaced by fn(n, its rebuilt inputs) (None: kept)."""
    if not loops(graph):
        return graph
    new: dict[Node, Node] = {}
    changed = False
    for n in graph.nodes:
        inputs = [new[i] for i in n.inputs]
        out = fn(n, inputs) if n.op == "scan" else None
        changed |= out is not None
        new[n] = out if out is not None else rebuild_node(n, inputs, new)
    if not changed:
        return graph
    return Graph([new[o] for o in graph.outputs], [(new[v], new[u]) for v, u in graph.updates])


def into_bodies(p: Callable[[Graph], Graph], graph: Graph) -> Graph:
    """p applied to the graph and to the body of every loop in it, at every depth."""
    def optimized(n: Node, inputs: list[Node]) -> Node | None:
        body = n.attrs["body"]
        inner = into_bodies(p, Graph(body.outputs))
        if all(a is b for a, b in zip(inner.outputs, body.outputs)):
            return None
        return with_attrs(n, inputs, body=Body(body.inputs, inner.outputs))
    return map_loops(p(graph), optimized)


def prune_loops(graph: Graph) -> Graph:
    """A loop whose saved carries nobody reads (no gradient needs them) stops saving them."""
    read = {}                                       # loop -> the highest item index read
    for n in graph.nodes:
        if n.op == "item" and n.inputs[0].op == "scan":
            read[n.inputs[0]] = max(read.get(n.inputs[0], -1), n.attrs["index"])

    def pruned(n: Node, inputs: list[Node]) -> Node | None:
        if not n.attrs["saves"] or read.get(n, -1) >= len(n.attrs["body"].outputs):
            return None
        note("prune_loops")
        return with_attrs(n, inputs, saves=False)
    return map_loops(graph, pruned)


def stacked(values: list[Node]) -> Node | None:
    """The values (one shape, at most one dim unknown) stacked on a new axis 0."""
    shape = values[0].shape
    if sum(not isinstance(d, int) for d in shape) > 1:
        return None
    dims = (1,) + tuple(-1 if not isinstance(d, int) else d for d in shape)
    return apply("concat", *[apply("reshape", v, shape=dims) for v in values], axis=0)


def step_of(x: Node, t: int) -> Node:
    """x[t], exactly as the loop gives it: a reshape of the slice (a sum over its axis of
    size 1 turned a -0.0 into 0.0 and bools into int64: the unrolled ys came back int64)."""
    shape = tuple(d if isinstance(d, int) else -1 for d in x.shape[1:])
    return apply("reshape", apply("slice", x, axis=0, start=t, stop=t + 1), shape=shape)


def unroll(n: Node, inputs: list[Node], steps: int) -> list[Node] | None:
    """The values of loop n's items, on `inputs`, as `steps` inlined copies of its body."""
    a = n.attrs
    init, seqs, caps = loop_parts(inputs, a["carries"], a["xs"])
    carry, rows, saved = list(init), [], []
    if any(sum(not isinstance(d, int) for d in x.shape[1:]) > 1 for x in seqs):
        return None                         # x[t] would need a reshape with two -1s
    for t in (range(steps - 1, -1, -1) if a["reverse"] else range(steps)):
        saved.append(carry)
        xt = [step_of(x, t) for x in seqs]
        outs = inline(a["body"], carry + xt + list(caps))
        carry, rows = outs[:a["carries"]], rows + [outs[a["carries"]:]]
    if a["reverse"]:
        rows.reverse()
        saved.reverse()
    columns = [list(col) for col in zip(*rows)] + ([list(col) for col in zip(*saved)]
                                                   if a["saves"] else [])
    stacks = [stacked(col) for col in columns]
    return None if any(s is None for s in stacks) else carry + stacks


def draws(body: Graph) -> bool:
    """The body (or a loop inside it) has a random op."""
    return any(n.op in OPS and OPS[n.op].random or n.op == "scan" and draws(n.attrs["body"])
               for n in body.nodes)


def unroll_loops(graph: Graph, max_steps: int = UNROLL_STEPS) -> Graph:
    """Loops of static length 1..max_steps -> their body inlined once per step.

    A body with a random op stays a loop: its copies would each start the op's generator
    afresh (the same mask at every step), where the loop draws one sequence from one."""
    if not loops(graph):
        return graph                        # nothing to unroll: no walk rebuilding every node
    new: dict[Node, Node] = {}
    unrolled: dict[Node, list[Node]] = {}
    for n in graph.nodes:
        inputs = [new[i] for i in n.inputs]
        if n.op == "item" and n.inputs[0] in unrolled:
            new[n] = unrolled[n.inputs[0]][n.attrs["index"]]
            continue
        if n.op == "scan":
            a = n.attrs
            steps = static_length(loop_parts(n.inputs, a["carries"], a["xs"])[1], a["length"])
            values = unroll(n, inputs, steps) if isinstance(steps, int) \
                and 0 < steps <= max_steps and not draws(a["body"]) else None
            if values is not None:
                unrolled[n] = values
                note("unroll_loops")
        new[n] = rebuild_node(n, inputs, new)
    if not unrolled:
        return graph
    return Graph([new[o] for o in graph.outputs], [(new[v], new[u]) for v, u in graph.updates])
