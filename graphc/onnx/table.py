"""The ONNX import table: one entry per ONNX op type, each a function building graphc nodes.

An entry declares its attributes with their defaults (`REQUIRED` when ONNX has none), the input
positions that must be constants (shapes, axes, pads, running statistics: they never become
variables and are frozen when given as graph inputs), and the function itself. The importer
checks attributes against the declaration before calling it, so an entry sees every attribute
with its default applied and never an unknown one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from graphc.ir import GraphcError, Node

REQUIRED = object()


class Unsupported(GraphcError):
    """An ONNX op, attribute value or data type that graphc cannot import (said before running)."""


@dataclass(frozen=True)
class Entry:
    op_type: str
    build: Callable                       # build(ctx, *inputs, **attrs) -> Node | tuple
    attrs: dict = field(default_factory=dict)
    const_inputs: tuple = ()              # input positions that must be constant arrays
    weights: tuple | None = None          # input positions that may become variables (None: all)


TABLE: dict[str, Entry] = {}


def onnx_op(*op_types: str, const: tuple = (), weights: tuple | None = None, **attrs):
    """Register the decorated function as the entry of `op_types` with these attribute defaults."""
    def register(fn):
        for op_type in op_types:
            if op_type in TABLE:
                raise ValueError(f"ONNX op {op_type} has two entries")
            TABLE[op_type] = Entry(op_type, fn, dict(attrs), tuple(const), weights)
        return fn
    return register


RUNTIME = 1 << 31       # stand-ins for sizes known only at run time are this large


class RuntimeSizes:
    """Sizes known only at run time (a dynamic batch), carried through shape arithmetic.

    `Shape` of a dynamic dim gives a large stand-in value (one per dim name, a fresh one per
    unnamed dim), so the shape arithmetic of exported models (`x.view(x.size(0), -1)`) folds
    like any int64; the constants it reaches are marked. Only `Reshape` and `Expand` read them
    back, as the named dim; any other use is Unsupported, and the importer refuses a marked
    constant that ends up in the graph, so a stand-in never becomes a value.
    """

    def __init__(self):
        self.names: dict[int, str | None] = {}     # stand-in -> dim name (None: unnamed)
        self.marked: dict[int, Node] = {}          # id -> constant computed from stand-ins
        self.origin: dict[int, tuple] = {}         # stand-in -> a (node, axis) of that size
                                                   # (for an unnamed one: the only one)

    def stand_in(self, dim, node: Node, axis: int) -> int:
        """The stand-in of node's dim `axis`: one per dim name, one per unnamed (node, axis)."""
        found = [v for v, (n, a) in self.origin.items() if self.names[v] == dim
                 and (dim is not None or n is node and a == axis)]
        value = found[0] if found else RUNTIME + (len(self.names) + 1) * 65537
        self.names[value] = dim
        self.origin.setdefault(value, (node, axis))
        return value

    def own_axes(self, dims, node: Node) -> dict[int, int]:
        """Positions of `dims` (a shape input's values) that copy an unnamed dim of `node`
        itself: position -> node's axis."""
        return {k: self.origin[d][1] for k, d in enumerate(dims)
                if d in self.origin and self.names[d] is None and self.origin[d][0] is node}

    def mark(self, node: Node) -> Node:
        self.marked[id(node)] = node
        return node

    def is_marked(self, node: Node | None) -> bool:
        return node is not None and id(node) in self.marked


@dataclass
class Ctx:
    """What an entry may ask about the node it imports."""
    op_type: str
    node_name: str
    opset: int
    n_outputs: int
    runtime: RuntimeSizes = field(default_factory=RuntimeSizes)
    subgraph: Callable | None = None     # subgraph(GraphProto, input nodes) -> output nodes

    def const(self, x: Node | None, what: str, default=None) -> np.ndarray | None:
        """The value of an input that must be known when importing (shape, axes, pads...)."""
        if x is None:
            return default
        if x.op != "constant":
            raise Unsupported(f"input {what!r} must be a constant (an initializer, a Constant "
                              "node or a value given in input_values), not computed at run time")
        return x.data

    def ints(self, x: Node | None, what: str, default=None) -> list[int] | None:
        if self.runtime.is_marked(x):
            raise Unsupported(f"input {what!r} depends on a size known only at run time; give "
                              "the input a fixed size (or its value in input_values)")
        v = self.const(x, what)
        return default if v is None else [int(i) for i in np.asarray(v).reshape(-1)]

    def dims(self, x: Node, what: str) -> list:
        """A shape input: ints, with a size known only at run time as its dim name (or None)."""
        if not self.runtime.is_marked(x):
            return self.ints(x, what)
        dims = [int(i) for i in np.asarray(self.const(x, what)).reshape(-1)]
        if any(abs(d) >= RUNTIME and d not in self.runtime.names for d in dims):
            raise Unsupported(f"input {what!r} is computed from a size known only at run time "
                              "(not just copied from it); give the input a fixed size")
        return [self.runtime.names.get(d, d) for d in dims]

    def unsupported(self, what: str) -> Unsupported:
        return Unsupported(what)

    def need(self, cond: bool, what: str) -> None:
        if not cond:
            raise Unsupported(what)
