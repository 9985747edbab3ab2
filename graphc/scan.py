"""Loops in the graph: `scan` traces a step function once into a body graph and repeats it.

`scan(fn, init, xs)` has `jax.lax.scan`'s meaning: `fn(carry, x) -> (carry, y)` runs once per
slice of `xs` along axis 0, and the result is (final carry, the y's stacked on axis 0). The
scan node is tuple-valued (see `graphc.ops.items`): its items are the final carries, the stacked
y's, and the carry that entered each step (stacked: what the gradient needs; a pass drops it
when nothing reads it). The VJP is another scan, backwards in time, over the body's VJP; it
recomputes one step's forward values from the saved carry, so memory grows with the carries
only, and gradients of gradients are scans again.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from graphc.autodiff import differentiable, vjp, zeros_like
from graphc.ir import GraphcError, Node, OpDef, ShapeError, apply, as_node, \
    format_shape, register, toposort, user_line
from graphc.ops.fused import Body, inline
from graphc.ops.items import TUPLE_DTYPE

MAX_LENGTH = 1 << 31


# the op ---------------------------------------------------------------------------------

def loop_parts(inputs, carries: int, xs: int):
    """(init carries, sequences, captured values) of a scan node's inputs."""
    return inputs[:carries], inputs[carries:carries + xs], inputs[carries + xs:]


def same_type(a, b) -> bool:
    """Shapes and dtypes agree; a dim known only at run time matches anything."""
    return a.dtype == b.dtype and len(a.shape) == len(b.shape) and all(
        p == q or not isinstance(p, int) or not isinstance(q, int)
        for p, q in zip(a.shape, b.shape))


def static_length(seqs, length):
    sizes = {x.shape[0] for x in seqs if isinstance(x.shape[0], int)}
    if len(sizes) > 1:
        raise ShapeError(f"the sequences have different lengths {sorted(sizes)} along axis 0")
    if length is not None and sizes and sizes != {length}:
        raise ShapeError(f"length={length} but the sequences have length {sizes.pop()}")
    return length if length is not None else (sizes.pop() if sizes else None)


def scan_infer(*inputs, body, carries, xs, reverse=False, length=None, saves=True):
    if not isinstance(body, Body) or len(body.inputs) != len(inputs):
        raise ShapeError("the body must be a graph with one placeholder per input")
    if not (isinstance(carries, int) and isinstance(xs, int) and 0 <= carries
            and 0 <= xs and carries + xs <= len(inputs)
            and carries <= len(body.outputs)):
        raise ShapeError(f"bad counts carries={carries!r}, xs={xs!r}")
    if length is not None and not (isinstance(length, int) and 0 <= length <= MAX_LENGTH):
        raise ShapeError(f"length must be an int in [0, {MAX_LENGTH}], got {length!r}")
    init, seqs, caps = loop_parts(inputs, carries, xs)
    if not seqs and length is None:
        raise ShapeError("without sequences to scan over, give the number of steps (length=)")
    for x in seqs:
        if x.ndim == 0:
            raise ShapeError("sequences must have a leading time axis, got a scalar")
    steps = [x for x in init] + [Node("placeholder", (), {}, x.shape[1:], x.dtype)
                                 for x in seqs] + list(caps)
    for k, (x, ph) in enumerate(zip(steps, body.inputs)):
        if ph.op != "placeholder" or not same_type(ph, x):
            raise ShapeError(f"body input {k} is {format_shape(ph.shape)} {ph.dtype.name}, "
                             f"the loop gives {format_shape(x.shape)} {x.dtype.name}")
    for k, (c, out) in enumerate(zip(init, body.outputs)):
        if not same_type(c, out):
            raise ShapeError(f"the step returns carry {k} as {format_shape(out.shape)} "
                             f"{out.dtype.name}, but it entered as {format_shape(c.shape)} "
                             f"{c.dtype.name}")
    static_length(seqs, length)
    attrs = {"body": body, "carries": carries, "xs": xs, "reverse": bool(reverse),
             "length": length, "saves": bool(saves)}
    return (), np.dtype(TUPLE_DTYPE), attrs


