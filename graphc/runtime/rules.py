"""How each op is lowered, when it has better code than a call of its registered kernel.

`classify` says what a step is: "buffer" (writes its result into a planned buffer with out=),
"view" (an expression that may share memory with its inputs), or "kernel" (calls the op's
kernel, which returns a new array or a view). `code` returns the step's line.
Shapes are concrete here: a plan is built for one feed signature.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS
from graphc.runtime import conv, emit

VIEWS = ("transpose", "reshape", "broadcast_to", "size")
CONV = ("conv2d", "conv2d_grad_input", "conv2d_grad_weight", "max_pool2d", "max_pool2d_grad")


def classify(low, n) -> str:
    dts = [low.shapes[id(x)][1] for x in n.inputs]
    same = len(set(dts + [n.dtype])) == 1
    if n.op in VIEWS:
        return "view"
    if n.op == "dense":
        return "buffer" if same else "kernel"
    if n.op == "fused":
        return "buffer" if low.fused_ok(n) else "kernel"
    if n.op == "matmul":
        return "buffer" if same and min(x.ndim for x in n.inputs) >= 2 else "kernel"
    if n.op == "sum":
        return "buffer" if same and n.dtype.kind == "f" else "kernel"
    if n.op == "softmax_cross_entropy":
        return "buffer" if sce_ok(low, n) else "kernel"
    if n.op == "softmax_cross_entropy_grad":
        return "buffer" if low.sce_pair.get(id(n)) is not None else "kernel"
    if n.op in CONV:
        return "buffer" if same and n.dtype.kind == "f" else "kernel"
    return "buffer" if emit.ufunc_ok(n, dts) else "kernel"


def why_kernel(low, n) -> str:
    """Why a step calls a kernel (for the plan report): the op has no fast form, or this
    node is not on it (dtypes, ranks), or a fused group runs through the interpreter."""
    if n.op == "fused":
        for b in n.attrs["body"].nodes:
            if b.inputs:
                dts = [low.shapes[(id(n), id(x))][1] for x in b.inputs]
                if not emit.ufunc_ok(b, dts, in_group=True):
                    return f"interpreter (fused group): {emit.why_not(b, dts)}"
        return "interpreter (fused group): its output is an input"
    dts = [low.shapes[id(x)][1] for x in n.inputs]
    if OPS[n.op].elementwise:
        return emit.why_not(n, dts)
    if n.op in FAST:
        names = ", ".join(np.dtype(d).name for d in dts)
        return f"not on the fast path here (inputs {names} -> {n.dtype.name}, " \
               f"ranks {[x.ndim for x in n.inputs]})"
    return "no fast lowering: the op's own NumPy kernel"


FAST = ("dense", "matmul", "sum", "softmax_cross_entropy", "softmax_cross_entropy_grad") + CONV


def sce_ok(low, n) -> bool:
    z, y = n.inputs
    return y.dtype.kind in "iu" and z.ndim == 2 and z.dtype.kind == "f"


def view_code(low, n, a: list[str]) -> str:
    shape = low.shapes[id(n)][0]
    if n.op == "transpose":
        axes = n.attrs.get("axes")
        if axes is None or tuple(axes) == tuple(range(n.ndim))[::-1]:
            return f"{a[0]}.T"
        return f"{a[0]}.transpose({tuple(axes)})"
    if n.op == "reshape":
        return f"{a[0]}.reshape({shape})"
    if n.op == "broadcast_to":
        return f"np.broadcast_to({a[0]}, {shape})"
    if n.op == "size":     # known once the signature is: a constant of the plan
        name = low.const(np.asarray(OPS_size(low, n), dtype=n.dtype))
        return name
    raise AssertionError(n.op)


def OPS_size(low, n):  # noqa: N802
    x = np.empty(low.shapes[id(n.inputs[0])][0], np.uint8)
    return OPS["size"].kernel(x, **n.attrs)


def buffer_code(low, n, a: list[str], o: str) -> str:
    """The line computing n into buffer o."""
    if n.op == "dense":
        return dense_code(low, n, a, o)
    if n.op == "matmul":
        return f"np.matmul({a[0]}, {a[1]}, out={o})"
    if n.op == "fused":
        return low.emit_fused(n, a, o)
    if n.op == "sum":
        return sum_code(low, n, a, o)
    if n.op == "softmax_cross_entropy":
        return low.sce_forward(n, a, o)
    if n.op == "softmax_cross_entropy_grad":
        return low.sce_backward(n, a, o)
    if n.op in CONV:
        return conv_code(low, n, a, o)
    return elementwise_code(low, n, a, o, lambda x: low.shapes[id(x)][0])


def where_zero(n, shape_of) -> bool:
    """where(c, g, 0) with g of the result's shape: g * c (fast), then, only when that is not
    all finite (an inf or nan of g that c masks gives nan), zeros where c is False."""
    return n.op == "where" and n.inputs[0].dtype == bool and n.inputs[2].op == "constant" \
        and n.inputs[2].data.size == 1 and float(n.inputs[2].data.reshape(())) == 0.0 \
        and shape_of(n.inputs[1]) == shape_of(n)


def inplace_ok(n, shape_of) -> bool:
    return emit.inplace_ok(n.op) or where_zero(n, shape_of)


def elementwise_code(low, n, a: list[str], o: str, shape_of) -> str:
    """One elementwise node into o; shape_of(node) gives concrete shapes (body or graph)."""
    if where_zero(n, shape_of):
        zero = scalars(low, n.dtype)["zero"]
        return (f"np.multiply({a[1]}, {a[0]}, out={o}); np.isfinite({o}).all() or "
                f"np.copyto({o}, {zero}, where=np.logical_not({a[0]}))")
    if n.op == "relu":
        return f"np.maximum({a[0]}, {low.const(np.zeros(shape_of(n), n.dtype))}, out={o})"
    if n.op == "softplus" and shape_of(n.inputs[0]) == shape_of(n):
        # max(x, 0) + log1p(exp(-|x|)): SIMD ufuncs, ~2.5x faster than np.logaddexp(0, x)
        zeros = low.const(np.zeros(shape_of(n), n.dtype))
        t = low.const(np.empty(shape_of(n), n.dtype))
        return (f"np.maximum({a[0]}, {zeros}, out={t}); np.absolute({a[0]}, out={o}); "
                f"np.negative({o}, out={o}); np.exp({o}, out={o}); np.log1p({o}, out={o}); "
                f"np.add({o}, {t}, out={o})")
    if emit.template(n.op) is None:        # the op's kernel, its new array copied into o
        name = f"kernel_{n.op}"
        low.ns[name] = OPS[n.op].kernel
        low.kernel_calls.append(n.op)
        return f"np.copyto({o}, {name}({', '.join(a)}), casting='unsafe')"
    if n.op in ("maximum", "minimum"):     # a scalar operand as a full array: NumPy's SIMD path
        a = [low.const(np.full(shape_of(n), x.data.reshape(()), n.dtype))
             if x.op == "constant" and x.data.size == 1 else s for x, s in zip(n.inputs, a)]
    return emit.ufunc(n.op, a, o, scalars(low, n.dtype))


def scalars(low, dtype) -> dict[str, str]:
    """Names of the plan's 0-d constants 0, 0.5 and 1 of `dtype`, made on first use."""
    key = ("scalars", np.dtype(dtype).str)
    if key not in low.cache:
        low.cache[key] = {k: low.const(np.array(v, dtype))
                          for k, v in (("zero", 0), ("half", 0.5), ("one", 1))}
    return low.cache[key]


