"""Export rules for graphc's indexing, statistics, layout, linalg, random and image ops."""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError
from graphc.onnx.exporter import INT_MAX, rule


def static_shape(node, what):
    if not all(isinstance(d, int) for d in node.shape):
        raise GraphcError(f"{what}: export needs a static shape, got {node.shape}")
    return node.shape


@rule("take")
def take(e, n, a):
    return e.node("Gather", a, axis=n.attrs["axis"])


@rule("take_along_axis")
def take_along_axis(e, n, a):
    x, idx = n.inputs
    index = a[1]
    if idx.shape != n.shape:                     # graphc broadcasts the indices against x
        index = e.node("Expand", [index, e.ints(static_shape(n, "take_along_axis"))])
    return e.node("GatherElements", [a[0], index], axis=n.attrs["axis"])


@rule("scatter_add_along_axis")
def scatter_add_along_axis(e, n, a):
    g, idx, like = n.inputs
    index = a[1]
    if idx.shape != g.shape:
        index = e.node("Expand", [index, e.ints(static_shape(g, "scatter_add_along_axis"))])
    zeros = e.const(np.zeros(static_shape(like, "scatter_add_along_axis"), n.dtype))
    return e.node("ScatterElements", [zeros, index, e.cast(a[0], g.dtype, n.dtype)],
                  axis=n.attrs["axis"], reduction="add")


@rule("scatter_add")
def scatter_add(e, n, a):
    """take's gradient: g's rows added at the indices, as ScatterElements over a flat index
    (the indices' count may be known only at run time: an embedding's batch)."""
    g, idx, like = n.inputs
    axis = n.attrs["axis"]
    shape = static_shape(like, "scatter_add")
    k = int(np.prod(idx.shape)) if all(isinstance(d, int) for d in idx.shape) else -1
    flat_shape = shape[:axis] + (k,) + shape[axis + 1:]
    flat_g = e.node("Reshape", [e.cast(a[0], g.dtype, n.dtype), e.ints(flat_shape)])
    index = e.node("Reshape", [a[1], e.ints([1] * axis + [k] + [1] * (len(shape) - axis - 1))])
    # Expand broadcasts both ways: a 1 where the indices' count stands
    index = e.node("Expand", [index, e.ints(shape[:axis] + (1,) + shape[axis + 1:])])
    zeros = e.const(np.zeros(shape, n.dtype))
    return e.node("ScatterElements", [zeros, index, flat_g], axis=axis, reduction="add")


@rule("scatter_elements")
def scatter_elements(e, n, a):
    return e.node("ScatterElements", a, axis=n.attrs["axis"], reduction=n.attrs["reduction"])


@rule("scatter_nd")
def scatter_nd(e, n, a):
    return e.node("ScatterND", a, reduction=n.attrs["reduction"])


@rule("min", "prod", "logsumexp")
def reduce(e, n, a):
    op = {"min": "ReduceMin", "prod": "ReduceProd", "logsumexp": "ReduceLogSumExp"}[n.op]
    if not n.attrs["axis"]:
        return e.node("Identity", a)
    return e.node(op, [a[0], e.ints(n.attrs["axis"])], keepdims=int(n.attrs["keepdims"]))


@rule("argmax", "argmin")
def arg(e, n, a):
    op = "ArgMax" if n.op == "argmax" else "ArgMin"
    axis, x = n.attrs["axis"], a[0]
    if axis is None:                               # a flat index
        x, axis = e.node("Reshape", [x, e.ints([-1])]), 0
    return e.node(op, [x], axis=axis, keepdims=int(n.attrs["keepdims"]))


@rule("cumsum")
def cumsum(e, n, a):
    return e.node("CumSum", [a[0], e.ints(n.attrs["axis"])], reverse=int(n.attrs["reverse"]))


@rule("argsort")
def argsort(e, n, a):
    axis = n.attrs["axis"]
    k = n.shape[axis]
    if not isinstance(k, int):
        raise GraphcError("argsort: export needs a static size along the axis")
    out, idx = e.fresh("sorted"), e.fresh("order")
    e.nodes.append(e.helper.make_node("TopK", [a[0], e.ints([k])], [out, idx],
                                      name=e.fresh("TopK"), axis=axis,
                                      largest=int(n.attrs["descending"]), sorted=1))
    return idx


