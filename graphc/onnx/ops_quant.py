"""Import entries for ONNX's 8-bit integer quantization ops, as integer and float arithmetic
(8-bit float and 4-bit types stay out of scope: graphc has no such dtypes)."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import Node, constant
from graphc.onnx.ops_nn import CONV_ATTRS, conv
from graphc.onnx.table import onnx_op


def along_axis(v: Node, x: Node, axis: int, block: int) -> Node:
    """A per-axis (or per-block) scale or zero point shaped to broadcast against x."""
    if v.ndim == 0 or (v.ndim == 1 and v.shape[0] == 1 and not block):
        return gc.reshape(v, ())
    axis = axis % x.ndim
    if block:
        v = gc.repeat(v, block, axis=axis) if v.ndim == x.ndim else v
        return gc.slice(v, axis, 0, x.shape[axis])
    return gc.reshape(v, tuple(-1 if i == axis else 1 for i in range(x.ndim)))


def saturated(y: Node, dtype) -> Node:
    """Round half to even, clip to the integer type's range, cast."""
    info = np.iinfo(dtype)
    return gc.cast(gc.clip(gc.round(y), float(info.min), float(info.max)), dtype)


@onnx_op("DequantizeLinear", axis=1, block_size=0, output_dtype=0)
def dequantize(ctx, x, scale, zero=None, *, axis, block_size, output_dtype):
    ctx.need(x.dtype.kind in "iu", f"x of type {x.dtype.name}")
    s = along_axis(scale, x, axis, block_size)
    xf = gc.cast(x, scale.dtype)
    if zero is not None:
        xf = xf - gc.cast(along_axis(zero, x, axis, block_size), scale.dtype)
    y = xf * s
    if output_dtype:
        from graphc.onnx.ops_math import to_dtype
        y = gc.cast(y, to_dtype(output_dtype))
    return y


@onnx_op("QuantizeLinear", axis=1, block_size=0, output_dtype=0, saturate=1, precision=0)
def quantize(ctx, x, scale, zero=None, *, axis, block_size, output_dtype, saturate, precision):
    from graphc.onnx.ops_math import to_dtype
    dtype = zero.dtype if zero is not None else (to_dtype(output_dtype) if output_dtype
                                                 else np.dtype(np.uint8))
    ctx.need(dtype.kind in "iu", f"output type {dtype.name}")
    work = to_dtype(precision) if precision else np.dtype(np.float32) if x.dtype == np.float16 \
        else x.dtype
    y = gc.cast(x, work) / gc.cast(along_axis(scale, x, axis, block_size), work)
    y = gc.round(y)
    if zero is not None:
        y = y + gc.cast(along_axis(zero, x, axis, block_size), work)
    return saturated(y, dtype)


@onnx_op("DynamicQuantizeLinear")
def dynamic_quantize(ctx, x):
    lo = gc.minimum(gc.min(x), constant(np.float32(0)))
    hi = gc.maximum(gc.max(x), constant(np.float32(0)))
    scale = (hi - lo) / constant(np.float32(255))
    zero = saturated(constant(np.float32(0)) - lo / scale, np.uint8)
    y = saturated(gc.round(x / scale) + gc.cast(zero, "float32"), np.uint8)
    return y, scale, zero


def centered(v: Node, zero: Node | None) -> Node:
    """v - zero as int32 (exact for 8-bit values)."""
    v = gc.cast(v, "int32")
    return v if zero is None else v - gc.cast(zero, "int32")


@onnx_op("MatMulInteger")
def matmul_integer(ctx, a, b, a_zero=None, b_zero=None):
    ctx.need(a_zero is None or a_zero.ndim == 0 or a_zero.shape == (1,), "per-row zero points")
    bz = None if b_zero is None else (b_zero if b_zero.ndim == 0 else gc.reshape(b_zero, (1, -1)))
    return gc.matmul(centered(a, a_zero), centered(b, bz))


@onnx_op("QLinearMatMul")
def qlinear_matmul(ctx, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero):
    product = gc.matmul(centered(a, a_zero), centered(b, b_zero))
    factor = a_scale * b_scale / y_scale
    y = gc.cast(product, factor.dtype) * factor + gc.cast(y_zero, factor.dtype)
    return saturated(y, y_zero.dtype)


@onnx_op("ConvInteger", **CONV_ATTRS)
def conv_integer(ctx, x, w, x_zero=None, w_zero=None, **attrs):
    """The conv in float64 (exact for 8-bit products and moderate sizes), then int32."""
    xf = gc.cast(centered(x, x_zero), "float64")
    wz = None if w_zero is None or w_zero.ndim == 0 else gc.reshape(w_zero, (-1, 1, 1, 1))
    wf = gc.cast(centered(w, wz if wz is not None else w_zero), "float64")
    return gc.cast(conv(ctx, xf, wf, **attrs), "int32")


@onnx_op("QLinearConv", **CONV_ATTRS)
def qlinear_conv(ctx, x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, b=None,
                 **attrs):
    xf = gc.cast(centered(x, x_zero), "float64")
    wz = w_zero if w_zero.ndim == 0 or w_zero.shape == (1,) else \
        gc.reshape(w_zero, (-1, 1, 1, 1))
    wf = gc.cast(centered(w, wz), "float64")
    acc = conv(ctx, xf, wf, **attrs)
    if b is not None:
        acc = acc + gc.reshape(gc.cast(b, "float64"), (1, -1, 1, 1))
    ws = w_scale if w_scale.ndim == 0 else gc.reshape(w_scale, (1, -1, 1, 1))
    factor = gc.cast(x_scale * ws / y_scale, "float64")
    y = acc * factor + gc.cast(y_zero, "float64")
    return saturated(y, y_zero.dtype)