def scan_items(node: Node) -> list[tuple]:
    """final carries, stacked y's, stacked carries entering each step (when it saves them)."""
    a = node.attrs
    init, seqs, _ = loop_parts(node.inputs, a["carries"], a["xs"])
    steps = static_length(seqs, a["length"])
    ys = node.attrs["body"].outputs[a["carries"]:]
    saved = [((steps,) + c.shape, c.dtype) for c in init] if a["saves"] else []
    return [(c.shape, c.dtype) for c in init] + [((steps,) + y.shape, y.dtype) for y in ys] \
        + saved


def scan_kernel(*arrays, body, carries, xs, reverse, length, saves=True, step=None):
    """Run the body once per step; `step(list of arrays) -> list of arrays` runs the body
    (the reference interpreter unless the runtime gives its compiled plan)."""
    from graphc.ir import evaluate
    if step is None:
        def step(values):
            return evaluate(body.outputs, dict(zip(body.inputs, values)))
    init, seqs, caps = loop_parts(list(arrays), carries, xs)
    steps = length if not seqs else seqs[0].shape[0]
    if any(x.shape[0] != steps for x in seqs):
        raise ValueError(f"scan: the sequences have lengths {[x.shape[0] for x in seqs]} "
                         f"along axis 0 (length={length})")
    carry, ys, saved = run_steps(step, init, seqs, caps, carries, steps, reverse, saves)
    if steps:
        return tuple(carry) + stack(ys) + (stack(saved) if saves else ())
    return tuple(carry) + empty_ys(body, step, carries, init, seqs, caps) \
        + (tuple(np.empty((0,) + c.shape, c.dtype) for c in init) if saves else ())


def run_steps(step, init, seqs, caps, carries, steps, reverse, saves):
    """The loop itself, NumPy only (exported modules inline it): the final carries, each
    step's ys and the carries entering each step (when `saves`), both in time order."""
    order = range(steps - 1, -1, -1) if reverse else range(steps)
    carry, ys, saved = list(init), [], []
    for t in order:
        outs = step(carry + [x[t] for x in seqs] + list(caps))
        if saves:
            saved.append(carry)
        carry = [np.asarray(c) for c in outs[:carries]]
        ys.append(outs[carries:])
    if reverse:
        ys.reverse()
        saved.reverse()
    return carry, ys, saved


def stack(rows: list[list]) -> tuple:
    """Per-step values stacked on a new axis 0."""
    return tuple(np.stack(col) for col in zip(*rows))


def empty_ys(body, step, carries: int, init, seqs, caps) -> tuple:
    """The stacked y's of zero steps: empty arrays of the shapes one step would give (an
    empty sequence still has its step shape). The body's shape rules on this call's shapes
    give them; when they cannot (a fused group keeps its body's shapes), one step is run on
    zeros and its values dropped."""
    ys = body.outputs[carries:]
    if not all(isinstance(d, int) for n in ys for d in n.shape):
        given = [Node("placeholder", (), {}, a.shape, a.dtype) for a in init] \
            + [Node("placeholder", (), {}, x.shape[1:], x.dtype) for x in seqs] \
            + [Node("placeholder", (), {}, a.shape, a.dtype) for a in caps]
        try:
            ys = inline(body, given)[carries:]
        except GraphcError:        # a fused group's shapes stayed its body's: one step
            ys = body.outputs[carries:]
        if not all(isinstance(d, int) for n in ys for d in n.shape):
            outs = step(list(init) + [np.zeros(x.shape[1:], x.dtype) for x in seqs]
                        + list(caps))
            return tuple(np.empty((0,) + np.shape(y), np.asarray(y).dtype)
                         for y in outs[carries:])
    return tuple(np.empty((0,) + n.shape, n.dtype) for n in ys)