def sum_code(low, n, a: list[str], o: str) -> str:
    """Sums over leading and/or trailing axes as products with ones vectors (BLAS beats a
    NumPy reduction over several axes several times over); other sums as a reduction."""
    axes, keep = tuple(n.attrs["axis"]), n.attrs["keepdims"]
    shape = low.shapes[id(n.inputs[0])][0]
    nd = len(shape)
    lead = next((i for i in range(nd) if i not in axes), nd)          # axes 0..lead-1
    tail = next((i for i in reversed(range(nd)) if i not in axes), -1) + 1   # tail..nd-1
    if set(axes) == set(range(lead)) | set(range(tail, nd)) and lead < tail:
        r1, k = int(np.prod(shape[:lead])), int(np.prod(shape[lead:tail]))
        r2 = int(np.prod(shape[tail:]))
        flat = o if len(low.shapes[id(n)][0]) == 1 else f"{o}.reshape(-1)"
        if r2 == 1:
            x = a[0] if shape == (r1, k) else f"{a[0]}.reshape({r1}, {k})"
            return f"np.matmul({low.const(np.ones(r1, n.dtype))}, {x}, out={flat})"
        if r1 == 1:
            x = a[0] if shape == (k, r2) else f"{a[0]}.reshape({k}, {r2})"
            return f"np.matmul({x}, {low.const(np.ones(r2, n.dtype))}, out={flat})"
        t = low.const(np.empty(r1 * k, n.dtype))
        return (f"np.matmul({a[0]}.reshape({r1 * k}, {r2}), {low.const(np.ones(r2, n.dtype))}, "
                f"out={t}); np.matmul({low.const(np.ones(r1, n.dtype))}, {t}.reshape({r1}, {k})"
                f", out={flat})")
    return f"np.add.reduce({a[0]}, axis={axes}, keepdims={keep}, out={o})"


