"""The one printer of graphs: `%3 = matmul(%1, %2)  # (?, 128) float32 'h1'`.

Tests, error messages, generated-code comments and the CLI all print nodes through it. It sits
below `graphc.ir` (it reads nodes only through their fields) so the IR can print itself.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from graphc.ir import Graph, Node, Shape


_SHAPE_TEXTS: dict = {}     # shape -> its text (a listing prints a few shapes many times)


def format_shape(shape: Shape) -> str:
    text = _SHAPE_TEXTS.get(shape) if type(shape) is tuple else None
    if text is None:
        dims = ["?" if d is None else str(d) for d in shape]
        text = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
        if type(shape) is tuple and len(_SHAPE_TEXTS) < 4096:
            _SHAPE_TEXTS[shape] = text
    return text


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


_NOTES: dict = {}     # (shape, dtype) -> its note `  # (?, 4) float32` (a few per listing)


def format_node(node: Node, names: dict[int, str]) -> str:
    """One listing line: `%3 = matmul(%1, %2)  # (?, 128) float32 'h1'`. (A big plan's
    comments print ~40k of them: the common parts are looked up, not formatted again.)"""
    get, op, inputs, attrs = names.get, node.op, node.inputs, node.attrs
    args = [get(id(i), "?") for i in inputs]
    if op == "constant":
        arr = node.data
        args.append(np.array2string(arr, precision=4, threshold=6, separator=", ")
                    .replace("\n", "") if arr.size <= 6 else f"<array {format_shape(arr.shape)}>")
    if attrs:
        args += [f"{k}={format_attr(v)}" for k, v in attrs.items()]
    items = node.opdef.items if inputs else None
    if items:
        note = f"  # tuple of {len(items(node))}"
    else:
        key = (node.shape, node.dtype)
        note = _NOTES.get(key)
        if note is None:
            note = f"  # {format_shape(node.shape)} {dtype_name(node.dtype)}"
            if len(_NOTES) < 4096:
                _NOTES[key] = note
    if node.name:
        note += f" {node.name!r}"
    if node.grad_of is not None:
        note += f"  [grad of {get(id(node.grad_of)) or node.grad_of.label()}]"
    return f"{names[id(node)]} = {op}({', '.join(args)}){note}"


def format_listing(graph: Graph) -> str:
    """The whole graph, one line per node, then its outputs and updates."""
    names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
    lines = [format_node(n, names) for n in graph.nodes]
    outs = ", ".join(names[id(o)] for o in graph.outputs)
    lines.append(f"return {outs}")
    for var, new in graph.updates:
        lines.append(f"update {names[id(var)]} <- {names[id(new)]}")
    return "\n".join(lines)
