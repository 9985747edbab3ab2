"""How graph pictures look: colours by kind of node, leaf shapes, labels and tooltips, the
legend, and what a node is drawn as containing (a fused body, a loop, dense's primitives).

`graphc.viz` lays the picture out (clusters, edges, scopes) from these.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Graph, Node, format_node, format_shape
from graphc.ops.fused import decomposition

# colour of each kind of node (fill) and of the edges that cross into the backward pass
FILL = {"forward": "#cfe2f3", "gradient": "#fce5cd", "update": "#d9ead3"}
BORDER = {"forward": "#3d6fa5", "gradient": "#c26a12", "update": "#38761d"}
SAVED_EDGE = "#c26a12"             # forward value read by the backward pass (saved activation)
UPDATE_EDGE = "#38761d"
LEAF_SHAPE = {"placeholder": "parallelogram", "variable": "cylinder", "constant": "note"}


def is_scalar_constant(n: Node) -> bool:
    return n.op == "constant" and n.data.size == 1


def format_value(arr: np.ndarray) -> str:
    v = arr.reshape(()).item() if arr.size == 1 else None
    if v is None:
        return f"const {format_shape(arr.shape)}"
    return f"{v:g}" if isinstance(v, float) else str(v)


def node_label(n: Node, num: dict[int, str], opts) -> str:
    """`%3 matmul` (scalar constants written in when opts.inline_scalars), shape, ∂ tag."""
    if n.op in LEAF_SHAPE:
        head = n.name or (format_value(n.data) if n.op == "constant" else n.op)
        if n.op == "constant" and n.name:
            head += f" = {format_value(n.data)}"
        lines = [head]
    else:
        args = [format_value(i.data) if opts.inline_scalars and is_scalar_constant(i) else "·"
                for i in n.inputs]
        call = n.op if all(a == "·" for a in args) else f"{n.op}({', '.join(args)})"
        lines = [f"{num[id(n)]} {call}"] + ([repr(n.name)] if n.name else [])
    dtype = "" if n.dtype == np.float32 else f" {n.dtype.name}"
    lines.append(format_shape(n.shape) + dtype)
    if n.grad_of is not None:
        lines.append(f"∂ of {num.get(id(n.grad_of), n.grad_of.label())}"
                     + (f" {n.grad_of.name!r}" if n.grad_of.name else ""))
    return "\n".join(lines)


def node_tooltip(n: Node, num: dict[int, str]) -> str:
    tip = format_node(n, num) + f"\nbuilt at {n.where}"
    if n.grad_of is not None:
        f = n.grad_of
        tip += f"\nbackward pass of {num.get(id(f), '')} {f.op} {f.label()} (built at {f.where})"
    return tip


def body_input(body: Graph, ph: Node) -> int:
    """Which input of its node a body placeholder stands for."""
    inputs = getattr(body, "inputs", None)
    if inputs is not None:
        return next(k for k, x in enumerate(inputs) if x is ph)
    return int(ph.name[2:])


def loop_label(n: Node, num: dict) -> str:
    """The head of a loop: its carries, sequences and captured inputs, one step per slice."""
    a = n.attrs
    c, xs = a["carries"], a["xs"]
    parts = [f"{c} carr{'y' if c == 1 else 'ies'}", f"{xs} sequence{'s' * (xs != 1)}"
             if xs else f"{a['length']} steps", f"{len(n.inputs) - c - xs} captured"]
    return f"{num[id(n)]} scan\n" + ", ".join(parts)


def fused_body(n: Node) -> Graph | None:
    """The ops inside a fused node or a loop, or a decomposed op's primitives (a `dense` node
    is drawn as matmul -> add -> activation)."""
    attrs = OPS[n.op].graph_attrs if n.inputs else ()
    if attrs:
        body = n.attrs.get(attrs[0])
        return body if isinstance(body, Graph) else None
    return decomposition(n)


def has_body(n: Node) -> bool:
    return bool(n.inputs) and bool(OPS[n.op].graph_attrs or OPS[n.op].decompose)


def draw_legend(dot, backward: bool = True):
    """One HTML-table node (a cluster with sample nodes costs dot more than the graph)."""
    cell = '<tr><td bgcolor="{}" border="1" color="{}">{}</td><td align="left">{}</td></tr>'
    rows = [cell.format(FILL["forward"], BORDER["forward"], "op", "forward"),
            cell.format(FILL["gradient"], BORDER["gradient"], "op", "gradient (∂ of %i)"),
            cell.format(FILL["update"], BORDER["update"], "op", "variable update"),
            cell.format("white", "white", "slanted", "placeholder"),
            cell.format("white", "white", "cylinder", "variable"),
            cell.format("white", "white", "note", "constant"),
            cell.format("white", "white", f'<font color="{SAVED_EDGE}">- - &gt;</font>',
                        "forward value read by the backward pass"),
            cell.format("white", "white", f'<font color="{UPDATE_EDGE}"><b>==&gt;</b></font>',
                        "new value of a variable"),
            cell.format("white", "white", '<font color="#999999">. . &gt;</font>',
                        "reads only the shape")]
    if not backward:
        rows = [r for k, r in enumerate(rows) if k not in (1, 2, 6, 7)]
    dot.node("legend", "<<table border='0' cellspacing='2' cellborder='0'>"
             + "".join(rows) + "</table>>", shape="plain", style="solid", fontsize="9")
