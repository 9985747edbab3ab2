"""Import entries for ONNX's reductions, arg-reductions, matrix products and the softmax family."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import apply, constant
from graphc.onnx.ops_math import fn, like, need_float
from graphc.onnx.ops_shape import norm, reshape_to, static
from graphc.onnx.table import Unsupported, onnx_op


def reduce_axes(ctx, x, axes_in, axes_attr, noop):
    """The axes to reduce (a tuple); () for 'no reduction' (noop_with_empty_axes)."""
    axes = ctx.ints(axes_in, "axes") if axes_in is not None else axes_attr
    if not axes:
        return () if noop else tuple(range(x.ndim))
    return tuple(norm(int(a), x.ndim) if x.ndim else 0 for a in axes)


def empty_value(op: str, dtype: np.dtype):
    """What a reduction over no elements gives (ONNX: the reduction's identity element)."""
    if dtype == bool:
        big, small = True, False
    else:
        big = np.inf if dtype.kind == "f" else np.iinfo(dtype).max
        small = -np.inf if dtype.kind == "f" else np.iinfo(dtype).min
    return {"ReduceProd": 1, "ReduceMax": small, "ReduceMin": big, "ReduceLogSum": -np.inf,
            "ReduceLogSumExp": -np.inf, "ReduceMean": np.nan}.get(op, 0)


# reductions that are the identity over no axes; the others still take their elementwise
# steps there (ONNX: ReduceLogSum of no axes is log x, ReduceSumSquare x * x, ReduceL1 |x|)
PLAIN = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSumExp")


def reduction(body):
    """An entry reducing with body(x, axes, keepdims) over ONNX's axes/keepdims/noop rules."""
    def build(ctx, x, axes_in=None, *, keepdims, noop_with_empty_axes, axes):
        axes = reduce_axes(ctx, x, axes_in, axes, noop_with_empty_axes)
        if not axes and ctx.op_type in PLAIN:
            return x
        if any(x.shape[a] == 0 for a in axes):       # no elements: a constant of the shape
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape)
                          if keepdims or i not in axes)
            if ctx.op_type == "ReduceSum" and not all(isinstance(d, int) for d in shape):
                return body(x, axes, bool(keepdims))   # graphc's sum of nothing is 0 too
            ctx.need(all(isinstance(d, int) for d in shape), "an empty reduction of unknown size")
            return constant(np.full(shape, empty_value(ctx.op_type, x.dtype), x.dtype))
        return body(x, axes, bool(keepdims))
    return build


def sum_(x, axes, keep):
    return gc.sum(x, axis=axes, keepdims=keep)


def mean(x, axes, keep):
    if x.dtype.kind == "f":
        return gc.mean(x, axis=axes, keepdims=keep)
    count = int(np.prod([x.shape[a] if isinstance(x.shape[a], int) else -1 for a in axes]))
    if count < 0:
        raise Unsupported("the integer mean over an unknown-size axis")
    return apply("trunc_divide", gc.sum(x, axis=axes, keepdims=keep), like(x, count))


def min_(x, axes, keep):
    if hasattr(gc, "min"):
        return gc.min(x, axis=axes, keepdims=keep)
    if x.dtype.kind not in "fi":
        fn("min")
    return -gc.max(-x, axis=axes, keepdims=keep)


def as_float(x):
    return x if x.dtype.kind == "f" else gc.cast(x, "float64")


def back(y, x):
    return y if y.dtype == x.dtype else gc.cast(y, x.dtype)


