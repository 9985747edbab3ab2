"""graphc graph -> ONNX model: one export rule per graphc op, in a table like the import one.

Placeholders become graph inputs (a None dim stays dynamic, a named dim keeps its name),
variables and constants become initializers, and each node becomes a few ONNX nodes. An op
without a rule raises GraphcError naming it before anything is written.
"""
from __future__ import annotations

import itertools
import os

import numpy as np

from graphc.ir import Graph, GraphcError, Node, format_shape

OPSET = 18
INT_MAX = 2 ** 63 - 1
RULES: dict = {}

SAME_NAME = {
    "add": "Add", "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max", "minimum": "Min",
    "greater": "Greater", "greater_equal": "GreaterOrEqual", "less": "Less",
    "less_equal": "LessOrEqual", "equal": "Equal", "logical_and": "And", "logical_or": "Or",
    "logical_xor": "Xor", "bitwise_and": "BitwiseAnd", "bitwise_or": "BitwiseOr",
    "bitwise_xor": "BitwiseXor", "div": "Div",
    "neg": "Neg", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "abs": "Abs", "sign": "Sign",
    "tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu", "softplus": "Softplus",
    "floor": "Floor", "ceil": "Ceil", "round": "Round", "logical_not": "Not",
    "isnan": "IsNaN", "isinf": "IsInf", "bitwise_not": "BitwiseNot", "tan": "Tan",
    "arcsin": "Asin", "arccos": "Acos", "arctan": "Atan", "sinh": "Sinh", "cosh": "Cosh",
    "arcsinh": "Asinh", "arccosh": "Acosh", "arctanh": "Atanh", "erf": "Erf", "sin": "Sin",
    "cos": "Cos", "matmul": "MatMul", "where": "Where",
}
TYPED = {"logical_and", "logical_or", "logical_xor", "logical_not", "isnan", "isinf", "where"}


def rule(*ops):
    def register(fn):
        for op in ops:
            RULES[op] = fn
        return fn
    return register


class Emitter:
    """Collects ONNX nodes and initializers; hands out fresh value names."""

    def __init__(self, counter=None, taken: frozenset = frozenset()):
        from onnx import helper, numpy_helper
        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits = [], []
        self.counter = counter or itertools.count(1)
        self.taken = taken               # the user's input and output names

    def sub(self) -> Emitter:
        """An emitter for a subgraph (a loop body): its names stay unique in the model."""
        return Emitter(self.counter, self.taken)

    def fresh(self, hint: str) -> str:
        """A new name, never one of the user's (an input named `w_1` was also the name of
        variable w's initializer: an invalid model)."""
        name = f"{hint}_{next(self.counter)}"
        return name if name not in self.taken else self.fresh(hint)

    def node(self, op_type: str, inputs: list[str], hint: str = "", **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out],
                                                name=self.fresh(op_type), **attrs))
        return out

    def const(self, value, dtype=None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        name = self.fresh(hint)
        self.inits.append(self.numpy_helper.from_array(arr, name))
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64), hint="ints")

    def cast(self, name: str, src: np.dtype, dst: np.dtype) -> str:
        if np.dtype(src) == np.dtype(dst):
            return name
        return self.node("Cast", [name], to=self.helper.np_dtype_to_tensor_dtype(np.dtype(dst)))

    def shape_of(self, node: Node, name: str, keep_as_one=()) -> str:
        """The shape of `node` as an int64 vector: a constant when static."""
        if all(isinstance(d, int) for d in node.shape):
            return self.ints([1 if i in keep_as_one else d for i, d in enumerate(node.shape)])
        shape = self.node("Shape", [name])
        if not keep_as_one:
            return shape
        mask = np.array([i in keep_as_one for i in range(node.ndim)])
        return self.node("Where", [self.const(mask), self.ints([1] * node.ndim), shape])


# rules: rule(e, node, args) -> output name; args are the inputs' ONNX names ------------

@rule(*SAME_NAME)
def same_name(e, n, a):
    if n.op in TYPED or n.op.startswith(("greater", "less", "equal")):
        if n.op == "where":
            a = [a[0]] + [e.cast(x, i.dtype, n.dtype) for x, i in zip(a[1:], n.inputs[1:])]
        elif n.op.startswith(("greater", "less", "equal")):
            common = np.result_type(*[i.dtype for i in n.inputs])
            a = [e.cast(x, i.dtype, common) for x, i in zip(a, n.inputs)]
        return e.node(SAME_NAME[n.op], a)
    a = [e.cast(x, i.dtype, n.dtype) for x, i in zip(a, n.inputs)]
    return e.node(SAME_NAME[n.op], a)


