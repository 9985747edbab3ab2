"""Import entries for ONNX's elementwise ops, activations and reductions."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import OPS, Node, apply, constant
from graphc.onnx.table import REQUIRED, Unsupported, onnx_op


def fn(name: str):
    """The graphc builder `name`, or Unsupported while graphc has no such op."""
    f = getattr(gc, name, None)
    if f is None or not callable(f):
        raise Unsupported(f"graphc has no {name} op")
    return f


def like(x: Node, value) -> Node:
    """A scalar constant of x's dtype."""
    return constant(np.asarray(value, dtype=x.dtype))


def need_float(x: Node, what: str = "input") -> None:
    if x.dtype.kind != "f":
        raise Unsupported(f"{what} of type {x.dtype.name} is not supported (floats only)")


# elementwise arithmetic and functions ----------------------------------------------------

def binary(op: str):
    def build(ctx, a, b):
        return apply(op, a, b)
    return build


for _onnx, _op in [("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Greater", "greater"),
                   ("Less", "less"), ("Equal", "equal"), ("GreaterOrEqual", "greater_equal"),
                   ("LessOrEqual", "less_equal"), ("And", "logical_and"),
                   ("Or", "logical_or"), ("Xor", "logical_xor"), ("BitwiseAnd", "bitwise_and"),
                   ("BitwiseOr", "bitwise_or"), ("BitwiseXor", "bitwise_xor")]:
    onnx_op(_onnx)(binary(_op))


def in_float32(f, x: Node) -> Node:
    """f(x) computed in float32 for float16 x (as onnxruntime does), else as it is."""
    if x.dtype != np.float16:
        return f(x)
    y = f(gc.cast(x, "float32"))
    return gc.cast(y, "float16") if y.dtype.kind == "f" else y


def unary(op: str, floats: bool = False):
    def build(ctx, x):
        if floats:
            need_float(x)
        if op not in OPS:
            raise Unsupported(f"graphc has no {op} op")
        return in_float32(lambda v: apply(op, v), x) if floats else apply(op, x)
    return build


for _onnx, _op, _floats in [
        ("Neg", "neg", False), ("Abs", "abs", False), ("Sign", "sign", False),
        ("Exp", "exp", True), ("Log", "log", True), ("Sqrt", "sqrt", True),
        ("Tanh", "tanh", True), ("Sigmoid", "sigmoid", True), ("Relu", "relu", False),
        ("Softplus", "softplus", True), ("Floor", "floor", True), ("Ceil", "ceil", True),
        ("Round", "round", True), ("Not", "logical_not", False), ("Erf", "erf", True),
        ("Sin", "sin", True), ("Cos", "cos", True), ("Tan", "tan", True),
        ("Asin", "arcsin", True), ("Acos", "arccos", True), ("Atan", "arctan", True),
        ("Sinh", "sinh", True), ("Cosh", "cosh", True), ("Asinh", "arcsinh", True),
        ("Acosh", "arccosh", True), ("Atanh", "arctanh", True),
        ("BitwiseNot", "bitwise_not", False), ("IsNaN", "isnan", True)]:
    onnx_op(_onnx)(unary(_op, _floats))


@onnx_op("Div")
def div(ctx, a, b):
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a / b
    return apply("trunc_divide", a, b)


@onnx_op("Pow")
def pow_(ctx, a, b):
    if b.dtype != a.dtype:      # ONNX: the result has the base's type
        b = gc.cast(b, a.dtype)
    return a ** b


@onnx_op("Mod", fmod=0)
def mod(ctx, a, b, *, fmod):
    return apply("fmod" if fmod else "mod", a, b)     # fmod=0: the sign of b, as Python


@onnx_op("BitShift", direction=REQUIRED)
def bit_shift(ctx, a, b, *, direction):
    ctx.need(direction in ("LEFT", "RIGHT"), f"direction {direction!r}")
    return apply("left_shift" if direction == "LEFT" else "right_shift", a, b)


@onnx_op("IsInf", detect_negative=1, detect_positive=1)
def is_inf(ctx, x, *, detect_negative, detect_positive):
    need_float(x)
    inf = apply("isinf", x)
    if detect_negative and detect_positive:
        return inf
    if not detect_negative and not detect_positive:
        return gc.logical_and(inf, gc.logical_not(inf))
    side = gc.greater(x, like(x, 0)) if detect_positive else gc.less(x, like(x, 0))
    return gc.logical_and(inf, side)


@onnx_op("Reciprocal")
def reciprocal(ctx, x):
    need_float(x)
    return like(x, 1) / x


def variadic(op: str):
    def build(ctx, *xs):
        ctx.need(len(xs) >= 1, "no inputs")
        out = xs[0]
        for x in xs[1:]:
            out = apply(op, out, x)
        if len(xs) == 1 and op in ("maximum", "minimum"):
            return out
        return out
    return build


