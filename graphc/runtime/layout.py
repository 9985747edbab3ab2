"""Channels-last storage of NCHW values: which planned buffers hold their NCHW value as a
transposed view of NHWC memory (`np.empty((n, h, w, c)).transpose(0, 3, 1, 2)`).

Such a buffer is still a correct NCHW array, so every ufunc with out= on it (and (1, C, 1, 1)
broadcasts) computes the same values, iterating in memory order; the convolution family's
kernels see the layout from the strides and read or write its channels-last form directly, so
the NCHW <-> NHWC copies between a channels-last pool or input gradient and the elementwise
steps around it (bias + ReLU, the ReLU mask) vanish. A reshape of such a buffer would copy
(and a write through it would be lost), so a value is stored so only when its step and every
reader are elementwise or conv-family steps (or a sum over N, H, W, lowered for it here), and
its buffer never goes to another value (the pool keeps layouts apart).

Transposed storage of 2-D products (`TRANSPOSED`): a (m, n) value in an F-ordered buffer
(`np.empty((n, m)).T`), for which NumPy asks the BLAS for c.T = b.T @ a.T. One thread computes
either way alike; OpenBLAS on several splits the product by the shape it is asked for, and a
product with few rows and more columns is faster asked transposed (`transposed_pays`). Its
readers are the ones a channels-last value may have, for the same reason, plus products (BLAS
reads an F-ordered operand as a transposed one) and sums over one axis (a product with ones).

Every planned buffer and plan constant starts on a cache line (`aligned`).
"""
from __future__ import annotations

import math

import numpy as np

from graphc.runtime import blas, emit

LAST = "last"
TRANSPOSED = "transposed"
NATIVE = ("max_pool2d", "conv2d_grad_input")     # write a channels-last result themselves
READERS = {"conv2d": (0,), "conv2d_grad_input": (0, 2), "conv2d_grad_weight": (0, 1, 2),
           "max_pool2d": (0,), "max_pool2d_grad": (0, 1)}    # input positions they may read


ALIGN = 64      # bytes: a cache line, two AVX vectors


def aligned(shape, dtype) -> np.ndarray:
    """np.empty(shape, dtype) starting on an ALIGN-byte boundary. NumPy's allocator promises
    16 bytes (an mmapped block of > 128 KiB starts 16 bytes into its page), so over a third of
    a step's buffers started mid-vector: an in-place bias add or ReLU of a (512, 128) float32
    buffer ran 4-8 % slower so (bench/README.md), and which buffer did changed from run to
    run with the heap. A view of a slice of a bytes block, owning nothing itself."""
    dtype = np.dtype(dtype)
    if dtype.hasobject or dtype.itemsize == 0:
        return np.empty(shape, dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + size].view(dtype).reshape(shape)


def empty(shape, dtype, layout) -> np.ndarray:
    """A planned buffer of NCHW shape (or 2-D, TRANSPOSED) in the given memory layout (None: C
    order), aligned."""
    if layout == TRANSPOSED:
        m, n = shape
        return aligned((n, m), dtype).T
    if layout != LAST:
        return aligned(shape, dtype)
    n, c, h, w = shape
    return aligned((n, h, w, c), dtype).transpose(0, 3, 1, 2)


def const(low, o: str, shape, value, dtype) -> str:
    """A plan constant filled with value, in the layout of the buffer o it is combined with
    (a full operand of another layout makes the ufunc iterate transposed: 2.4x slower)."""
    arr = empty(shape, dtype, low.pool.layouts.get(o))
    arr.fill(value)
    return low.const(arr)