@rule("mod", "fmod")
def mod(e, n, a):
    a = [e.cast(x, i.dtype, n.dtype) for x, i in zip(a, n.inputs)]
    if n.op == "mod" and n.dtype.kind == "f":    # a - b floor(a / b): Mod(fmod=0) is ints only
        quotient = e.node("Floor", [e.node("Div", a)])
        return e.node("Sub", [a[0], e.node("Mul", [a[1], quotient])])
    return e.node("Mod", a, fmod=int(n.op == "fmod"))


@rule("floor_divide")
def floor_divide(e, n, a):
    """Integers: (a - a mod b) / b, exact (Mod with fmod=0 has b's sign, as Python). Floats as
    NumPy (and Python) do, not floor(a / b) (1 // 0.1 is 9.0): m = fmod(a, b), the quotient
    (a - m) / b rounded, less 1 where m and b have opposite signs."""
    a, b = [e.cast(x, i.dtype, n.dtype) for x, i in zip(a, n.inputs)]
    if n.dtype.kind != "f":
        return e.node("Div", [e.node("Sub", [a, e.node("Mod", [a, b])]), b])
    m = e.node("Mod", [a, b], fmod=1)
    zero = e.const(np.zeros((), n.dtype))
    negative = [e.node("Less", [x, zero]) for x in (m, b)]
    off = e.node("And", [e.node("Not", [e.node("Equal", [m, zero])]), e.node("Xor", negative)])
    q = e.node("Round", [e.node("Div", [e.node("Sub", [a, m]), b])])
    return e.node("Sub", [q, e.cast(off, np.bool_, n.dtype)])


@rule("left_shift", "right_shift")
def shift(e, n, a):
    """BitShift takes unsigned ints; a signed left shift is the same bits as an unsigned one."""
    left = n.op == "left_shift"
    if n.dtype.kind == "i" and not left:
        raise GraphcError("right_shift of signed integers has no ONNX form (BitShift is "
                          "logical, NumPy's is arithmetic)")
    work = np.dtype(n.dtype.name.replace("int", "uint")) if n.dtype.kind == "i" else n.dtype
    a = [e.cast(x, i.dtype, work) for x, i in zip(a, n.inputs)]
    out = e.node("BitShift", a, direction="LEFT" if left else "RIGHT")
    return e.cast(out, work, n.dtype)


@rule("trunc")
def trunc(e, n, a):
    return e.node("Mul", [e.node("Sign", a), e.node("Floor", [e.node("Abs", a)])])


@rule("trunc_divide")
def trunc_divide(e, n, a):
    """Div rounds toward zero on integers only: a float quotient is truncated after it."""
    q = e.node("Div", [e.cast(x, i.dtype, n.dtype) for x, i in zip(a, n.inputs)])
    return trunc(e, n, [q]) if n.dtype.kind == "f" else q


@rule("cast")
def cast(e, n, a):
    if n.inputs[0].dtype == n.dtype:
        return e.node("Identity", a)
    return e.cast(a[0], n.inputs[0].dtype, n.dtype)


@rule("reshape")
def reshape(e, n, a):
    if len(a) == 2:
        keep = n.attrs.get("keepdims_of") or ()
        dims = [1 if i in keep else d for i, d in enumerate(n.inputs[1].shape)]
        if sum(not isinstance(d, int) for d in dims) <= 1:     # -1 for the batch: no Shape
            return e.node("Reshape", [a[0], e.ints([d if isinstance(d, int) else -1
                                                    for d in dims])])
        return e.node("Reshape", [a[0], e.shape_of(n.inputs[1], a[1], keep)])
    return e.node("Reshape", [a[0], e.ints(n.attrs["shape"])])


@rule("broadcast_to")
def broadcast_to(e, n, a):
    if len(a) == 2 and not all(isinstance(d, int) for d in n.inputs[1].shape):
        like = e.cast(a[1], n.inputs[1].dtype, n.dtype)   # Where broadcasts x against like
        return e.node("Where", [e.const(np.ones(1, bool)), a[0], like])
    shape = e.shape_of(n.inputs[1], a[1]) if len(a) == 2 else e.ints(n.attrs["shape"])
    return e.node("Expand", [a[0], shape])


@rule("transpose")
def transpose(e, n, a):
    return e.node("Transpose", a, perm=list(n.attrs["axes"]))


@rule("concat")
def concat(e, n, a):
    a = [e.cast(x, i.dtype, n.dtype) for x, i in zip(a, n.inputs)]
    return e.node("Concat", a, axis=n.attrs["axis"])


