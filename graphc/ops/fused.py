"""Ops that only the optimizer builds: a fused elementwise group and dense (the GEMM epilogue).

`fused(*inputs, body=Body)` evaluates a small inner graph whose placeholders in0, in1, ...
stand for the inputs; `dense(a, b[, bias])` is act(op(a) @ op(b) + bias) in one step
(`dense_parts` spells it out in primitives).
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import OPS, Graph, Node, OpDef, ShapeError, apply, evaluate, format_shape, \
    register
from graphc.ops.common import broadcast_shapes, promote


class Body(Graph):
    """The inner graph of a fused or loop node: `inputs` are its placeholders, in input order;
    a fused body has one output, a loop body one per value a step makes."""

    def __init__(self, inputs, outputs: Node | list[Node]):
        super().__init__([outputs] if isinstance(outputs, Node) else list(outputs))
        self.inputs = tuple(inputs)

    @classmethod
    def ordered(cls, inputs, output: Node, nodes: list[Node]) -> Body:
        """A body of one output whose nodes the caller already has in Graph's order (fusion
        knows it per form: thousands of bodies without a toposort each)."""
        body = cls.__new__(cls)
        body.outputs, body.updates, body.nodes = (output,), (), nodes
        body.inputs = tuple(inputs)
        return body

    def __repr__(self) -> str:
        text = self.__dict__.get("text")     # made once: every listing line of its node asks
        if text is None:
            ops = [n.op for n in self.nodes if n.inputs]
            text = self.text = f"<{len(ops)} ops: {', '.join(ops)}>"
        return text


def inline(body: Body, values: list[Node]) -> list[Node]:
    """The body's outputs rebuilt on `values` in place of its placeholders."""
    done: dict[int, Node] = {id(p): v for p, v in zip(body.inputs, values)}
    for b in body.nodes:
        if id(b) not in done:
            done[id(b)] = b.replace([done[id(i)] for i in b.inputs]) if b.inputs else b
    return [done[id(o)] for o in body.outputs]


def fused_infer(*xs, body):
    if not isinstance(body, Body) or len(xs) != len(body.inputs) or len(body.outputs) != 1:
        raise ShapeError("the body must be a graph with one placeholder per input and one "
                         "output")
    for k, (x, p) in enumerate(zip(xs, body.inputs)):
        if p.op != "placeholder" or p.dtype != x.dtype or len(p.shape) != len(x.shape) \
                or any(a != b and isinstance(a, int) and isinstance(b, int)
                       for a, b in zip(p.shape, x.shape)):
            raise ShapeError(f"body input {k} is {format_shape(p.shape)} {p.dtype.name}, "
                             f"the node gives {format_shape(x.shape)} {x.dtype.name}")
    out = body.outputs[0]
    return out.shape, out.dtype


def fused_kernel(*arrays, body):
    return evaluate(body.outputs, dict(zip(body.inputs, arrays)))[0]


VJP: list = []     # autodiff's vjp, registered when autodiff (above the op table) is imported


def fused_vjp(g, out, *xs, body):
    """The body's VJP (autodiff's walk, through the hook) with respect to its placeholders,
    then inlined on the real inputs and cotangent. Taken on the placeholders, these are the
    partial derivatives a VJP must give: walking the inlined body back to the real inputs
    would also follow one input into another computed from it (counting that path twice,
    and repeating the walk for every fused node upstream)."""
    vjp = VJP[0]
    wrt = [p for p, x in zip(body.inputs, xs) if x.dtype.kind == "f"]
    if not wrt:
        return (None,) * len(xs)
    seed = Node("placeholder", (), {}, g.shape, g.dtype, "g")
    grads = vjp(body.outputs[0], wrt, [seed])
    grads = iter(inline(Body(list(body.inputs) + [seed], grads), list(xs) + [g]))
    return tuple(next(grads) if x.dtype.kind == "f" else None for x in xs)


