"""The one printer of graphs: `%3 = matmul(%1, %2)  # (?, 128) float32 'h1'`.

Tests, error messages, generated-code comments and the CLI all print nodes through it. It sits
below `graphc.ir` (it reads nodes only through their fields) so the IR can print itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from graphc.ir import Graph, Node, Shape


def format_shape(shape: Shape) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def format_attr(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v)


_DTYPE_NAMES: dict = {}     # np.dtype -> its name (dtype.name costs ~5 us, once per line)


def dtype_name(dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = dtype.name
    return name


def format_node(node: Node, names: dict[int, str]) -> str:
    """One listing line: `%3 = matmul(%1, %2)  # (?, 128) float32 'h1'`."""
    args = [names.get(id(i), "?") for i in node.inputs]
    if node.op == "constant":
        arr = node.data
        args.append(np.array2string(arr, precision=4, threshold=6, separator=", ")
                    .replace("\n", "") if arr.size <= 6 else f"<array {format_shape(arr.shape)}>")
    args += [f"{k}={format_attr(v)}" for k, v in node.attrs.items()]
    line = f"{names[id(node)]} = {node.op}({', '.join(args)})"
    items = node.opdef.items if node.inputs else None
    note = f"  # tuple of {len(items(node))}" if items \
        else f"  # {format_shape(node.shape)} {dtype_name(node.dtype)}"
    if node.name:
        note += f" {node.name!r}"
    if node.grad_of is not None:
        note += f"  [grad of {names.get(id(node.grad_of), node.grad_of.label())}]"
    return line + note


def format_listing(graph: Graph) -> str:
    """The whole graph, one line per node, then its outputs and updates."""
    names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
    lines = [format_node(n, names) for n in graph.nodes]
    outs = ", ".join(names[id(o)] for o in graph.outputs)
    lines.append(f"return {outs}")
    for var, new in graph.updates:
        lines.append(f"update {names[id(var)]} <- {names[id(new)]}")
    return "\n".join(lines)
