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


@dataclass
class Ctx:
    """What an entry may ask about the node it imports."""
    op_type: str
    node_name: str
    opset: int
    n_outputs: int

    def const(self, x: Node | None, what: str, default=None) -> np.ndarray | None:
        """The value of an input that must be known when importing (shape, axes, pads...)."""
        if x is None:
            return default
        if x.op != "constant":
            raise Unsupported(f"input {what!r} must be a constant (an initializer, a Constant "
                              "node or a value given in input_values), not computed at run time")
        return x.data

    def ints(self, x: Node | None, what: str, default=None) -> list[int] | None:
        v = self.const(x, what)
        return default if v is None else [int(i) for i in np.asarray(v).reshape(-1)]

    def unsupported(self, what: str) -> Unsupported:
        return Unsupported(what)

    def need(self, cond: bool, what: str) -> None:
        if not cond:
            raise Unsupported(what)