@rule("flip")
def flip(e, n, a):
    axes = list(n.attrs["axis"])
    if not axes:
        return e.node("Identity", a)
    return e.node("Slice", [a[0], e.ints([-1] * len(axes)), e.ints([-INT_MAX] * len(axes)),
                            e.ints(axes), e.ints([-1] * len(axes))])


@rule("pad")
def pad(e, n, a):
    widths = n.attrs["widths"]
    pads = [b for b, _ in widths] + [after for _, after in widths]
    value = e.const(np.asarray(n.attrs["value"], n.dtype))
    return e.node("Pad", [a[0], e.ints(pads), value])


@rule("stop_gradient")
def stop_gradient(e, n, a):
    return e.node("Identity", a)


@rule("einsum")
def einsum(e, n, a):
    return e.node("Einsum", a, equation=n.attrs["spec"])


@rule("random_normal", "random_uniform")
def random(e, n, a):
    to = e.helper.np_dtype_to_tensor_dtype(n.dtype)
    seed = {} if n.attrs["seed"] is None else {"seed": float(n.attrs["seed"])}
    if n.op == "random_normal":
        return e.node("RandomNormalLike", a, dtype=to, mean=n.attrs["mean"],
                      scale=n.attrs["std"], **seed)
    return e.node("RandomUniformLike", a, dtype=to, low=n.attrs["low"], high=n.attrs["high"],
                  **seed)


# ONNX has no Square, Log1p or Expm1 -------------------------------------------------------

@rule("square")
def square(e, n, a):
    return e.node("Mul", [a[0], a[0]])


def scalar(e, value, dtype):
    return e.const(np.asarray(value, dtype))


@rule("log1p")
def log1p(e, n, a):
    """log(u) * x / (u - 1) with u = 1 + x (Goldberg: no round-off for small x), x itself
    where u rounds to 1, and inf at inf."""
    x, one = a[0], scalar(e, 1, n.dtype)
    u = e.node("Add", [one, x])
    d = e.node("Sub", [u, one])
    y = e.node("Div", [e.node("Mul", [e.node("Log", [u]), x]), d])
    y = e.node("Where", [e.node("Equal", [d, scalar(e, 0, n.dtype)]), x, y])
    return e.node("Where", [e.node("IsInf", [x], detect_negative=0), x, y])


@rule("expm1")
def expm1(e, n, a):
    """(u - 1) * x / log(u) with u = exp(x) (Kahan), x where u rounds to 1, -1 where it
    underflows to 0, inf at inf."""
    x = a[0]
    u = e.node("Exp", [x])
    y = e.node("Div", [e.node("Mul", [e.node("Sub", [u, scalar(e, 1, n.dtype)]), x]),
                       e.node("Log", [u])])
    y = e.node("Where", [e.node("Equal", [u, scalar(e, 1, n.dtype)]), x, y])
    y = e.node("Where", [e.node("Equal", [u, scalar(e, 0, n.dtype)]), scalar(e, -1, n.dtype), y])
    return e.node("Where", [e.node("IsInf", [u]), u, y])


@rule("concat_part")
def concat_part(e, n, a):
    """concat's gradient where two or more parts have sizes known only at run time: g sliced
    between the sizes of the parts before this one (Shape of each, added) and past it."""
    axis, index = n.attrs["axis"], n.attrs["index"]
    xs, names = n.inputs[1:], a[1:]

    def size(k):
        d = xs[k].shape[axis]
        return e.ints([d]) if isinstance(d, int) else \
            e.node("Shape", [names[k]], start=axis, end=axis + 1)
    start = e.ints([0])
    for k in range(index):
        start = e.node("Add", [start, size(k)])
    stop = e.node("Add", [start, size(index)])
    return e.node("Slice", [a[0], start, stop, e.ints([axis])])
