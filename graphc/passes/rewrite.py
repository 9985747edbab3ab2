"""The one rewrite driver every local pass shares: rules as data, applied bottom-up to a
fixed point.

Each node is rebuilt on its rewritten inputs, hash-consed (equal op, attrs and inputs -> one
node, which is common-subexpression elimination for free), then offered to the rules of its op
until none fires; a replacement is rewritten the same way before it is used. Every node is
visited once per pass, so a pass is linear in the graph's size times the rule work per node.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from graphc.ir import OPS, Graph, GraphcError, Node, apply, format_shape

_stats: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("graphc_rewrite_stats",
                                                                       default=None)
SMALL_CONSTANT = 1024      # constants up to this many elements are merged by value


class RewriteError(GraphcError):
    """A rule produced a node of another shape or dtype (a bug in the rule, not the user's)."""


def positive_ops() -> frozenset[str]:
    """The ops declared positive now (an op may be registered later)."""
    return frozenset([k for k, d in OPS.items() if d.positive])


@dataclass(frozen=True)
class Rule:
    """`fn(node, *inputs)` returns the replacement of a node of `op`, or None ("*": any op).
    `needs`: input ops one of which the rule cannot fire without (None: no such guard); the
    driver offers it only to nodes with such an input ("constant" also admits a glue op, as
    `is_value` looks through them). Checked once per (op, input ops), not per node.
    `present`: ops one of which the rule cannot fire without somewhere below the node
    ("positive": any op declared positive); a walk over a graph without them (nor a rule
    making one) skips the rule for every node, e.g. cancellation on a tanh network."""
    name: str
    op: str
    fn: Callable[..., Node | None]
    needs: tuple[str, ...] | None = None
    present: tuple[str, ...] | None = None

    def wanted(self, positive: frozenset[str] | None = None) -> frozenset[str] | None:
        """The ops of `present`, "positive" spelled out (`positive_ops()` unless given)."""
        if self.present is None:
            return None
        if "positive" in self.present and positive is None:
            positive = positive_ops()
        return frozenset().union(*[positive if p == "positive" else (p,)
                                   for p in self.present])

    def offered(self, input_ops: tuple[str, ...]) -> bool:
        """The rule may fire on a node whose inputs have these ops."""
        needs = self.needs
        return needs is None or any(
            o in needs or "constant" in needs and o in OPS and OPS[o].glue for o in input_ops)


@contextlib.contextmanager
def counting(stats: Counter):
    """Rules firing inside are counted in `stats` (rule name -> times)."""
    token = _stats.set(stats)
    try:
        yield stats
    finally:
        _stats.reset(token)


def same_shape(a: tuple, b: tuple) -> bool:
    """Shapes agree, a dim known only at run time (None or a name) matching anything."""
    return len(a) == len(b) and all(
        x == y or not isinstance(x, int) or not isinstance(y, int) for x, y in zip(a, b))


def node_key(n: Node):
    """What identifies n's value: leaves by identity (small constants by value), random ops
    by identity, everything else by op, input ids and attributes over already-canonical
    inputs (Node.key(); without attributes spelled out, as the driver asks once per node)."""
    inputs = n.inputs
    if not inputs:
        if n.op != "constant":
            return n
        arr = n.data
        return ("constant", arr.dtype.str, arr.shape, arr.tobytes()) \
            if arr.size <= SMALL_CONSTANT else n
    if OPS[n.op].random:
        return n
    return n.key() if n.attrs else (n.op, tuple([i.id for i in inputs]), ())


def rebuild_node(n: Node, inputs: list[Node], done: dict[Node, Node]) -> Node:
    """n on new inputs, its `grad_of` tag moved to the rewritten forward node when known."""
    old = n.inputs
    if not old:
        return n
    tag = n.grad_of
    if tag is not None:
        tag = done.get(tag, tag)
    inputs = tuple(inputs)
    if inputs == old and tag is n.grad_of:      # Node has no __eq__: identity, element-wise
        return n
    for a, b in zip(inputs, old):
        if a.shape != b.shape or a.dtype != b.dtype:
            return apply(n.op, *inputs, _where=n.where, _name=n.name, _scope=n.scope,
                         _grad_of=tag, **n.attrs)
    # same input types: the shape rule would give n's own type again, skip it
    return Node(n.op, inputs, n.attrs, n.shape, n.dtype, n.name, n.where, n.scope, tag)


class Fixed:
    """What a rewrite learned about its result: the rules it offered to each op and the nodes
    none of them changed. A node's rules see only the node and what is below it, so a later
    walk whose rules for that op are among these need not offer them again (stabilize's two
    walks and simplify after them would otherwise retry every rule on every node)."""

    def __init__(self, rules_of: dict[str, tuple[Rule, ...]]):
        self.rules_of = rules_of
        self.nodes: set[Node] = set()

    def covers(self, op: str, rules: tuple[Rule, ...]) -> bool:
        return set(rules) <= set(self.rules_of.get(op, ()))


def rewrite(graph: Graph, rules: Sequence[Rule] = (), limit: int | None = None) -> Graph:
    """`graph` with `rules` applied bottom-up to a fixed point and common subexpressions merged."""
    by_op: dict[str, list[Rule]] = {}
    for r in rules:
        by_op.setdefault(r.op, []).append(r)
    anyop = tuple(by_op.get("*", ()))
    rules_of: dict[str, tuple[Rule, ...]] = {}   # op -> its rules, then the "*" rules
    guarded: dict[tuple, tuple[Rule, ...]] = {}  # (op, input ops) -> the rules it is offered
    stats = _stats.get()
    budget = [limit if limit is not None else 20 * len(graph.nodes) + 1000]
    done: dict[Node, Node] = {}          # any node seen -> its rewritten form
    table: dict = {}                     # node_key -> canonical node
    prior = getattr(graph, "fixed", None)
    skip: dict[str, bool] = {}           # op -> prior's fixed nodes of op need no rules
    fixed = Fixed(rules_of)
    # rules waiting for an op of `present`: the census of the ops in the graph (and in what
    # rules build) tells when one may fire; a node's rules see only what is below it
    waiting: dict[int, frozenset] = {}   # id(rule) -> its ops (a Rule hashes all its fields)
    if any(r.present is not None for r in rules):
        positive = positive_ops()
        waiting = {id(r): r.wanted(positive) for r in rules if r.present is not None}
    census = {n.op for n in graph.nodes} if waiting else set()
    unlocks = frozenset().union(*waiting.values()) - census if waiting else frozenset()
    asleep = {k for k, w in waiting.items() if not w & census}

    def rules_for(op: str) -> tuple[Rule, ...]:
        todo = rules_of.get(op)
        if todo is None:
            todo = rules_of[op] = tuple(by_op.get(op, ())) + anyop
        return todo

    def covered(op: str) -> bool:
        ok = skip.get(op)
        if ok is None:
            ok = skip[op] = prior.covers(op, rules_for(op))
        return ok

    def fire(n: Node) -> Node | None:
        op = n.op
        if prior is not None and n in prior.nodes and covered(op):
            return None
        inputs = n.inputs
        key = (op, tuple([i.op for i in inputs]))
        todo = guarded.get(key)
        if todo is None:
            todo = guarded[key] = tuple(r for r in rules_for(op)
                                        if r.offered(key[1]) and id(r) not in asleep)
        for r in todo:
            out = r.fn(n, *inputs)
            if out is None or out is n:
                continue
            if out.dtype != n.dtype or (out.shape != n.shape
                                        and not same_shape(out.shape, n.shape)):
                raise RewriteError(
                    f"rule {r.name!r} turned {n.op} {format_shape(n.shape)} {n.dtype.name} "
                    f"into {out.op} {format_shape(out.shape)} {out.dtype.name}")
            if stats is not None:
                stats[r.name] += 1
            return out
        return None

    def settle(n: Node) -> tuple[Node, Node] | None:
        """n, whose inputs are done: rebuilt, hash-consed and offered to the rules; (its
        canonical form, the replacement) when a rule fired (the replacement is rewritten
        next), else None and n is done."""
        old = n.inputs
        if old:                   # rebuild_node's answer for unchanged inputs, without a call
            ins = tuple([done[i] for i in old])
            tag = n.grad_of
            new = n if ins == old and (tag is None or done.get(tag, tag) is tag) \
                else rebuild_node(n, ins, done)
        else:
            new = n
        new = table.setdefault(node_key(new), new)
        if new in done and new is not n:
            done[n] = done[new]
            return None
        out = fire(new) if budget[0] > 0 else None
        if out is None:
            done[n] = done[new] = new
            if budget[0] > 0:
                fixed.nodes.add(new)
            return None
        budget[0] -= 1
        return new, out

    def run(root: Node, fired: tuple[Node, Node]) -> None:
        """Rewrite root's replacement (and what it is built of), then root is done."""
        stack, redirect = [root, fired[1]], {root: fired}
        while stack:
            n = stack[-1]
            if n in done:
                stack.pop()
                continue
            if n in redirect:                    # its replacement has been rewritten
                stack.pop()
                new, out = redirect.pop(n)
                done[n] = done[new] = done[out]
                continue
            todo = [i for i in n.inputs if i not in done]
            if todo:
                stack.extend(reversed(todo))
                continue
            if n.op in unlocks and n.op not in census:    # a rule built a node of a new op
                census.add(n.op)
                asleep.difference_update([k for k in asleep if n.op in waiting[k]])
                guarded.clear()
            again = settle(n)
            if again is None:
                stack.pop()
                continue
            redirect[n] = again
            stack.append(again[1])

    # Until a rule fires, every node is itself (the prior walk merged equal nodes), and a
    # node the prior walk left fixed under these rules needs no rebuild, key or rule: it
    # waits in `quiet` and is entered in the table, in order, before anything may fire.
    start, quiet = budget[0], []
    for n in graph.nodes:                # inputs first: `run` meets every input done
        if n in done:
            continue
        if prior is not None and budget[0] == start and n in prior.nodes and covered(n.op):
            done[n] = n
            fixed.nodes.add(n)
            quiet.append(n)
            continue
        for m in quiet:
            table.setdefault(node_key(m), m)
        quiet.clear()
        fired = settle(n)
        if fired is not None:
            run(n, fired)
    outputs = [done[o] for o in graph.outputs]
    updates = [(done[v], done[u]) for v, u in graph.updates]
    if budget[0] == start and type(graph) is Graph and prior is not None:
        result = copy.copy(graph)        # nothing fired: the same nodes, in the same order
    else:
        result = Graph(outputs, updates)
    result.fixed = fixed
    return result


def substitute(graph: Graph, mapping: dict[Node, Node]) -> Graph:
    """The graph with nodes replaced (old node -> new node), users rebuilt; no rules."""
    done: dict[Node, Node] = {}
    for n in graph.nodes:
        new = mapping.get(n)
        done[n] = new if new is not None else rebuild_node(n, [done[i] for i in n.inputs], done)
    return Graph([done[o] for o in graph.outputs],
                 [(done[v], done[u]) for v, u in graph.updates])
