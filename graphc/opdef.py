"""The op table: one `OpDef` per op (shape/dtype rule, kernel, VJP, sympy form and the facts
passes and views read), filled by the declarations in `graphc.ops`, and graphc's errors.

It sits at the very bottom (below the nodes of `graphc.ir`) so everything can read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


class GraphcError(Exception):
    """Every error a user can cause."""


class ShapeError(GraphcError, ValueError):
    """A shape or dtype rule rejected its inputs; `apply` adds the op, shapes and line."""


@dataclass(frozen=True)
class OpDef:
    """Everything about one op: shape/dtype rule, NumPy kernel, VJP rule, sympy form, flags."""
    name: str
    infer: Callable[..., tuple]   # infer(*input_nodes, **attrs) -> (shape, dtype[, attrs])
    kernel: Callable[..., np.ndarray]         # kernel(*arrays, **attrs) -> array
    vjp: Callable | None = None               # vjp(g, out, *inputs, **attrs) -> input grads
    sym: Callable | None = None               # sym(*sympy_args, **attrs) -> sympy expression
    elementwise: bool = False
    random: bool = False                      # kernel takes rng=, the executor owns the generator
    items: Callable | None = None             # items(node) -> [(shape, dtype)]: the node is a
                                              # tuple of arrays, read through `item` nodes
    # facts passes and views read (one place for them, not name lists in each reader)
    positive: bool = False                    # the result is > 0 everywhere (a safe divisor)
    glue: bool = False                        # only moves or retypes data (a cast: values too)
    shape_only: tuple[int, ...] = ()          # inputs read only for their shape
    graph_attrs: tuple[str, ...] = ()         # attributes holding a graph whose placeholders
                                              # stand for the node's inputs, in order
    decompose: Callable | None = None         # decompose(*input_nodes, **attrs) -> the same
                                              # value built from primitives (views draw it)


OPS: dict[str, OpDef] = {}
USER_OPS: set[str] = set()      # ops a user registered (gc.register_op): their kernels are
                                # checked against their rules when they run


def register(op: OpDef) -> OpDef:
    """Add an op to the table (once: a second declaration of a name is a bug)."""
    if op.name in OPS:
        raise ValueError(f"op {op.name!r} registered twice")
    OPS[op.name] = op
    return op