@rule("slice")
def slice_(e, n, a):
    at = n.attrs
    stop = INT_MAX if at["stop"] is None else at["stop"]
    return e.node("Slice", [a[0], e.ints([at["start"]]), e.ints([stop]), e.ints([at["axis"]])])


@rule("unslice")
def unslice(e, n, a):
    x, like = n.inputs
    axis, start, stop = n.attrs["axis"], n.attrs["start"], n.attrs["stop"]
    size = like.shape[axis]
    if not isinstance(size, int):
        raise GraphcError("unslice: export needs a static size along the axis")
    s = start % size if start < 0 else start
    t = size if stop is None else (stop % size if stop < 0 else stop)
    pads = [0] * (2 * like.ndim)
    pads[axis], pads[like.ndim + axis] = s, size - t
    return e.node("Pad", [a[0], e.ints(pads)])


@rule("one_hot")
def one_hot(e, n, a):
    depth = n.attrs["depth"]
    labels = e.node("Unsqueeze", [a[0], e.ints([-1])])
    rng = e.const(np.arange(depth).astype(n.inputs[0].dtype))
    return e.cast(e.node("Equal", [labels, rng]), np.bool_, n.dtype)


@rule("sum", "max")
def reduce(e, n, a):
    x = e.cast(a[0], n.inputs[0].dtype, n.dtype)
    op = "ReduceSum" if n.op == "sum" else "ReduceMax"
    if not n.attrs["axis"]:
        return e.node("Identity", [x])
    return e.node(op, [x, e.ints(n.attrs["axis"])], keepdims=int(n.attrs["keepdims"]))


@rule("size")
def size(e, n, a):
    x, axes = n.inputs[0], n.attrs["axis"]
    dims = [x.shape[i] for i in axes]
    if all(isinstance(d, int) for d in dims):
        return e.const(np.asarray(np.prod(dims), dtype=n.dtype))
    # ones of x's shape (Where broadcasts), summed over the axes: no Shape node, so the
    # exported graph imports again with its batch dim dynamic
    ones = e.node("Where", [e.const(np.ones(1, bool)), e.const(np.ones(1, n.dtype)),
                            e.cast(a[0], x.dtype, n.dtype)])
    counts = e.node("ReduceSum", [ones, e.ints(list(axes))], keepdims=0)
    return e.node("ReduceMax", [counts], keepdims=0)


@rule("argmax_mask")
def argmax_mask(e, n, a):
    """Over several axes (a max over all of x): the axes moved last and flattened into one, as
    the kernel does (the first maximum in C order), and the mask put back in x's layout."""
    axes = n.attrs["axis"]
    sizes = [n.shape[i] for i in axes]
    if not all(isinstance(d, int) for d in sizes):
        raise GraphcError("argmax_mask: export needs the reduced axes' sizes")
    if len(axes) == 1:
        axis = axes[0]
        top = e.node("ArgMax", a, axis=axis, keepdims=1)
        rng = np.arange(sizes[0]).reshape([-1 if i == axis else 1 for i in range(n.ndim)])
        return e.cast(e.node("Equal", [top, e.const(rng.astype(np.int64))]), np.bool_, n.dtype)
    keep = [i for i in range(n.ndim) if i not in axes]
    moved = e.node("Transpose", a, perm=keep + list(axes))       # Reshape's 0: keep that dim
    flat = e.node("Reshape", [moved, e.ints([0] * len(keep) + [int(np.prod(sizes))])])
    top = e.node("ArgMax", [flat], axis=-1, keepdims=1)
    mask = e.node("Equal", [top, e.const(np.arange(int(np.prod(sizes)), dtype=np.int64))])
    mask = e.node("Reshape", [mask, e.ints([0] * len(keep) + sizes)])
    back = e.node("Transpose", [mask], perm=[int(i) for i in np.argsort(keep + list(axes))])
    return e.cast(back, np.bool_, n.dtype)


@rule("softmax", "log_softmax")
def softmax(e, n, a):
    return e.node("Softmax" if n.op == "softmax" else "LogSoftmax", a, axis=n.attrs["axis"])


def labels_as_probs(e, z: Node, y: Node, ay: str) -> str:
    if y.dtype.kind in "iu":
        labels = e.node("Unsqueeze", [ay, e.ints([-1])])
        rng = e.const(np.arange(z.shape[-1]).astype(y.dtype))
        return e.cast(e.node("Equal", [labels, rng]), np.bool_, z.dtype)
    return e.cast(ay, y.dtype, z.dtype)