def log_sum_exp(x, axes, keep):
    need_float(x)
    m = gc.max(x, axis=axes, keepdims=True)
    m = gc.where(apply("isinf", m), like(m, 0), m)         # all -inf: log 0, no nan
    out = gc.log(gc.sum(gc.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keep else gc.squeeze(out, axis=axes)     # the batch may be of unknown size


BODIES = {
    "ReduceSum": sum_,
    "ReduceMean": mean,
    "ReduceMax": lambda x, axes, keep: gc.max(x, axis=axes, keepdims=keep),
    "ReduceMin": min_,
    "ReduceProd": lambda x, axes, keep: fn("prod")(x, axis=axes, keepdims=keep),
    "ReduceL1": lambda x, axes, keep: gc.sum(gc.abs(x), axis=axes, keepdims=keep),
    "ReduceL2": lambda x, axes, keep: back(
        gc.sqrt(gc.sum(as_float(x) * as_float(x), axis=axes, keepdims=keep)), x),
    "ReduceSumSquare": lambda x, axes, keep: gc.sum(x * x, axis=axes, keepdims=keep),
    "ReduceLogSum": lambda x, axes, keep: gc.log(gc.sum(x, axis=axes, keepdims=keep)),
    "ReduceLogSumExp": log_sum_exp,
}
for _name, _body in BODIES.items():
    onnx_op(_name, const=(1,), keepdims=1, noop_with_empty_axes=0, axes=None)(reduction(_body))


def arg_reduce(name: str):
    """The first (or last) winner's position: the sum of argmax_mask * position."""
    def build(ctx, x, *, axis, keepdims, select_last_index):
        axis = norm(int(axis), x.ndim)
        n = x.shape[axis]
        ctx.need(isinstance(n, int) and n > 0, "an arg-reduction over an empty or unknown axis")
        ctx.need(name == "argmax" or x.dtype.kind in "fi", f"ArgMin of {x.dtype.name}")
        y = x if name == "argmax" else -x
        if select_last_index:
            y = take_reversed(y, axis, n)
        mask = gc.argmax_mask(y, axis=axis)
        pos = constant(np.arange(n).reshape([n if i == axis else 1 for i in range(x.ndim)]))
        idx = gc.sum(gc.cast(mask, "int64") * pos, axis=axis, keepdims=bool(keepdims))
        return constant(np.int64(n - 1)) - idx if select_last_index else idx
    return build


def take_reversed(x, axis, n):
    return fn("take")(x, constant(np.arange(n - 1, -1, -1)), axis=axis)


onnx_op("ArgMax", axis=0, keepdims=1, select_last_index=0)(arg_reduce("argmax"))
onnx_op("ArgMin", axis=0, keepdims=1, select_last_index=0)(arg_reduce("argmin"))


# products -----------------------------------------------------------------------------

@onnx_op("MatMul")
def matmul(ctx, a, b):
    return gc.matmul(a, b)


@onnx_op("Gemm", alpha=1.0, beta=1.0, transA=0, transB=0)
def gemm(ctx, a, b, c=None, *, alpha, beta, transA, transB):
    a = gc.transpose(a) if transA else a
    b = gc.transpose(b) if transB else b
    out = gc.matmul(a, b)
    if alpha != 1.0:
        out = out * like(out, alpha)
    if c is not None:
        out = out + (c if beta == 1.0 else c * like(c, beta))
    return out


# the softmax family ----------------------------------------------------------------------

def over_axis(body):
    """An entry for body(x, axis): at opset 13+ over one axis (default -1); below (default 1)
    over each row of x seen as a matrix of its axes before `axis` by the axes from it on."""
    def build(ctx, x, *, axis):
        if ctx.opset >= 13 or x.ndim == 0:
            return body(x, -1 if axis is None else axis)
        axis = norm(1 if axis is None else axis, x.ndim)
        if axis == x.ndim - 1:
            return body(x, -1)
        rows = static(x, "input", x.shape[axis:])
        return reshape_to(body(gc.reshape(x, (-1, int(np.prod(rows)))), -1), x.shape)
    return build


onnx_op("Softmax", axis=None)(over_axis(lambda x, axis: gc.softmax(x, axis=axis)))
onnx_op("LogSoftmax", axis=None)(over_axis(lambda x, axis: gc.log_softmax(x, axis=axis)))
onnx_op("Hardmax", axis=None)(over_axis(lambda x, axis: back(gc.argmax_mask(x, axis=axis), x)))
