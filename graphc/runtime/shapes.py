"""Resolve every node's concrete shape and dtype for one feed signature.

First from the ops' shape rules, run again on the feeds' concrete shapes (no array is made);
when a shape depends on values (a rule leaves a dimension open) or the graph has loops, by a
dry run that calls the registered kernels (with throwaway random generators), so the shapes
the compiled plan allocates are exactly the ones the kernels produce.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Graph, GraphcError, Node, ShapeError, format_shape, \
    refuse_unknown_broadcast


def run_node(n: Node, args: list) -> np.ndarray:
    opdef = OPS[n.op]
    extra = {"rng": np.random.default_rng(0)} if opdef.random else {}
    if n.op == "scan":            # the dry run too steps through the compiled body
        from graphc.runtime.loop import body_step
        extra["step"] = body_step(n.attrs["body"])
    try:
        with np.errstate(all="ignore"):
            out = opdef.kernel(*args, **n.attrs, **extra)
            out = out if opdef.items else np.asarray(out)
    except GraphcError:
        raise
    except Exception as e:
        shapes = ", ".join(format_shape(np.shape(a)) for a in args)
        raise GraphcError(f"{n.op}({shapes}) failed at run time: {e}\n  at {n.where}") from None
    if opdef.elementwise or n.op == "broadcast_to":
        refuse_unknown_broadcast(n, [np.shape(a) for a in args], out.shape)
    return out


def discover(graph: Graph, feeds: dict[int, np.ndarray]) -> dict:
    """Key -> (shape, dtype) for every node (key id(node)) and fused body node
    (key (id(fused), id(body node)))."""
    values: dict[int, np.ndarray] = {}
    shapes: dict = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            val = feeds[id(n)]
        elif n.op == "variable":
            val = n.data[0]
        elif n.op == "constant":
            val = n.data
        else:
            args = [values[id(i)] for i in n.inputs]
            if n.op == "fused":
                body_shapes(n, args, shapes)
            val = run_node(n, args)
        values[id(n)] = val
        shapes[id(n)] = (n.shape, n.dtype) if isinstance(val, tuple) else (val.shape, val.dtype)
    return shapes


def body_shapes(n: Node, args: list, shapes: dict) -> None:
    body: Graph = n.attrs["body"]
    vals: dict[int, np.ndarray] = {}
    for b in body.nodes:
        if b.op == "placeholder":
            inputs = getattr(body, "inputs", None)
            k = next(j for j, x in enumerate(inputs) if x is b) if inputs is not None \
                else int(b.name[2:])
            val = np.asarray(args[k])
        elif b.op == "constant":
            val = b.data
        elif b.op == "variable":
            val = b.data[0]
        else:
            val = run_node(b, [vals[id(i)] for i in b.inputs])
        vals[id(b)] = val
        shapes[(id(n), id(b))] = (val.shape, val.dtype)


class ValueDependent(Exception):
    """A shape the rules cannot give from shapes alone: use the dry run."""


def concrete(shape) -> bool:
    return all(isinstance(d, int) for d in shape)


def rule_shape(n: Node, types: tuple, ins, memo: dict | None = None) -> tuple:
    """n's concrete shape by its rule, for inputs of concrete `types` ((shape, dtype) each);
    `ins()` gives the inputs' stand-ins (nodes of those shapes), made only when the rule runs:
    `memo` remembers the rules' answers for ops without attributes by input types (a big graph
    asks the same question of thousands of nodes)."""
    opdef = OPS[n.op]
    if opdef.items is not None or opdef.infer is None:
        raise ValueDependent(n.op)
    key = (n.op, types) if memo is not None and not n.attrs else None
    hit = memo.get(key) if key is not None else None
    if hit is None:
        try:
            shape, dtype, *_ = opdef.infer(*ins(), **n.attrs)
        except ShapeError as e:
            shapes = ", ".join(format_shape(t[0]) for t in types)
            raise GraphcError(f"{n.op}({shapes}): {e}\n  at {n.where}") from None
        hit = (tuple(shape), np.dtype(dtype))
        if key is not None:
            memo[key] = hit
    shape, dtype = hit
    if not concrete(shape) or dtype != n.dtype:
        raise ValueDependent(n.op)
    if opdef.elementwise or n.op == "broadcast_to":
        for t in types:           # most inputs have the result's shape: nothing to look at
            if t[0] != shape:
                refuse_unknown_broadcast(n, [t[0] for t in types], shape)
                break
    return shape


class StandIns:
    """Stand-ins for the shape rules: a node with its concrete shape (the node itself when
    that is its own shape), made only when a rule has to run (most answers are remembered)."""

    def __init__(self, shapes: dict):
        self.shapes, self.made = shapes, {}

    def of(self, x: Node, key) -> Node:
        shape = self.shapes[key][0]
        if shape == x.shape and x.op != "placeholder":
            return x
        s = self.made.get(key)
        if s is None:
            s = self.made[key] = Node(x.op, (), {}, shape, x.dtype, x.name, x.where) \
                if x.op == "placeholder" else \
                Node(x.op, x.inputs, x.attrs, shape, x.dtype, x.name, x.where, data=x.data)
        return s


def infer(graph: Graph, feeds: dict[int, tuple]) -> dict:
    """Like `discover`, from the shape rules: feeds maps id(placeholder) -> its shape.
    Raises ValueDependent when some shape needs values."""
    shapes: dict = {}
    stand = StandIns(shapes)
    memo: dict = {}
    for n in graph.nodes:
        op = n.op
        if op == "placeholder":
            shape = tuple(feeds[id(n)])
        elif op in ("variable", "constant"):
            shape = n.shape
        elif op == "fused":        # its shape is its body output's, resolved in the body
            shape = body_rule_shapes(n, stand, memo)
        else:
            xs = n.inputs
            shape = rule_shape(n, tuple([shapes[id(x)] for x in xs]),
                               lambda: [stand.of(x, id(x)) for x in xs], memo)
        shapes[id(n)] = (shape, n.dtype)
    return shapes


def body_rule_shapes(n: Node, stand: StandIns, memo: dict | None = None) -> tuple:
    """The body's shapes for the fused node's concrete inputs (in `stand.shapes`, keyed
    (id(n), id(body node))); the output's shape. Bodies of one form (fuse.structure) on
    inputs of equal types get equal shapes: found once per plan (a big graph repeats a few
    forms thousands of times), then copied."""
    body: Graph = n.attrs["body"]
    form = getattr(body, "structure", None)
    if form is None or memo is None:
        return walk_body(n, stand, memo)
    shapes, nid = stand.shapes, id(n)
    key = ("body", form, tuple([shapes[id(x)] for x in n.inputs]))
    hit = memo.get(key)
    if hit is None:
        out = walk_body(n, stand, memo)
        memo[key] = tuple([shapes[(nid, id(b))] for b in body.nodes])
        return out
    for b, t in zip(body.nodes, hit):
        shapes[(nid, id(b))] = t
    return hit[-1][0]


def walk_body(n: Node, stand: StandIns, memo: dict | None) -> tuple:
    body: Graph = n.attrs["body"]
    shapes = stand.shapes
    inputs = getattr(body, "inputs", None)
    nid, outer = id(n), n.inputs
    # id(body placeholder) -> (the outer node it stands for, that node's key)
    origin = {} if inputs is None else {id(p): (x, id(x)) for p, x in zip(inputs, outer)}
    for b in body.nodes:
        op = b.op
        if op == "placeholder":
            if inputs is None:
                x = outer[int(b.name[2:])]
                origin[id(b)] = (x, id(x))
            shape = shapes[origin[id(b)][1]][0]
        elif op in ("variable", "constant"):
            shape = b.shape
        else:
            xs = b.inputs
            shape = rule_shape(b, tuple([shapes[(nid, id(x))] for x in xs]),
                               lambda: [stand.of(*origin[id(x)]) if id(x) in origin
                                        else stand.of(x, (nid, id(x))) for x in xs], memo)
        shapes[(nid, id(b))] = (shape, b.dtype)
    out = body.outputs[0]
    dtype = origin[id(out)][0].dtype if id(out) in origin else out.dtype
    if dtype != n.dtype:
        raise ValueDependent("fused")
    return shapes[(nid, id(out))][0]


def resolve(graph: Graph, feeds: dict[int, np.ndarray]) -> dict:
    """Every concrete shape: from the rules when they can, else by the dry run."""
    try:
        return infer(graph, {k: v.shape for k, v in feeds.items()})
    except ValueDependent:
        return discover(graph, feeds)