@rule("softmax_cross_entropy")
def sce(e, n, a):
    z, y = n.inputs
    probs = labels_as_probs(e, z, y, a[1])
    logp = e.node("LogSoftmax", [a[0]], axis=-1)
    picked = e.node("ReduceSum", [e.node("Mul", [logp, probs]), e.ints([-1])], keepdims=0)
    return e.node("Neg", [picked])


@rule("softmax_cross_entropy_grad")
def sce_grad(e, n, a):
    z, y, g = n.inputs
    probs = labels_as_probs(e, z, y, a[1])
    total = e.node("ReduceSum", [probs, e.ints([-1])], keepdims=1)
    s = e.node("Softmax", [a[0]], axis=-1)
    diff = e.node("Sub", [e.node("Mul", [s, total]), probs])
    gcol = e.node("Unsqueeze", [e.cast(a[2], g.dtype, n.dtype), e.ints([-1])])
    return e.node("Mul", [diff, gcol])


@rule("conv2d")
def conv2d(e, n, a):
    (ph, pw), stride = n.attrs["padding"], n.attrs["stride"]
    return e.node("Conv", a, strides=list(stride), pads=[ph, pw, ph, pw])


@rule("conv2d_grad_input")
def conv2d_grad_input(e, n, a):
    g, w, like = n.inputs
    (ph, pw), stride = n.attrs["padding"], n.attrs["stride"]
    if not all(isinstance(d, int) for d in like.shape[2:] + g.shape[2:]):
        raise GraphcError("conv2d_grad_input: export needs static image sizes")
    extra = [like.shape[2 + i] + 2 * p - ((g.shape[2 + i] - 1) * stride[i] + w.shape[2 + i])
             for i, p in enumerate((ph, pw))]
    return e.node("ConvTranspose", a[:2], strides=list(stride), pads=[ph, pw, ph, pw],
                  output_padding=extra)


@rule("conv2d_grad_weight")
def conv2d_grad_weight(e, n, a):
    """dW = conv(x^T, g^T) with the stride as dilation, cropped to the kernel size."""
    (ph, pw), stride = n.attrs["padding"], n.attrs["stride"]
    xt = e.node("Transpose", [a[0]], perm=[1, 0, 2, 3])
    gt = e.node("Transpose", [a[1]], perm=[1, 0, 2, 3])
    out = e.node("Conv", [xt, gt], dilations=list(stride), pads=[ph, pw, ph, pw])
    kh, kw = n.shape[2:]
    out = e.node("Slice", [out, e.ints([0, 0]), e.ints([kh, kw]), e.ints([2, 3])])
    return e.node("Transpose", [out], perm=[1, 0, 2, 3])


@rule("max_pool2d", "avg_pool2d")
def pool(e, n, a):
    op = "MaxPool" if n.op == "max_pool2d" else "AveragePool"
    return e.node(op, a, kernel_shape=list(n.attrs["size"]), strides=list(n.attrs["stride"]))


@rule("max_pool2d_grad")
def max_pool_grad(e, n, a):
    """g put back where each window's maximum was: MaxPool's indices, then a ScatterElements
    that adds over x flattened (the indices count in it): where windows overlap a position may
    be the maximum of several, whose g add up (MaxUnpool keeps one, and has no float64)."""
    size, stride = n.attrs["size"], n.attrs["stride"]
    x = n.inputs[1]
    out, idx = e.fresh("pooled"), e.fresh("indices")
    e.nodes.append(e.helper.make_node("MaxPool", [a[1]], [out, idx], name=e.fresh("MaxPool"),
                                      kernel_shape=list(size), strides=list(stride)))
    g = e.cast(a[0], n.inputs[0].dtype, n.dtype)
    shape = e.shape_of(x, a[1])
    zero = e.numpy_helper.from_array(np.zeros(1, n.dtype), "zero")
    flat = [e.node("Reshape", [v, e.ints([-1])]) for v in (idx, g)]
    zeros = e.node("Reshape", [e.node("ConstantOfShape", [shape], value=zero), e.ints([-1])])
    added = e.node("ScatterElements", [zeros] + flat, axis=0, reduction="add")
    return e.node("Reshape", [added, shape])


@rule("avg_pool2d_grad")
def avg_pool_grad(e, n, a):
    """g / (kh kw) spread over each window: a depthwise ConvTranspose with constant weights."""
    g, like = n.inputs
    size, stride = n.attrs["size"], n.attrs["stride"]
    c = like.shape[1]
    if not all(isinstance(d, int) for d in like.shape[1:] + g.shape[2:]):
        raise GraphcError("avg_pool2d_grad: export needs static channels and image sizes")
    w = np.full((c, 1) + tuple(size), 1 / (size[0] * size[1]), n.dtype)
    extra = [like.shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] + size[i]) for i in range(2)]
    return e.node("ConvTranspose", [e.cast(a[0], g.dtype, n.dtype), e.const(w)], group=c,
                  strides=list(stride), output_padding=extra)