def choose(low, kinds: dict) -> dict[int, str]:
    """id(node) -> LAST for the values stored channels-last: a 4-D buffer value, no output
    or update, made by a channels-last conv-family step (a max-pool of a convolution or of
    such a value, an input gradient) or elementwise from such a value of its shape, and read
    only where the layout is safe (see `reads_ok`); id(node) -> TRANSPOSED likewise for a 2-D
    product that pays asked transposed (`transposed_pays`) or elementwise from such a value."""
    g = low.graph
    kept = {id(o) for o in g.outputs} | {id(u) for _, u in g.updates} \
        | {id(v) for v, _ in g.updates}
    # the candidates first: a graph without such buffer values skips the table of readers
    candidates = [n for n in g.nodes if len(n.shape) in (2, 4) and kinds.get(id(n)) == "buffer"
                  and id(n) not in kept and n.dtype.kind == "f"]
    if not any(len(n.shape) == 2 and transposed_product(low, n) for n in candidates):
        candidates = [n for n in candidates if len(n.shape) == 4]
    if not candidates:
        return {}
    readers: dict[int, list] = {}
    for m in g.nodes:
        for k, x in enumerate(m.inputs):
            readers.setdefault(id(x), []).append((m, k))
    chosen: dict[int, str] = {}
    for n in candidates:
        key = id(n)
        if key not in readers:
            continue
        if len(n.shape) == 2:
            form = TRANSPOSED
            ok = transposed_product(low, n) if n.op in PRODUCTS else \
                (n.op == "fused" or elementwise(n)) and any(
                    chosen.get(id(x)) == TRANSPOSED and low.shapes[id(x)] == low.shapes[key]
                    for x in n.inputs)
            if ok and all(reads_ok(low, kinds, m, k, form) for m, k in readers[key]):
                chosen[key] = form
            continue
        if n.op in NATIVE:
            src = n.inputs[0]
            ok = n.op == "conv2d_grad_input" or src.op == "conv2d" or id(src) in chosen
        elif n.op == "fused" or elementwise(n):
            ok = any(id(x) in chosen and low.shapes[id(x)] == low.shapes[key]
                     for x in n.inputs)
        else:
            ok = False
        if ok and all(reads_ok(low, kinds, m, k) for m, k in readers[key]):
            chosen[key] = LAST
    for n in candidates:    # a product read only by transposed steps of its shape joins them
        key = id(n)
        if key not in chosen and n.op in PRODUCTS and key in readers \
                and all(chosen.get(id(m)) == TRANSPOSED and (m.op == "fused" or elementwise(m))
                        and low.shapes[id(m)] == low.shapes[key] for m, _ in readers[key]) \
                and transposed_product(low, n, neutral=True):
            chosen[key] = TRANSPOSED
    return settled(low, chosen, readers, candidates)


def settled(low, chosen: dict, readers: dict, candidates: list) -> dict:
    """`chosen` without the transposed values an elementwise step of their shape reads in C
    order (an update writing its C-ordered variable from x.T @ g stored transposed: the ufunc
    over mixed layouts ran 2-4x slower than the product saved), nor elementwise ones no
    longer reading a transposed value; repeated until none is dropped."""
    nodes = {id(n): n for n in candidates}
    while True:
        drop = [key for key, form in chosen.items()
                if form == TRANSPOSED and not consistent(low, nodes[key], chosen, readers)]
        if not drop:
            return chosen
        for key in drop:
            del chosen[key]


def consistent(low, n, chosen: dict, readers: dict) -> bool:
    shape = low.shapes[id(n)]
    if n.op not in PRODUCTS and not any(chosen.get(id(x)) == TRANSPOSED
                                        and low.shapes[id(x)] == shape for x in n.inputs):
        return False
    return all(chosen.get(id(m)) == TRANSPOSED for m, _ in readers[id(n)]
               if (m.op == "fused" or m.op != "sum" and elementwise(m))
               and low.shapes[id(m)][0] == shape[0])     # of any dtype: casts, masks


def elementwise(n) -> bool:
    return emit.template(n.op) is not None