def scan_vjp(g, out, *inputs, body, carries, xs, reverse, length, saves):
    """Backpropagation through time: a scan in the other direction whose carries are the
    carries' cotangents and the captured values' accumulated gradients."""
    c, n = carries, len(body.outputs) - carries
    init, seqs, caps = loop_parts(inputs, c, xs)
    if not saves:                 # pruned by a pass: run the loop again, keeping the carries
        out = apply("scan", *inputs, body=body, carries=c, xs=xs, reverse=reverse,
                    length=length)
        g = tuple(g) + (None,) * c
    item = lambda k: apply("item", out, index=k)  # noqa: E731
    zero = lambda k: zeros_like(item(k))  # noqa: E731
    g_carry = [g[k] if g[k] is not None else zero(k) for k in range(c)]
    ys = [k for k in range(c, c + n) if g[k] is not None and body.outputs[k].dtype.kind == "f"]
    fed = [k for k in range(c + n, c + n + c) if g[k] is not None]   # cotangents of the
    wrt_c = [k for k in range(c) if differentiable(init[k])]         # saved carries
    wrt_x = [j for j, x in enumerate(seqs) if differentiable(x)]
    wrt_w = [j for j, w in enumerate(caps) if differentiable(w)]
    accs = [zeros_like(caps[j]) for j in wrt_w]

    def back(carry, x):
        cbar, acc = carry[:c], carry[c:]
        ct, xt, rest = x[:c], x[c:c + len(seqs)], x[c + len(seqs):]
        outs = inline(body, list(ct) + list(xt) + list(caps))
        cts = list(cbar) + list(rest[:len(ys)])
        outs = outs[:c] + [outs[k] for k in ys]
        floats = [k for k, o in enumerate(outs) if differentiable(o)]
        wrt = [ct[k] for k in wrt_c] + [xt[j] for j in wrt_x] + [caps[j] for j in wrt_w]
        # partial derivatives: a captured W.T is an input beside W, its part added outside
        grads = list(vjp([outs[k] for k in floats], wrt, [cts[k] for k in floats],
                         leaves=True)) \
            if floats and wrt else [zeros_like(w) for w in wrt]
        of_carry = dict(zip(wrt_c, grads))
        new_c = [of_carry.get(k, cbar[k]) for k in range(c)]
        for j, s in zip(fed, rest[len(ys):]):
            new_c[j - c - n] = new_c[j - c - n] + s
        gx = grads[len(wrt_c):len(wrt_c) + len(wrt_x)]
        gw = grads[len(wrt_c) + len(wrt_x):]
        return new_c + [a + b for a, b in zip(acc, gw)], gx

    saved = [item(c + n + k) for k in range(c)]
    final, gxs = scan(back, g_carry + accs, saved + list(seqs) + [g[k] for k in ys]
                      + [g[k] for k in fed], reverse=not reverse)
    result: list = [final[k] if differentiable(init[k]) else None for k in range(c)]
    gx_of = dict(zip(wrt_x, gxs))
    result += [gx_of.get(j) for j in range(len(seqs))]
    gw_of = dict(zip(wrt_w, final[c:]))
    result += [gw_of.get(j) for j in range(len(caps))]
    return tuple(result)


register(OpDef("scan", scan_infer, scan_kernel, scan_vjp, items=scan_items,
               graph_attrs=("body",)))


# tracing ----------------------------------------------------------------------------------

def flatten(tree, what: str) -> tuple[list[Node], object]:
    """A node, or a tuple/list of nodes, as a flat list and its form."""
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        return [as_node(x) for x in tree], type(tree)
    if isinstance(tree, Node):
        return [tree], Node
    raise GraphcError(f"scan: {what} must be a node or a tuple/list of nodes, got "
                      f"{type(tree).__name__}\n  at {user_line()}")


def unflatten(nodes: list[Node], form):
    if form is Node:
        return nodes[0]
    return None if form is None else form(nodes)


