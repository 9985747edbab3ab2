"""Resolve every node's concrete shape and dtype for one feed signature, by a dry run.

The dry run calls the registered kernels (with throwaway random generators), so the shapes the
compiled plan allocates are exactly the ones the kernels produce.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Graph, GraphcError, Node, format_shape


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
