"""The code writers of the lowering table (lowering.py): views, elementwise templates with
their fast variants, sums as products with ones, dense with its epilogue.

Shapes are concrete here: a plan is built for one feed signature.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from graphc.ir import OPS, USER_OPS, checked_kernel
from graphc.runtime import blas, emit, layout


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
        return f"xp.broadcast_to({a[0]}, {shape})"
    if n.op == "size":     # known once the signature is: a constant of the plan
        name = low.const(np.asarray(OPS_size(low, n), dtype=n.dtype))
        return name
    raise AssertionError(n.op)


def OPS_size(low, n):  # noqa: N802
    x = np.empty(low.shapes[id(n.inputs[0])][0], np.uint8)
    return OPS["size"].kernel(x, **n.attrs)


def where_zero(n, shape_of) -> bool:
    """where(c, g, 0) with g of the result's shape and dtype: g * c for integers; for floats g's
    bits times c as integers (one pass, exact: +0.0 where c is False, whatever g holds
    there; so not for a -0.0, which it turned into +0.0)."""
    return n.op == "where" and n.inputs[0].dtype == bool and n.inputs[2].op == "constant" \
        and n.inputs[2].data.size == 1 and float(n.inputs[2].data.reshape(())) == 0.0 \
        and not np.signbit(n.inputs[2].data).any() \
        and shape_of(n.inputs[1]) == shape_of(n) and n.inputs[1].dtype == n.dtype


def inplace_ok(n, shape_of) -> bool:
    return emit.inplace_ok(n.op) or where_zero(n, shape_of) or tiling_pool_grad(n)


def may_raise(n) -> bool:
    """A buffer step that may raise on valid shapes: an integer to a negative integer power
    (NumPy raises whatever errstate says), or a fused group calling an op's own kernel (a
    user's op may check its values). No update is written before it."""
    if n.op == "fused":
        return any(may_raise(b) or emit.template(b.op) is None
                    for b in n.attrs["body"].nodes if b.inputs)
    return n.op == "pow" and n.dtype.kind in "iu" and n.inputs[1].dtype.kind == "i"


def tiling_pool_grad(n) -> bool:
    """A max-pool gradient whose windows tile the input reads each window of x before it
    writes that window of the result (conv.route): it may write over x."""
    return n.op == "max_pool2d_grad" and tuple(n.attrs["size"]) == tuple(n.attrs["stride"])


def elementwise_code(low, n, a: list[str], o: str, shape_of) -> str:
    """One elementwise node into o; shape_of(node) gives concrete shapes (body or graph)."""
    if where_zero(n, shape_of):
        if n.dtype.kind != "f":            # integers, bools: g * c is exact
            return f"xp.multiply({a[1]}, {a[0]}, out={o})"
        if n.dtype.itemsize in (2, 4, 8):
            # g's bits times c as integers: g where c, +0.0 elsewhere, as np.where gives them
            # (g * c gave -0.0 for a negative g, so 1 / where(c, g, 0) was -inf where eval has
            # inf), and an inf or NaN of g where c is False is 0 in one pass (1.1-2x faster)
            bits = f"'i{n.dtype.itemsize}'"
            return f"xp.multiply({a[1]}.view({bits}), {a[0]}, out={o}.view({bits}))"
        zero = scalars(low, n.dtype)["zero"]      # a long double: no integer of its width
        return (f"xp.multiply({a[1]}, {a[0]}, out={o}); "
                f"xp.copyto({o}, {zero}, where=xp.logical_not({a[0]}))")
    if emit.template(n.op) is None:        # the op's kernel, its new array copied into o
        name, kernel = f"kernel_{n.op}", OPS[n.op].kernel
        if n.op in USER_OPS:   # a user's: its value checked as eval checks it, per body node
            name = f"{name}_{len(low.ns)}"
            kernel = functools.partial(checked_kernel, kernel, n, shape_of(n))
        low.ns[name] = kernel
        low.kernel_calls.append(n.op)
        return f"xp.copyto({o}, {name}({', '.join(a)}), casting='unsafe')"
    if n.op in ("maximum", "minimum"):     # a scalar operand as a full array: NumPy's SIMD path
        a = [layout.const(low, o, shape_of(n), x.data.reshape(()), n.dtype)
             if x.op == "constant" and x.data.size == 1 else s for x, s in zip(n.inputs, a)]
    elif n.op not in OWN_CODE:             # op_code's plain case, without its shape questions
        return emit.ufunc(n.op, a, o, scalars(low, n.dtype))
    return op_code(low, n.op, n.dtype, shape_of(n), a, o, shape_of(n.inputs[0]) == shape_of(n))