onnx_op("Max")(variadic("maximum"))
onnx_op("Min")(variadic("minimum"))
onnx_op("Sum")(variadic("add"))


@onnx_op("Mean")
def mean_(ctx, *xs):
    return variadic("add")(ctx, *xs) / like(xs[0], len(xs))


@onnx_op("Where")
def where(ctx, c, a, b):
    return gc.where(c, a, b)


@onnx_op("Identity")
def identity(ctx, x):
    return x


# activations as compositions ------------------------------------------------------------

@onnx_op("LeakyRelu", alpha=0.01)
def leaky_relu(ctx, x, *, alpha):
    return gc.where(gc.greater_equal(x, like(x, 0)), x, x * like(x, alpha))


@onnx_op("PRelu")
def prelu(ctx, x, slope):
    return gc.where(gc.less(x, like(x, 0)), x * slope, x)


@onnx_op("Elu", alpha=1.0)
def elu(ctx, x, *, alpha):
    need_float(x)
    return gc.where(gc.greater(x, like(x, 0)), x, like(x, alpha) * (gc.exp(x) - like(x, 1)))


@onnx_op("Celu", alpha=1.0)
def celu(ctx, x, *, alpha):
    need_float(x)
    a = like(x, alpha)
    neg = a * (gc.exp(x / a) - like(x, 1))
    return gc.maximum(x, like(x, 0)) + gc.minimum(like(x, 0), neg)


@onnx_op("Selu", alpha=1.67326319217681884765625, gamma=1.05070102214813232421875)
def selu(ctx, x, *, alpha, gamma):
    need_float(x)
    neg = like(x, alpha) * gc.exp(x) - like(x, alpha)
    return like(x, gamma) * gc.where(gc.greater(x, like(x, 0)), x, neg)


@onnx_op("ThresholdedRelu", alpha=1.0)
def thresholded_relu(ctx, x, *, alpha):
    return gc.where(gc.greater(x, like(x, alpha)), x, like(x, 0))


@onnx_op("HardSigmoid", alpha=0.2, beta=0.5)
def hard_sigmoid(ctx, x, *, alpha, beta):
    need_float(x)
    return gc.maximum(like(x, 0), gc.minimum(like(x, 1), x * like(x, alpha) + like(x, beta)))


@onnx_op("HardSwish")
def hard_swish(ctx, x):
    return x * hard_sigmoid(ctx, x, alpha=1 / 6, beta=0.5)


@onnx_op("Softsign")
def softsign(ctx, x):
    need_float(x)
    return x / (like(x, 1) + gc.abs(x))


@onnx_op("Mish")
def mish(ctx, x):
    need_float(x)
    return x * gc.tanh(gc.softplus(x))


@onnx_op("Swish", alpha=1.0)
def swish(ctx, x, *, alpha):
    need_float(x)
    return in_float32(lambda v: v * gc.sigmoid(v * like(v, alpha)), x)


@onnx_op("Gelu", approximate="none")
def gelu(ctx, x, *, approximate):
    need_float(x)
    ctx.need(approximate in ("none", "tanh"), f"approximate={approximate!r}")
    half = like(x, 0.5)
    if approximate == "tanh":
        inner = like(x, np.sqrt(2 / np.pi)) * (x + like(x, 0.044715) * x * x * x)
        return half * x * (like(x, 1) + gc.tanh(inner))
    return half * x * (like(x, 1) + fn("erf")(x * like(x, 1 / np.sqrt(2))))


@onnx_op("Shrink", bias=0.0, lambd=0.5)
def shrink(ctx, x, *, bias, lambd):
    lo, hi = gc.less(x, like(x, -lambd)), gc.greater(x, like(x, lambd))
    return gc.where(lo, x + like(x, bias), gc.where(hi, x - like(x, bias), like(x, 0)))


@onnx_op("Clip", const=(1, 2))
def clip(ctx, x, lo=None, hi=None):
    out = x
    if lo is not None:
        out = gc.maximum(out, lo)
    if hi is not None:
        out = gc.minimum(out, hi)
    return out


# casts --------------------------------------------------------------------------------

def to_dtype(elem_type: int) -> np.dtype:
    from graphc.onnx.importer import np_dtype
    return np_dtype(elem_type, "the target type")


@onnx_op("Cast", to=REQUIRED, saturate=1, round_mode="up")
def cast(ctx, x, *, to, saturate, round_mode):
    return gc.cast(x, to_dtype(to))


@onnx_op("CastLike", saturate=1, round_mode="up")
def cast_like(ctx, x, target, *, saturate, round_mode):
    return gc.cast(x, target.dtype)
