"""Resolve every node's concrete shape and dtype for one feed signature.

First from the ops' shape rules, run again on the feeds' concrete shapes (no array is made);
when a shape depends on values (a rule leaves a dimension open) or the graph has loops, by a
dry run that calls the registered kernels (with throwaway random generators), so the shapes
the compiled plan allocates are exactly the ones the kernels produce.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Graph, GraphcError, Node, ShapeError, format_shape


def run_node(n: Node, args: list) -> np.ndarray:
    opdef = OPS[n.op]
    extra = {"rng": np.random.default_rng(0)} if opdef.random else {}
    if n.op == "scan":            # the dry run too steps through the compiled body
        from graphc.runtime.loop import body_step
        extra["step"] = body_step(n.attrs["body"])
    try:
        with np.errstate(all="ignore"):
            out = opdef.kernel(*args, **n.attrs, **extra)
            return out if opdef.items else np.asarray(out)
    except GraphcError:
        raise
    except Exception as e:
        shapes = ", ".join(format_shape(np.shape(a)) for a in args)
        raise GraphcError(f"{n.op}({shapes}) failed at run time: {e}\n  at {n.where}") from None


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


def rule_shape(n: Node, ins: list[Node], memo: dict | None = None) -> Node:
    """n's stand-in with the concrete shape its rule gives for inputs of concrete shapes.
    `memo` remembers the rules' answers for ops without attributes by input types (a big
    graph asks the same question of thousands of nodes)."""
    opdef = OPS[n.op]
    if opdef.items is not None or opdef.infer is None:
        raise ValueDependent(n.op)
    key = (n.op, tuple([(x.shape, x.dtype) for x in ins])) \
        if memo is not None and not n.attrs else None
    hit = memo.get(key) if key is not None else None
    if hit is None:
        try:
            shape, dtype, *_ = opdef.infer(*ins, **n.attrs)
        except ShapeError as e:
            shapes = ", ".join(format_shape(x.shape) for x in ins)
            raise GraphcError(f"{n.op}({shapes}): {e}\n  at {n.where}") from None
        hit = (tuple(shape), np.dtype(dtype))
        if key is not None:
            memo[key] = hit
    shape, dtype = hit
    if not concrete(shape) or dtype != n.dtype:
        raise ValueDependent(n.op)
    if shape == n.shape:
        return n
    return Node(n.op, n.inputs, n.attrs, shape, n.dtype, n.name, n.where, data=n.data)


def infer(graph: Graph, feeds: dict[int, tuple]) -> dict:
    """Like `discover`, from the shape rules: feeds maps id(placeholder) -> its shape.
    Raises ValueDependent when some shape needs values."""
    shapes: dict = {}
    stand: dict[int, Node] = {}
    memo: dict = {}
    for n in graph.nodes:
        if n.op == "placeholder":
            s = Node(n.op, (), {}, feeds[id(n)], n.dtype, n.name, n.where)
        elif n.op in ("variable", "constant"):
            s = n
        elif n.op == "fused":      # its shape is its body output's, resolved in the body
            out = body_rule_shapes(n, [stand[id(x)] for x in n.inputs], shapes, memo)
            s = n if out.shape == n.shape else \
                Node(n.op, n.inputs, n.attrs, out.shape, n.dtype, n.name, n.where)
        else:
            s = rule_shape(n, [stand[id(x)] for x in n.inputs], memo)
        stand[id(n)] = s
        shapes[id(n)] = (s.shape, n.dtype)
    return shapes


def body_rule_shapes(n: Node, ins: list[Node], shapes: dict, memo: dict | None = None) -> Node:
    """The body's shapes for the fused node's concrete inputs; the output's stand-in."""
    body: Graph = n.attrs["body"]
    inputs = getattr(body, "inputs", None)
    position = None if inputs is None else {id(x): j for j, x in enumerate(inputs)}
    stand: dict[int, Node] = {}
    for b in body.nodes:
        if b.op == "placeholder":
            k = position[id(b)] if position is not None else int(b.name[2:])
            s = ins[k]
        elif b.op in ("variable", "constant"):
            s = b
        else:
            s = rule_shape(b, [stand[id(x)] for x in b.inputs], memo)
        stand[id(b)] = s
        shapes[(id(n), id(b))] = (s.shape, b.dtype)
    out = stand[id(body.outputs[0])]
    if out.dtype != n.dtype:
        raise ValueDependent("fused")
    return out


def resolve(graph: Graph, feeds: dict[int, np.ndarray]) -> dict:
    """Every concrete shape: from the rules when they can, else by the dry run."""
    try:
        return infer(graph, {k: v.shape for k, v in feeds.items()})
    except ValueDependent:
        return discover(graph, feeds)