OWN_CODE = ("relu", "softplus")     # ops op_code writes by hand (the rest: their template)


def op_code(low, op: str, dtype, shape, a: list[str], o: str, full: bool) -> str:
    """Elementwise `op` of a into o (shape, dtype) from its template; full: the first input has
    the result's shape. Also the activation of `dense`, applied in place (a = [o])."""
    if op == "relu":
        return emit.ufunc(op, a, o, {"zeros": layout.const(low, o, shape, 0, dtype)})
    if op == "softplus" and full:
        # max(x, 0) + log1p(exp(-|x|)): SIMD ufuncs, ~2.5x faster than np.logaddexp(0, x)
        zeros = layout.const(low, o, shape, 0, dtype)
        t = layout.const(low, o, shape, 0, dtype)
        return (f"xp.maximum({a[0]}, {zeros}, out={t}); xp.absolute({a[0]}, out={o}); "
                f"xp.negative({o}, out={o}); xp.exp({o}, out={o}); xp.log1p({o}, out={o}); "
                f"xp.add({o}, {t}, out={o})")
    return emit.ufunc(op, a, o, scalars(low, dtype))


def scalars(low, dtype) -> dict[str, str]:
    """Names of the plan's 0-d constants 0 and 1 of `dtype`, made on first use."""
    hit = low.cache.get(("scalars of", dtype))     # by the dtype as given: asked per body node
    if hit is not None:
        return hit
    key = ("scalars", np.dtype(dtype).str)
    if key not in low.cache:
        low.cache[key] = {k: low.const(np.array(v, dtype))
                          for k, v in (("zero", 0), ("one", 1))}
    low.cache[("scalars of", dtype)] = low.cache[key]
    return low.cache[key]


def sum_code(low, n, a: list[str], o: str) -> str:
    """Sums over leading and/or trailing axes as products with ones vectors (BLAS beats a
    NumPy reduction over several axes several times over); other sums as a reduction."""
    last = layout.sum_code(low, n, a, o)      # of a channels-last buffer
    if last is not None:
        return last
    axes, keep = tuple(n.attrs["axis"]), n.attrs["keepdims"]
    shape = low.shapes[id(n.inputs[0])][0]
    nd = len(shape)
    lead = next((i for i in range(nd) if i not in axes), nd)          # axes 0..lead-1
    tail = next((i for i in reversed(range(nd)) if i not in axes), -1) + 1   # tail..nd-1
    if set(axes) == set(range(lead)) | set(range(tail, nd)) and lead < tail:
        r1, k, r2 = math.prod(shape[:lead]), math.prod(shape[lead:tail]), math.prod(shape[tail:])
        flat = o if len(low.shapes[id(n)][0]) == 1 else f"{o}.reshape(-1)"
        if r2 == 1:
            x = a[0] if shape == (r1, k) else f"{a[0]}.reshape({r1}, {k})"
            return f"xp.matmul({low.const(np.ones(r1, n.dtype))}, {x}, out={flat})"
        if r1 == 1:
            x = a[0] if shape == (k, r2) else f"{a[0]}.reshape({k}, {r2})"
            return f"xp.matmul({x}, {low.const(np.ones(r2, n.dtype))}, out={flat})"
        t = low.const(np.empty(r1 * k, n.dtype))
        return (f"xp.matmul({a[0]}.reshape({r1 * k}, {r2}), {low.const(np.ones(r2, n.dtype))}, "
                f"out={t}); xp.matmul({low.const(np.ones(r1, n.dtype))}, {t}.reshape({r1}, {k})"
                f", out={flat})")
    wide = ", dtype='float32'" if n.dtype == np.float16 else ""     # as sum_kernel
    return f"xp.add.reduce({a[0]}, axis={axes}, keepdims={keep}{wide}, out={o})"


def dense_code(low, n, a: list[str], o: str) -> str:
    ta, tb = n.attrs.get("transpose_a"), n.attrs.get("transpose_b")
    x = f"{a[0]}.T" if ta else a[0]
    w = f"{a[1]}.T" if tb else a[1]
    code = [f"xp.matmul({x}, {w}, out={o})"]
    if len(a) > 2:
        code.append(f"xp.add({o}, {a[2]}, out={o})")
    act = n.attrs.get("activation")
    if act:                 # the activation op's own elementwise code, in place
        code.append(op_code(low, act, n.dtype, low.shapes[id(n)][0], [o], o, True))
    return "; ".join(code)