def capture(inputs: list[Node], outputs: list[Node]) -> tuple[list[Node], Body]:
    """The body over `inputs`, with every outer value it reads (variables, placeholders,
    computed nodes; not constants) turned into a further input: (those outer nodes, body)."""
    inner = {id(p) for p in inputs}
    outer: list[Node] = []
    done: dict[int, Node] = {}
    for n in toposort(outputs):
        if id(n) in inner:
            done[id(n)] = n
        elif any(id(i) in inner for i in n.inputs):
            for i in n.inputs:
                if id(i) not in inner and id(i) not in done and i.op != "constant":
                    done[id(i)] = Node("placeholder", (), {}, i.shape, i.dtype,
                                       f"captured{len(outer)}", i.where, i.scope)
                    outer.append(i)
            inner.add(id(n))
            done[id(n)] = n.replace([done.get(id(i), i) for i in n.inputs])
    for o in outputs:                        # an output that does not depend on the step
        if id(o) not in inner and id(o) not in done and o.op != "constant":
            done[id(o)] = Node("placeholder", (), {}, o.shape, o.dtype,
                               f"captured{len(outer)}", o.where, o.scope)
            outer.append(o)
    phs = list(inputs) + [done[id(o)] for o in outer]
    return outer, Body(phs, [done.get(id(o), o) for o in outputs])


def scan(fn: Callable, init, xs=None, length: int | None = None, reverse: bool = False):
    """(final carry, stacked ys) of `carry, y = fn(carry, x)` over the slices of xs (axis 0).

    init, xs and what fn returns may be nodes or tuples/lists of nodes; nodes from outside
    that fn reads (variables, inputs) become inputs of the loop. length: the number of steps
    when there is no xs. reverse: run from the last slice to the first (ys keep xs' order)."""
    where = user_line()
    if not callable(fn):        # scan(3, ...) was a TypeError inside scan
        raise GraphcError(f"scan: fn must be a function (carry, x) -> (carry, y), got "
                          f"{type(fn).__name__}\n  at {where}")
    init_nodes, init_form = flatten(init, "init")
    x_nodes, x_form = flatten(xs, "xs")
    for x in x_nodes:
        if x.ndim == 0:
            raise GraphcError(f"scan: xs must have a leading time axis, got a scalar\n"
                              f"  at {where}")
    carry_in = [Node("placeholder", (), {}, c.shape, c.dtype, f"carry{k}", where)
                for k, c in enumerate(init_nodes)]
    x_in = [Node("placeholder", (), {}, x.shape[1:], x.dtype, f"x{k}", where)
            for k, x in enumerate(x_nodes)]
    result = fn(unflatten(carry_in, init_form), unflatten(x_in, x_form))
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise GraphcError(f"scan: fn must return a pair (carry, y), got {result!r}\n"
                          f"  at {where}")
    carry_out, form = flatten(result[0], "the carry fn returns")
    if len(carry_out) != len(init_nodes) or (form is Node) != (init_form is Node):
        raise GraphcError(f"scan: fn returns {len(carry_out)} carries, init has "
                          f"{len(init_nodes)}\n  at {where}")
    carry_out = [apply("cast", o, dtype=c.dtype.name) if o.dtype != c.dtype
                 and np.can_cast(o.dtype, c.dtype, "same_kind") else o
                 for o, c in zip(carry_out, init_nodes)]
    ys, y_form = flatten(result[1], "the y fn returns")
    captured, body = capture(carry_in + x_in, carry_out + ys)
    node = apply("scan", *init_nodes, *x_nodes, *captured, body=body, carries=len(init_nodes),
                 xs=len(x_nodes), reverse=reverse, length=length, _where=where)
    items = [apply("item", node, index=k, _where=where) for k in range(len(carry_out) + len(ys))]
    return unflatten(items[:len(carry_out)], init_form), unflatten(items[len(carry_out):], y_form)