def dense_code(low, n, a: list[str], o: str) -> str:
    ta, tb = n.attrs.get("transpose_a"), n.attrs.get("transpose_b")
    x = f"{a[0]}.T" if ta else a[0]
    w = f"{a[1]}.T" if tb else a[1]
    code = [f"np.matmul({x}, {w}, out={o})"]
    if len(a) > 2:
        code.append(f"np.add({o}, {a[2]}, out={o})")
    act = n.attrs.get("activation")
    if act == "relu":
        code.append(f"np.maximum({o}, {low.const(np.zeros(low.shapes[id(n)][0], n.dtype))}, "
                    f"out={o})")
    elif act:
        code.append(emit.ACTIVATE[act].format(o=o, **scalars(low, n.dtype)))
    return "; ".join(code)


def conv_code(low, n, a: list[str], o: str) -> str:
    """Convolution and pooling steps: each with its workspace; the weight gradient reuses
    the columns of the forward convolution of the same input and weight. A channels-last
    convolution (wide input) keeps that copy of its result (a "shadow"), so a max-pool of it,
    the pool's gradient and the convolution gradients after that run along contiguous
    channel rows; each registers the shadow of its own result for the next. (Forcing narrow
    convolutions channels-last to get a shadow costs more in transposes than it saves.)"""
    attrs = ", ".join(f"{k}={v!r}" for k, v in n.attrs.items())
    ws = low.const({})
    args = f"{', '.join(a)}, {attrs}, out={o}, ws={ws}"
    if n.op == "max_pool2d":
        x = shadow(low, n.inputs[0])
        if x is None:
            return f"conv.max_pool2d({args})"
        low.cache[("nhwc", id(n))] = f'{ws}["nhwc"]'
        return f"conv.max_pool2d({args}, shadow={x})"
    if n.op == "conv2d":
        last = conv.wide(low.shapes[id(n.inputs[0])][0])
        low.conv_ws[(id(n.inputs[0]), id(n.inputs[1]), repr(n.attrs))] = ws
        low.cache[("conv_last", ws)] = last
        if last:
            low.cache[("nhwc", id(n))] = f'{ws}["nhwc"]'
        skip = ", nchw=False" if last and only_shadow_readers(low, n) else ""
        return f"conv.conv2d({args}, last={last}{skip})"
    if n.op in ("conv2d_grad_input", "conv2d_grad_weight"):
        g = n.inputs[0] if n.op == "conv2d_grad_input" else n.inputs[1]
        gs = shadow(low, g)
    if n.op == "conv2d_grad_weight":
        x, _, w = n.inputs
        fwd = low.conv_ws.get((id(x), id(w), repr(n.attrs)))
        if fwd is not None:
            last = low.cache[("conv_last", fwd)]
            more = (f", gT={gs}" if gs is not None else shared_g(low, n, last)) if last else ""
            return f"conv.conv2d_grad_weight({', '.join(a)}, {attrs}, out={o}, ws={fwd}, " \
                   f"cols_ready=True, last={last}{more})"
        return f"conv.conv2d_grad_weight({args}{shared_g(low, n, None)})"
    if n.op == "conv2d_grad_input":
        return f"conv.conv2d_grad_input({args}, gT={gs})" if gs is not None \
            else f"conv.conv2d_grad_input({args}{shared_g(low, n, True)})"
    if n.op == "max_pool2d_grad" and id(n) in low.extra_reads:
        f = low.extra_reads[id(n)][0]
        x, t = shadow(low, n.inputs[1]), shadow(low, f)
        if x is not None and t is not None:
            low.cache[("nhwc", id(n))] = f'{ws}["nhwc"]'
            skip = ", nchw=False" if only_shadow_readers(low, n) else ""
            return f"conv.max_pool2d_grad({args}, top={low.var[id(f)]}, shadow={x}, " \
                   f"top_shadow={t}{skip})"
        return f"conv.max_pool2d_grad({args}, top={low.var[id(f)]})"
    return f"conv.{n.op}({args})"