def fused_sym(*args, body):
    vals: dict[Node, object] = dict(zip(body.inputs, args))
    for n in body.nodes:
        if n in vals:
            continue
        if n.op == "constant":
            if n.data.size != 1:
                return None
            v = n.data.item()
            vals[n] = sp.Integer(int(v)) if float(v).is_integer() else sp.Float(v)
            continue
        sym = OPS[n.op].sym
        ins = [vals[i] for i in n.inputs]
        vals[n] = sym(*ins, **n.attrs) if sym is not None else None
        if vals[n] is None:
            return None
    return vals[body.outputs[0]]


register(OpDef("fused", fused_infer, fused_kernel, fused_vjp, fused_sym, graph_attrs=("body",)))


# dense --------------------------------------------------------------------------------

# the elementwise ops dense may end with: their VJPs read the op's input only through its
# output (relu's reads x > 0, which is out > 0), so dense's VJP can call them on `out`
ACTIVATIONS = ("relu", "sigmoid", "tanh")


def dense_parts(a, b, bias=None, *, activation=None, transpose_a=False, transpose_b=False):
    """dense as primitives: activation(op(a) @ op(b) + bias), the one definition of what a
    dense node computes (the kernel and the VJP follow it, viz and formula draw it)."""
    a = apply("transpose", a) if transpose_a else a
    b = apply("transpose", b) if transpose_b else b
    out = apply("matmul", a, b)
    if bias is not None:
        out = apply("add", out, bias)
    return apply(activation, out) if activation else out


def decomposition(n: Node) -> Body | None:
    """A node of a decomposed op as a Body of primitives on placeholders in0, in1, ..."""
    decompose = OPS[n.op].decompose if n.inputs else None
    if decompose is None:
        return None
    ins = [Node("placeholder", (), {}, i.shape, i.dtype, f"in{k}")
           for k, i in enumerate(n.inputs)]
    return Body(ins, decompose(*ins, **n.attrs))


def bias_changes(bias, shape) -> bool:
    try:
        return broadcast_shapes(bias, shape) != shape
    except ShapeError:
        return True


def dense_infer(a, b, bias=None, *, activation=None, transpose_a=False, transpose_b=False):
    if a.ndim != 2 or b.ndim != 2:
        raise ShapeError("dense needs 2-D operands")
    if activation is not None and activation not in ACTIVATIONS:
        raise ShapeError(f"unknown activation {activation!r}")
    (m, ka), (kb, n) = a.shape[::-1] if transpose_a else a.shape, \
        b.shape[::-1] if transpose_b else b.shape
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise ShapeError(f"inner dimensions do not match: {ka} vs {kb}")
    shape = (m, n)
    if bias is not None and bias_changes(bias.shape, shape):
        raise ShapeError(f"bias {format_shape(bias.shape)} does not broadcast to the product's "
                         f"shape {format_shape(shape)}")
    dtype = promote(a, b, bias) if bias is not None else promote(a, b)
    attrs = {"activation": activation, "transpose_a": bool(transpose_a),
             "transpose_b": bool(transpose_b)}
    return shape, dtype, attrs


def dense_kernel(a, b, bias=None, *, activation, transpose_a, transpose_b):
    out = np.matmul(a.T if transpose_a else a, b.T if transpose_b else b)
    if bias is not None:
        out = np.add(out, bias, out=out) if out.dtype == np.result_type(out, bias) \
            else out + bias
    return OPS[activation].kernel(out) if activation else out


def dense_vjp(g, out, a, b, bias=None, *, activation, transpose_a, transpose_b):
    """C = A @ B, A = op(a), B = op(b): dA = gz @ B^T, dB = A^T @ gz, written as dense ops."""
    gz = OPS[activation].vjp(g, out, out)[0] if activation else g
    ta, tb = transpose_a, transpose_b
    ga = apply("dense", b, gz, transpose_a=tb, transpose_b=True) if ta else \
        apply("dense", gz, b, transpose_b=not tb)
    gb = apply("dense", gz, a, transpose_a=True, transpose_b=ta) if tb else \
        apply("dense", a, gz, transpose_a=not ta)
    return (ga, gb) if bias is None else (ga, gb, gz)


register(OpDef("dense", dense_infer, dense_kernel, dense_vjp, decompose=dense_parts))