@rule("dropout_mask")
def dropout_mask(e, n, a):
    u = e.node("RandomUniformLike", a)
    return e.cast(e.node("Less", [u, e.const(np.asarray(n.attrs["keep"], n.dtype))]),
                  np.bool_, n.dtype)


# the model ----------------------------------------------------------------------------

def named(nodes, what: str) -> dict[str, Node]:
    if isinstance(nodes, dict):
        out = dict(nodes)
    else:
        out = {}
        for i, n in enumerate([nodes] if isinstance(nodes, Node) else nodes):
            name = getattr(n, "name", None) or f"{what}_{i}"
            out[f"{name}_{i}" if name in out else name] = n
    for k, n in out.items():             # {"y": 3} failed with AttributeError in Graph
        if not isinstance(n, Node):
            raise GraphcError(f"graphc.onnx.save: {what} {k!r} must be a graph node, got "
                              f"{type(n).__name__}")
    return out


def value_info(helper, name: str, node: Node):
    dims = [d if isinstance(d, int) else (d if isinstance(d, str) else None)
            for d in node.shape]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(node.dtype), dims)


def all_nodes(graph: Graph) -> list[Node]:
    """The nodes of the graph and of the loop bodies inside it."""
    nodes = []
    for n in graph.nodes:
        nodes.append(n)
        if n.op == "scan":
            nodes += all_nodes(n.attrs["body"])
    return nodes


def emit_nodes(e: Emitter, nodes: list[Node], names: dict[int, str]) -> None:
    """Each node's ONNX nodes, in order; `names` holds the given values (inputs)."""
    for n in nodes:
        if id(n) in names:
            continue
        if n.op == "placeholder":
            raise GraphcError(f"graphc.onnx.save: the outputs need placeholder {n.label()}, "
                              "which is not among the inputs")
        if n.op in ("constant", "variable"):
            names[id(n)] = e.const(n.value, hint=n.name or n.op)
            continue
        try:
            names[id(n)] = RULES[n.op](e, n, [names[id(i)] for i in n.inputs])
        except GraphcError as err:
            raise GraphcError(f"graphc.onnx.save: {n.op} node {n.label()} "
                              f"(built at {n.where}): {err}") from None


def build_model(inputs, outputs, opset: int | None = None):
    """The ONNX ModelProto of the graph from `inputs` to `outputs`."""
    from onnx import helper

    from graphc.onnx import export_more  # noqa: F401  (the rules of the newer op families)
    from graphc.onnx import control  # noqa: F401  (scan -> Scan)
    ins, outs = named(inputs, "input"), named(outputs, "output")
    both = sorted(set(ins) & set(outs))
    if both:
        raise GraphcError(f"graphc.onnx.save: {both} name(s) both an input and an output; "
                          "ONNX names each value once")
    if "" in ins or "" in outs:
        raise GraphcError("graphc.onnx.save: an input or output is named '', which ONNX reads "
                          "as 'no value'")
    graph = Graph(list(outs.values()))
    missing: dict[str, Node] = {}      # op -> its first node: the error names where it is
    for n in all_nodes(graph):
        if n.inputs and n.op not in RULES:
            missing.setdefault(n.op, n)
    if missing:
        raise GraphcError(f"graphc.onnx.save: no ONNX export for op(s) {sorted(missing)}" + "".join(
            f"\n  {op}({', '.join(f'{format_shape(x.shape)} {x.dtype.name}' for x in n.inputs)})"
            f" built at {n.where}" for op, n in sorted(missing.items())))
    e = Emitter(taken=frozenset(ins) | frozenset(outs))
    names: dict[int, str] = {id(n): k for k, n in ins.items()}
    emit_nodes(e, graph.nodes, names)
    for k, n in outs.items():
        e.nodes.append(helper.make_node("Identity", [names[id(n)]], [k], name=f"output_{k}"))
    onnx_graph = helper.make_graph(
        e.nodes, "graphc", [value_info(helper, k, n) for k, n in ins.items()],
        [value_info(helper, k, n) for k, n in outs.items()], e.inits)
    return helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset or OPSET)],
                             producer_name="graphc")


def export(path, inputs, outputs, opset: int | None = None):
    """Write the model to `path` and return it (a ModelProto)."""
    import onnx
    model = build_model(inputs, outputs, opset)
    onnx.save(model, os.fspath(path))
    return model