def gemm_steps(low, kinds: dict) -> dict[int, tuple]:
    """Steps `[k1 *] c ± [k2 *] dense(a, b)` (or a 2-D matmul), and `dense(a, b, c)` with c of
    the result's shape (a sum of products), that may run as one BLAS call c = alpha op(a) @
    op(b) + beta c (runtime/blas.py): id(step) -> (step, dense, c, alpha, beta). The product has no
    activation and no other reader, c the result's shape and dtype, and it pays
    (blas.pays). Whether the call may write over c is decided when buffers are (program.py:
    the variable of an in-place update, or c's dying buffer); otherwise the step is the
    product then the elementwise step, as before. Also `c ± sum(a, axis)` of a 2-D a (a
    bias's update: a GEMV with a ones vector, blas.pays_vector), and a mean `sum(x) / k` of
    a vector x: one dot product with a constant vector of 1/k (mean_form)."""
    g = low.graph
    if not any(n.op in PRODUCTS or n.op == "sum" for n in g.nodes):
        return {}
    readers = reader_counts(g.nodes)
    kept = {id(n) for n in list(g.outputs) + [u for _, u in g.updates]}
    out = {}
    for n in g.nodes:
        if kinds.get(id(n)) != "buffer" or n.op not in ("add", "sub", "fused", "dense", "div"):
            continue
        if n.op == "div":
            form = mean_form(low, n, kinds, readers, kept)
            if form is not None:
                out[id(n)] = form
            continue
        form = gemm_form(low, n) if n.op != "dense" else biased(low, n)
        if form is None:
            continue
        d, c, alpha, beta = form
        shape, dtype = low.shapes[id(n)]
        if kinds.get(id(d)) != "buffer" or low.shapes[id(c)][1] != dtype \
                or d is not n and (readers.get(id(d)) != 1 or id(d) in kept):
            continue
        if d.op == "sum":
            a = d.inputs[0]
            m, k = low.shapes[id(a)][0][::1 if vector_sum(low, d) else -1]
            if dtype.char in blas.GEMV and low.shapes[id(d)] == (shape, dtype) \
                    and low.shapes[id(c)][0] == shape \
                    and blas.pays_vector(m, k, fixed(low, kinds, (a, c))):
                out[id(n)] = (n, d, c, alpha, beta)
            continue
        if len(d.inputs) == (3 if d is n else 2) \
                and not d.attrs.get("activation") \
                and dtype.char in blas.GEMM and d.ndim == 2 and len(shape) == 2 \
                and low.shapes[id(d)] == (shape, dtype) \
                and all(low.shapes[id(x)][1] == dtype and x.ndim == 2 for x in d.inputs[:2]):
            x = low.shapes[id(d.inputs[0])][0]
            k = x[0] if d.attrs.get("transpose_a") else x[1]
            known = fixed(low, kinds, d.inputs[:2] + (c,))      # the same arrays every call
            if low.shapes[id(c)][0] == shape and blas.pays(shape[0], shape[1], k, known):
                out[id(n)] = (n, d, c, alpha, beta)
    return out


def reader_counts(nodes) -> dict[int, int]:
    """id(node) -> how many nodes read it (each reader once; unread nodes are absent): what
    `Graph.users` tells here at half its cost (no list per node)."""
    count: dict[int, int] = {}
    get = count.get
    for n in nodes:
        ins = n.inputs
        for k in set(map(id, ins)) if len(ins) > 1 else map(id, ins):
            count[k] = get(k, 0) + 1
    return count


def mean_form(low, n, kinds: dict, readers: dict, kept: set) -> tuple | None:
    """(n, sum, k, 1 / k, 0) for n = sum(x) / k over all of x (a mean: its sum read by n
    only), k a size or a scalar constant: n is then one dot product of x (flat) with a plan
    constant of 1/k's (one call instead of a reduction, a divide and the sum's array). Only
    up to MEAN_MAX elements: the constant is x's size, and a long sum gains nothing."""
    s, k = n.inputs
    if s.op != "sum" or kinds.get(id(s)) != "buffer" or readers.get(id(s)) != 1 \
            or id(s) in kept or n.dtype.char not in "fd" or low.shapes[id(n)][0] != () \
            or s.dtype != n.dtype or s.inputs[0].dtype != n.dtype or k.dtype != n.dtype \
            or math.prod(low.shapes[id(s.inputs[0])][0]) > MEAN_MAX \
            or low.layouts.get(id(s.inputs[0])) is not None:
        return None
    if k.op == "size":
        value = OPS_size(low, k)
    elif k.op == "constant" and k.data.size == 1:
        value = k.data
    else:
        return None
    with np.errstate(all="ignore"):
        inv = np.asarray(1, n.dtype) / np.asarray(value, n.dtype).reshape(())
    if not np.isfinite(inv) or not inv:
        return None
    return n, s, k, float(inv), 0.0


