"""ONNX control flow <-> graphc's loop primitive: Scan and Loop import as `gc.scan`, If as its
chosen branch (a constant condition) or as `where` over both branches; `scan` exports as Scan.

A subgraph (a loop body, a branch) is imported by the importer itself, with its inputs bound to
the loop's placeholders; it reads the enclosing graph's values by name, which `scan` turns
into captured inputs of the loop.
"""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import GraphcError, constant
from graphc.onnx.exporter import rule, value_info
from graphc.onnx.table import REQUIRED, Unsupported, onnx_op
from graphc.scan import scan as loop_over


def move_axis(x, source: int, dest: int):
    """x with its axis `source` moved to position `dest` (both may be negative)."""
    source, dest = source % x.ndim, dest % x.ndim
    if source == dest:
        return x
    perm = [a for a in range(x.ndim) if a != source]
    perm.insert(dest, source)
    return gc.transpose(x, tuple(perm))


@onnx_op("Scan", body=REQUIRED, num_scan_inputs=REQUIRED, scan_input_axes=None,
         scan_input_directions=None, scan_output_axes=None, scan_output_directions=None)
def scan(ctx, *args, body, num_scan_inputs, scan_input_axes, scan_input_directions,
         scan_output_axes, scan_output_directions):
    n = len(args) - num_scan_inputs
    k = len(body.output) - n
    ctx.need(n >= 0 and k >= 0 and num_scan_inputs >= 1, f"{num_scan_inputs} scan inputs")
    seqs = []
    for x, axis, rev in zip(args[n:], scan_input_axes or [0] * num_scan_inputs,
                            scan_input_directions or [0] * num_scan_inputs):
        ctx.need(-x.ndim <= axis < x.ndim, f"scan input axis {axis} of a rank-{x.ndim} input")
        x = move_axis(x, axis, 0)
        seqs.append(gc.flip(x, axis=0) if rev else x)

    def step(carry, xs):
        outs = ctx.subgraph(body, list(carry) + list(xs))
        return outs[:n], outs[n:]

    final, ys = loop_over(step, list(args[:n]), seqs)
    outs = []
    for y, axis, rev in zip(ys, scan_output_axes or [0] * k, scan_output_directions or [0] * k):
        ctx.need(-y.ndim <= axis < y.ndim, f"scan output axis {axis} of rank {y.ndim}")
        outs.append(move_axis(gc.flip(y, axis=0) if rev else y, 0, axis))
    return list(final) + outs


@onnx_op("Loop", const=(0, 1), body=REQUIRED)
def loop(ctx, trip, cond, *init, body):
    """A loop of a known number of steps; a loop whose condition is computed is a while loop,
    which graphc's static graphs cannot express."""
    if trip is None:
        raise Unsupported("a loop without a trip count (a while loop)")
    steps = ctx.ints(trip, "M")[0]
    if cond is not None and not bool(np.all(ctx.const(cond, "cond"))):
        return list(init)               # never entered; no scan outputs is all ONNX allows here
    n = len(init)

    def step(carry, _):
        i, go, *values = carry
        outs = ctx.subgraph(body, [i, go] + values)
        if not (outs[0] is go or outs[0].op == "constant" and bool(np.all(outs[0].data))):
            raise Unsupported("the loop's condition is computed in its body (a while loop)")
        return [gc.add(i, constant(np.int64(1))), go] + outs[1:1 + n], outs[1 + n:]

    start = [constant(np.int64(0)), constant(np.bool_(True))]
    final, ys = loop_over(step, start + list(init), length=max(steps, 0))
    return list(final[2:]) + list(ys)


@onnx_op("If", then_branch=REQUIRED, else_branch=REQUIRED)
def if_(ctx, cond, *, then_branch, else_branch):
    """A constant condition imports its branch; otherwise both run and `where` picks."""
    if cond.op == "constant":
        return ctx.subgraph(then_branch if bool(np.all(cond.data)) else else_branch, [])
    a, b = ctx.subgraph(then_branch, []), ctx.subgraph(else_branch, [])
    if any(x.shape != y.shape or x.dtype != y.dtype for x, y in zip(a, b)):
        raise Unsupported("the branches give different shapes or types and the condition is "
                          "known only at run time")
    pick = gc.reshape(cond, ()) if cond.ndim else cond
    return [gc.where(pick, x, y) for x, y in zip(a, b)]


# export: scan -> Scan ------------------------------------------------------------------

@rule("scan")
def scan_out(e, node, a):
    """One Scan node; its outputs (final carries, stacked ys, the saved carries) are the
    scan's items. The body reads captured values from the enclosing graph by name."""
    from graphc.onnx.exporter import emit_nodes
    body, c, x = node.attrs["body"], node.attrs["carries"], node.attrs["xs"]
    direction = int(node.attrs["reverse"])
    inner = e.sub()
    names, inputs = {}, []
    for k, ph in enumerate(body.inputs):
        if k < c + x:
            names[id(ph)] = inner.fresh("state" if k < c else "slice")
            inputs.append(value_info(e.helper, names[id(ph)], ph))
        else:
            names[id(ph)] = a[k]                     # captured: the outer value by name
    seqs = a[c:c + x]
    if not seqs:                                     # Scan needs a sequence: one of length
        if not isinstance(node.attrs["length"], int):
            raise GraphcError("a scan without sequences needs a static length")
        seqs = [e.const(np.zeros(node.attrs["length"], np.float32), hint="steps")]
        tick = inner.fresh("tick")
        inputs.append(e.helper.make_tensor_value_info(tick, e.helper.np_dtype_to_tensor_dtype(
            np.dtype(np.float32)), []))
    emit_nodes(inner, body.nodes, names)
    outs = list(body.outputs) + (list(body.inputs[:c]) if node.attrs["saves"] else [])
    results = [inner.node("Identity", [names[id(o)]], hint="out") for o in outs]
    graph = e.helper.make_graph(inner.nodes, e.fresh("body"), inputs,
                                [value_info(e.helper, r, o) for r, o in zip(results, outs)],
                                inner.inits)
    out_names = [e.fresh("scan") for _ in outs]
    e.nodes.append(e.helper.make_node(
        "Scan", list(a[:c]) + list(seqs), out_names, name=e.fresh("Scan"), body=graph,
        num_scan_inputs=len(seqs), scan_input_directions=[direction] * len(seqs),
        scan_output_directions=[direction] * (len(outs) - c)))
    return out_names


@rule("item")
def item_out(e, node, a):
    return a[0][node.attrs["index"]]