def only_shadow_readers(low, n) -> bool:
    """Every step reading n reads its channels-last shadow instead (so n's NCHW buffer need
    not be written): pools of n, pool gradients at n with their forward pool, and the
    convolution gradients of g = n whose layout is channels-last."""
    g = low.graph
    if low.check or any(o is n for o in g.outputs) or any(u is n for _, u in g.updates):
        return False
    readers = [m for m in g.nodes if any(x is n for x in m.inputs)]
    return bool(readers) and all(reads_shadow(low, m, n) for m in readers)


def reads_shadow(low, m, n) -> bool:
    if classify(low, m) != "buffer":
        return False
    pos = [k for k, x in enumerate(m.inputs) if x is n]
    if m.op == "max_pool2d":
        return True
    if m.op == "max_pool2d_grad":
        return pos == [1] and id(m) in low.extra_reads
    if m.op == "conv2d_grad_input":
        return pos == [0]
    if m.op == "conv2d_grad_weight":
        fwd = low.conv_ws.get((id(m.inputs[0]), id(m.inputs[2]), repr(m.attrs)))
        return pos == [1] and fwd is not None and low.cache[("conv_last", fwd)]
    return False


def shadow(low, x) -> str | None:
    """The expression of x's channels-last copy kept by the step that made it, if any."""
    return low.cache.get(("nhwc", id(x)))


def shared_g(low, n, last) -> str:
    """The input and weight gradients of a convolution that read the same g share its
    channels-last copy: the first step makes it, the second reuses it. last: the layout of a
    weight gradient (None: decided by its input's width)."""
    g = n.inputs[0] if n.op == "conv2d_grad_input" else n.inputs[1]
    if last is None:
        last = conv.wide(low.shapes[id(n.inputs[0])][0])
    if not last:
        return ""                       # this path does not use the copy
    key = ("g_last", id(g))
    if key in low.cache:
        return f", shared={low.cache[key]}, fill=False"
    low.cache[key] = low.const({})
    return f", shared={low.cache[key]}, fill=True"