MEAN_MAX = 2 ** 16


def fixed(low, kinds: dict, nodes) -> bool:
    """Whether these nodes are the same arrays every call (variables, constants, buffers)."""
    return all(x.op in ("variable", "constant") or kinds.get(id(x)) == "buffer" for x in nodes)


PRODUCTS = ("dense", "matmul")      # (2-D matmul: a dense without transposes)


def biased(low, n) -> tuple | None:
    """(n, bias, 1, 1) for a dense n = a @ b + bias whose bias has the result's shape (a sum
    of two products, after the passes): the bias is c. (A bias row broadcast into the result,
    then one GEMM adding the product, measured no faster in a step than matmul + add: the
    result is in cache for the add; bench/gemm_ab.py, bench/README.md.)"""
    if len(n.inputs) == 3 and low.shapes[id(n.inputs[2])][0] == low.shapes[id(n)][0]:
        return n, n.inputs[2], 1.0, 1.0
    return None


def gemm_form(low, n) -> tuple | None:
    """(d, c, alpha, beta) when n computes beta * c + alpha * d, d a product (dense or matmul)
    of the graph: add or sub of c and d, each maybe times a finite nonzero scalar constant (a
    momentum's mu * v - g), n a plain node (no factors) or a fused group of exactly that; None
    otherwise."""
    if n.op == "fused":
        body = n.attrs["body"]
        form = getattr(body, "structure", None)
        shape = low.form_facts.get(("gemm", form), False) if form is not None else False
        if shape is False:          # what the body alone decides, once per form
            shape = body_terms(low, body)
            if form is not None:
                low.form_facts[("gemm", form)] = shape
        if shape is None:
            return None
        sign, (kx, px), (ky, py) = shape
        x = n.inputs[px] if px is not None else None
        y = n.inputs[py] if py is not None else None
    else:
        sign = -1.0 if n.op == "sub" else 1.0
        (x, y), kx, ky = n.inputs, 1.0, 1.0
    for d, c, alpha, beta in ((y, x, sign * ky, kx), (x, y, kx, sign * ky)):
        if d is not None and c is not None and d is not c \
                and (d.op in PRODUCTS or vector_sum(low, d) is not None):
            return d, c, alpha, beta
    return None


def body_terms(low, body) -> tuple | None:
    """For a fused body computing [kx *] x ± [ky *] y in at most 3 ops of one dtype: (the
    sign, (kx, x's input index), (ky, y's)), the index None for a term that is no input;
    None for any other body. It depends on the body's form alone (fuse.structure)."""
    out = body.outputs[0]
    if out.op not in ("add", "sub") or sum(1 for b in body.nodes if b.inputs) > 3:
        return None
    dtype = out.dtype
    if not all(b.dtype == dtype for b in body.nodes if b.op != "constant"):
        return None
    terms = [scaled(x) for x in out.inputs]
    if any(t is None for t in terms):
        return None
    at = [(k, low.position(body, b) if b.op == "placeholder" else None) for b, k in terms]
    return (-1.0 if out.op == "sub" else 1.0, *at)


def vector_sum(low, d) -> bool | None:
    """For a sum of a 2-D array over one axis (which sum_code makes a product with ones), of
    its input's dtype: whether the axis is 0 (ones @ a = a.T @ ones, a GEMV of a.T); None for
    any other node."""
    if d.op != "sum" or low.layouts.get(id(d.inputs[0])) not in (None, layout.TRANSPOSED) \
            or d.dtype != d.inputs[0].dtype:
        return None
    shape = low.shapes[id(d.inputs[0])][0]
    axes = d.attrs.get("axis")
    if len(shape) != 2 or axes is None or len(tuple(axes)) != 1 or 0 in shape:
        return None
    return tuple(axes)[0] % 2 == 0


def scaled(b) -> tuple | None:
    """(x, k) for a fused body's b = k * x with k a finite nonzero scalar constant, (b, 1.0)
    for any other node but a constant; None otherwise."""
    if b.op != "mul":
        return (b, 1.0) if b.op != "constant" else None
    for x, k in (b.inputs, b.inputs[::-1]):
        if k.op == "constant" and k.data.size == 1 and k.data.dtype == b.dtype:
            v = float(k.data.reshape(()))
            if v != 0 and math.isfinite(v) and x.op != "constant":
                return x, v
    return None