def reads_ok(low, kinds: dict, m, k: int, form: str = LAST) -> bool:
    """Reader m may take a channels-last input at position k: elementwise steps (ufuncs with
    out=), the conv family's (they test the strides), a sum over N, H, W (`sum_code`). A
    TRANSPOSED one: elementwise steps, 2-D products (NumPy and blas.gemm ask the BLAS for an
    F-ordered operand as a transposed one), a sum over one axis (a product with ones, or
    blas.gemv reading it transposed)."""
    if kinds.get(id(m)) != "buffer":
        return False
    if m.op == "fused" or m.op != "sum" and elementwise(m):
        return True
    if form == TRANSPOSED:
        if m.op in PRODUCTS:
            return all(len(low.shapes[id(x)][0]) == 2 for x in m.inputs[:2]) \
                and (k < 2 or m.op == "dense")       # a dense's bias: an add, or GEMM's c
        return m.op == "sum" and m.attrs.get("axis") is not None \
            and len(tuple(m.attrs["axis"])) == 1
    if m.op in READERS:
        return k in READERS[m.op]
    return m.op == "sum" and sorted(m.attrs["axis"]) == [0, 2, 3]


PRODUCTS = ("dense", "matmul")


def transposed_product(low, n, neutral: bool = False) -> bool:
    """Whether product n (a dense or matmul of 2-D operands, float) pays stored transposed:
    `transposed_pays` for its shape at the BLAS's thread count when the plan is made (asked
    once per plan); with `neutral`, also when OpenBLAS runs it on one thread, rows fewer
    than columns (x (32, 64) @ W (128, 64).T: 0.92-0.95 of the time at one thread, x (32, 128)
    @ W (128, 64) 1.01-1.05; more rows than columns up to 1.3)."""
    if n.op not in PRODUCTS or n.dtype.char not in "fd":
        return False
    threads = low.cache.get("blas threads")
    if threads is None:
        threads = low.cache["blas threads"] = blas.threads()
    if threads < 2 or any(len(low.shapes[id(x)][0]) != 2 for x in n.inputs[:2]):
        return False
    (m, cols), a = low.shapes[id(n)][0], low.shapes[id(n.inputs[0])][0]
    k = a[0] if n.attrs.get("transpose_a") else a[1]
    return transposed_pays(m, cols, k, threads) \
        or neutral and m < cols and m * cols * k <= THREADED


def transposed_pays(m: int, n: int, k: int, threads: int) -> bool:
    """Whether c (m, n) = a (m, k) @ b (k, n) is faster asked as c.T = b.T @ a.T (an F-ordered
    c): on several BLAS threads, for a product OpenBLAS runs on several (over THREADED
    multiply-adds) with fewer rows than columns, up to MAX_ROWS rows (`python3
    bench/gemm_forms.py --threads 2`, bench/README.md: x (32, 784) @ W (784, 128) 0.66-0.90
    of the time; 784x10, 64x10 at 16-1024 rows 1.1-1.6: slower). At one thread never: the
    same kernel, the transposed ask 1.0-1.16 of the time (1.2-1.3 with few columns)."""
    return threads > 1 and m < n and m <= MAX_ROWS and m * n * k > THREADED


THREADED = 2 ** 18      # OpenBLAS's GEMM runs on one thread up to 65536 * 4 multiply-adds
MAX_ROWS = 64


def sum_code(low, n, a: list[str], o: str) -> str | None:
    """A sum over N, H, W of a channels-last value: one product of a ones row with its
    (N*H*W, C) matrix (a view); None when n's input is stored in C order."""
    if low.layouts.get(id(n.inputs[0])) != LAST or sorted(n.attrs["axis"]) != [0, 2, 3]:
        return None
    nb, c, h, w = low.shapes[id(n.inputs[0])][0]
    flat = o if len(low.shapes[id(n)][0]) == 1 else f"{o}.reshape(-1)"
    ones = low.const(np.ones(nb * h * w, n.dtype))
    return f"xp.matmul({ones}, {a[0]}.transpose(0, 2, 3, 1).reshape(-1, {c}), out={flat})"
