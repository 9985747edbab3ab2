"""Import entries for ONNX's shape and data-movement ops and the ops that make constants.

Shapes, axes, pads and repeats must be constants here (initializers, Constant nodes, folded
shape arithmetic or values given in `input_values`): graphc graphs have static structure.
"""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import GraphcError, Node, constant
from graphc.onnx.ops_math import fn, like
from graphc.onnx.table import REQUIRED, RUNTIME, Unsupported, onnx_op

INT_MAX = 2 ** 62


def static(x: Node, what: str = "input", dims=None) -> tuple[int, ...]:
    """x's shape (or those of its `dims`), which must be known."""
    dims = x.shape if dims is None else tuple(dims)
    if not all(isinstance(d, int) for d in dims):
        raise Unsupported(f"{what} needs a static shape, got {x.shape}")
    return dims


def reshape_to(x: Node, shape) -> Node:
    """Reshape to `shape`, where one unknown dim (None or a name) may stand for the batch."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    unknown = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if len(unknown) > 1:
        raise Unsupported(f"reshape to {shape} with more than one unknown dimension")
    return gc.reshape(x, tuple(-1 if not isinstance(d, int) else d for d in shape))


def norm(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise Unsupported(f"axis {axis} is out of range for rank {ndim}")
    return axis % ndim


@onnx_op("Reshape", const=(1,), allowzero=0)
def reshape(ctx, x, shape, *, allowzero):
    dims = ctx.dims(shape, "shape")
    if dims.count(-1) > 1 or any(isinstance(d, int) and d < -1 for d in dims):
        raise GraphcError(f"shape {dims}: at most one -1 and no other negative size")
    own = ctx.runtime.own_axes(ctx.const(shape, "shape").reshape(-1).tolist(), x) \
        if ctx.runtime.is_marked(shape) else {}
    for i, d in enumerate(dims):
        if d == 0 and not allowzero:           # a 0 copies x's dim
            dims[i] = x.shape[i]
            if x.shape[i] is None:
                own[i] = i
    if -1 in dims:
        # the -1 is static when the target copies every unknown dim of x, by its name or
        # (unnamed) from x's own shape
        known = [d for d in dims if isinstance(d, int) and d != -1]
        copied = sorted(d for d in dims if isinstance(d, str))
        unnamed = sorted(own.values())
        if sorted(d for d in x.shape if isinstance(d, str)) == copied \
                and [a for a, d in enumerate(x.shape) if d is None] == unnamed \
                and all(d is not None or k in own for k, d in enumerate(dims)):
            rest = int(np.prod(known))
            dims[dims.index(-1)] = int(np.prod([d for d in x.shape if isinstance(d, int)])) \
                // rest if rest else 0
        else:
            dims = [None if d == -1 else d for d in dims]
    return reshape_to(x, dims)


@onnx_op("Flatten", axis=1)
def flatten(ctx, x, *, axis):
    ctx.need(-x.ndim <= axis <= x.ndim, f"axis {axis} is out of range for rank {x.ndim}")
    axis = axis % x.ndim if x.ndim and axis != x.ndim else axis
    lead, rest = x.shape[:axis], x.shape[axis:]
    size = [int(np.prod(p)) if all(isinstance(d, int) for d in p) else None
            for p in (lead, rest)]
    return reshape_to(x, size)


@onnx_op("Squeeze", const=(1,), axes=None)
def squeeze(ctx, x, axes_in=None, *, axes):
    axes = ctx.ints(axes_in, "axes", axes)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = {norm(a, x.ndim) for a in axes}
    return reshape_to(x, [d for i, d in enumerate(x.shape) if i not in axes])


@onnx_op("Unsqueeze", const=(1,), axes=None)
def unsqueeze(ctx, x, axes_in=None, *, axes):
    axes = ctx.ints(axes_in, "axes", axes)
    ctx.need(axes is not None, "no axes")
    ndim = x.ndim + len(axes)
    axes = {norm(a, ndim) for a in axes}
    ctx.need(len(axes) == ndim - x.ndim, "axes that repeat")
    dims, rest = [], iter(x.shape)
    for i in range(ndim):
        dims.append(1 if i in axes else next(rest))
    return reshape_to(x, dims)


@onnx_op("Transpose", perm=None)
def transpose(ctx, x, *, perm):
    return gc.transpose(x, None if perm is None else tuple(perm))


@onnx_op("Concat", axis=REQUIRED)
def concat(ctx, *xs, axis):
    xs = [x for x in xs if x is not None]
    return gc.concat(xs, axis=axis)


def slice_axis(ctx, x, axis, start, stop, step):
    """x[start:stop:step] along one axis, ONNX clamping; steps other than 1 need take."""
    n = x.shape[axis]
    if not isinstance(n, int):
        ctx.need(step == 1 and 0 <= start and (start < stop or stop >= INT_MAX // 2
                                                or start == stop == 0),
                 "slicing an unknown-size axis other than [k:], [0:0] or [a:b] with "
                 "0 <= a < b")
        if stop >= INT_MAX // 2:
            return gc.slice(x, axis, start) if start else x
        # graphc's own export of x[a:b]: the result has b - a rows, and an axis shorter than
        # b is an error at run time where ONNX would give fewer rows; [0:0] (an RNN's zero
        # state) has none, exactly
        return gc.slice(x, axis, start, stop)
    s, e, k = slice(start, stop, step).indices(n)
    if k == 1:
        e = max(e, s)
        return x if (s, e) == (0, n) else gc.slice(x, axis, s, e)
    idx = np.arange(s, e, k)
    return fn("take")(x, constant(idx.astype(np.int64)), axis=axis)


@onnx_op("Slice", const=(1, 2, 3, 4))
def slice_(ctx, x, starts, ends, axes=None, steps=None):
    starts, ends = ctx.ints(starts, "starts"), ctx.ints(ends, "ends")
    axes = ctx.ints(axes, "axes", list(range(len(starts))))
    steps = ctx.ints(steps, "steps", [1] * len(starts))
    for a, s, e, k in zip(axes, starts, ends, steps):
        ctx.need(k != 0, "step 0")
        x = slice_axis(ctx, x, norm(a, x.ndim), s, e, k)
    return x


@onnx_op("Split", const=(1,), axis=0, num_outputs=None, split=None)
def split(ctx, x, sizes=None, *, axis, num_outputs, split):
    axis = norm(axis, x.ndim)
    n = x.shape[axis]
    sizes = ctx.ints(sizes, "split", split)
    if sizes is None:
        count = num_outputs or ctx.n_outputs
        ctx.need(isinstance(n, int), "splitting an unknown-size axis")
        size = -(-n // count)
        sizes = [min(size, n - i * size) for i in range(count)]
    outs, pos = [], 0
    for s in sizes:
        outs.append(gc.slice(x, axis, pos, pos + s))
        pos += s
    return tuple(outs)


def normalized(ctx, indices: Node, n) -> Node:
    """Indices with negative ones counted from the end (ONNX allows them)."""
    unknown = f"negative indices into an axis of unknown size {n!r}"
    if indices.op == "constant":
        data = np.asarray(indices.data).astype(np.int64)
        if (data < 0).any():
            ctx.need(isinstance(n, int), unknown)
            data = np.where(data < 0, data + n, data)
        return constant(data)
    ctx.need(isinstance(n, int), unknown)
    indices = gc.cast(indices, "int64")
    return gc.where(gc.less(indices, like(indices, 0)), indices + like(indices, n), indices)


@onnx_op("Gather", axis=0)
def gather(ctx, x, indices, *, axis):
    axis = norm(axis, x.ndim)
    return fn("take")(x, normalized(ctx, indices, x.shape[axis]), axis=axis)


@onnx_op("GatherElements", axis=0)
def gather_elements(ctx, x, indices, *, axis):
    """The output has the indices' shape: x's other axes are cut to it, where NumPy's
    take_along_axis would broadcast the indices over them."""
    axis = norm(axis, x.ndim)
    ctx.need(indices.ndim == x.ndim, f"indices of rank {indices.ndim} into rank {x.ndim}")
    cut = tuple(slice(0, b) if k != axis and isinstance(b, int) and a != b and a != 1
                else slice(None) for k, (a, b) in enumerate(zip(x.shape, indices.shape)))
    if any(c != slice(None) for c in cut):
        x = x[cut]
    return fn("take_along_axis")(x, normalized(ctx, indices, x.shape[axis]), axis=axis)


@onnx_op("Expand", const=(1,))
def expand(ctx, x, shape):
    target = ctx.dims(shape, "shape")
    ndim = max(len(target), x.ndim)
    a = (1,) * (ndim - x.ndim) + tuple(x.shape)
    b = (1,) * (ndim - len(target)) + tuple(target)
    out = tuple(q if p == 1 else p for p, q in zip(a, b))
    if any(isinstance(p, int) and isinstance(q, int) and 1 not in (p, q) and p != q
           for p, q in zip(a, b)):
        raise GraphcError(f"cannot expand {x.shape} to {target}: sizes differ where neither is "
                          "1")
    if any(q != 1 and (q is None or q != p) for p, q in zip(a, b) if not isinstance(p, int)) \
            or any(not isinstance(d, int) and p == 1 for p, d in zip(a, out)):
        raise Unsupported(f"expanding {x.shape} to {target}: unknown sizes")
    if out == tuple(x.shape):
        return x
    if all(isinstance(d, int) for d in out):
        return gc.broadcast_to(x, out)
    # the unknown sizes are x's own: broadcast the known ones against a constant (exact for
    # every dtype: where(true, x, x))
    true = constant(np.ones(tuple(d if isinstance(d, int) else 1 for d in out), bool))
    return gc.where(true, x, x)


@onnx_op("Shape", start=0, end=None)
def shape(ctx, x, *, start, end):
    dims = x.shape[slice(start, end)]
    if all(isinstance(d, int) for d in dims):
        return constant(np.array(dims, dtype=np.int64))
    axes = range(x.ndim)[slice(start, end)]
    stand_ins = [d if isinstance(d, int) else ctx.runtime.stand_in(d, x, a)
                 for d, a in zip(dims, axes)]
    return ctx.runtime.mark(constant(np.array(stand_ins, dtype=np.int64)))


@onnx_op("Size")
def size(ctx, x):
    return constant(np.int64(np.prod(static(x))))


@onnx_op("Tile", const=(1,))
def tile(ctx, x, repeats):
    for axis, r in enumerate(ctx.ints(repeats, "repeats")):
        ctx.need(r >= 1, f"repeat {r}")
        if r > 1:
            x = gc.concat([x] * r, axis=axis)
    return x


@onnx_op("Constant", value=None, value_float=None, value_floats=None, value_int=None,
         value_ints=None)
def constant_(ctx, **attrs):
    given = {k: v for k, v in attrs.items() if v is not None}
    ctx.need(len(given) == 1, "exactly one value attribute")
    (key, value), = given.items()
    if key == "value":
        return constant(value, dtype=value.dtype)
    dtype = np.float32 if "float" in key else np.int64
    return constant(np.asarray(value, dtype=dtype))


@onnx_op("ConstantOfShape", const=(0,), value=None)
def constant_of_shape(ctx, shape, *, value):
    value = np.zeros(1, np.float32) if value is None else value
    if ctx.runtime.is_marked(shape):
        return full_at_run_time(ctx, shape, value)
    return constant(np.full(ctx.ints(shape, "shape"), value.reshape(-1)[0], dtype=value.dtype))


def full_at_run_time(ctx, shape, value):
    """`value` in a shape with sizes known only at run time (torch's zeros(x.size(0), 4)):
    each such size is a dim of a node in the graph, read back as a vector of that length that
    `where(true, value, vector)` broadcasts against (the vector's values are never used)."""
    raw = [int(d) for d in np.asarray(ctx.const(shape, "shape")).reshape(-1)]
    known = tuple(1 if abs(d) >= RUNTIME else d for d in raw)
    true = constant(np.ones(known, bool))
    out = constant(np.full(known, value.reshape(-1)[0], dtype=value.dtype))
    for k, d in enumerate(raw):
        if abs(d) < RUNTIME:
            continue
        ctx.need(d in ctx.runtime.origin, "input 'shape' is computed from a size known only "
                                          "at run time (not just copied from it)")
        node, axis = ctx.runtime.origin[d]
        for a in range(node.ndim):
            node = node if a == axis else gc.slice(node, a, 0, 1)
        size = reshape_to(node, tuple(None if i == k else 1 for i in range(len(raw))))
        out = gc.where(true, out, gc.cast(size, out.dtype))
    return out


@onnx_op("Range", const=(0, 1, 2))
def range_(ctx, start, limit, delta):
    s, e, d = (ctx.const(v, w) for v, w in ((start, "start"), (limit, "limit"),
                                              (delta, "delta")))
    ctx.need(bool(d != 0), "delta 0 (a range that never ends)")
    n = max(int(np.ceil((e - s) / d)), 0)
    return constant((s + np.arange(n) * d).astype(s.dtype), dtype=s.dtype)


@onnx_op("EyeLike", dtype=None, k=0)
def eye_like(ctx, x, *, dtype, k):
    from graphc.onnx.ops_math import to_dtype
    rows, cols = static(x)
    dt = x.dtype if dtype is None else to_dtype(dtype)
    return constant(np.eye(rows, cols, k, dtype=dt))


@onnx_op("OneHot", const=(1,), axis=-1)
def one_hot(ctx, indices, depth, values, *, axis):
    n = int(ctx.const(depth, "depth").reshape(-1)[0])
    idx = gc.cast(indices, "int64") if indices.dtype.kind == "f" else indices
    idx = gc.where(gc.less(idx, like(idx, 0)), idx + like(idx, n), idx)
    hot = gc.one_hot(idx, n, dtype=values.dtype)
    axis = norm(axis, hot.ndim)
    if axis != hot.ndim - 1:
        perm = list(range(hot.ndim - 1))
        perm.insert(axis, hot.ndim - 1)
        hot = gc.transpose(hot, perm)
    off, on = values[0], values[1]
    return off + hot * (on - off)


@onnx_op("Trilu", const=(1,), upper=1)
def trilu(ctx, x, k=None, *, upper):
    k = int(ctx.const(k, "k", np.int64(0)).reshape(-1)[0])
    rows, cols = static(x)[-2:]
    keep = np.triu(np.ones((rows, cols), bool), k) if upper else \
        np.tril(np.ones((rows, cols), bool), k)
    return gc.where(constant(keep), x, like(x, 0))


@onnx_op("DepthToSpace", blocksize=REQUIRED, mode="DCR")
def depth_to_space(ctx, x, *, blocksize, mode):
    n, c, h, w = x.shape
    b = blocksize
    ctx.need(mode in ("DCR", "CRD"), f"mode {mode!r}")
    if mode == "DCR":
        y = reshape_to(x, (n, b, b, c // (b * b), h, w))
        y = gc.transpose(y, (0, 3, 4, 1, 5, 2))
    else:
        y = reshape_to(x, (n, c // (b * b), b, b, h, w))
        y = gc.transpose(y, (0, 1, 4, 2, 5, 3))
    return reshape_to(y, (n, c // (b * b), h * b, w * b))


@onnx_op("SpaceToDepth", blocksize=REQUIRED, mode="DCR")
def space_to_depth(ctx, x, *, blocksize, mode):
    n, c, h, w = x.shape
    b = blocksize
    ctx.need(mode in ("DCR", "CRD"), f"mode {mode!r}")
    y = reshape_to(x, (n, c, h // b, b, w // b, b))
    y = gc.transpose(y, (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4))
    return reshape_to(y, (n, c * b * b, h // b, w // b))


@onnx_op("Pad", const=(1, 2, 3), mode="constant")
def pad(ctx, x, pads, value=None, axes=None, *, mode):
    pads = ctx.ints(pads, "pads")
    axes = [norm(a, x.ndim) for a in ctx.ints(axes, "axes", list(range(x.ndim)))]
    ctx.need(len(pads) == 2 * len(axes), f"{len(pads)} pads for {len(axes)} axes (it takes "
             f"{2 * len(axes)}: a start and an end per axis)")
    ctx.need(mode in ("constant", "edge", "reflect", "wrap"), f"mode {mode!r}")
    fill = like(x, 0) if value is None else gc.cast(value, x.dtype) if value.op != "constant" \
        else constant(np.asarray(value.data).astype(x.dtype))
    for axis, before, after in zip(axes, pads[:len(axes)], pads[len(axes):]):
        x = pad_axis(ctx, x, axis, before, after, mode, fill)
    return x


def pad_axis(ctx, x, axis, before, after, mode, fill):
    n = x.shape[axis]
    if not before and not after:
        return x                     # an axis of unknown size that is not padded
    ctx.need(isinstance(n, int), "padding an unknown-size axis")
    if before < 0 or after < 0:
        x = gc.slice(x, axis, max(-before, 0), n - max(-after, 0))
        n = x.shape[axis]
        before, after = max(before, 0), max(after, 0)
    if not before and not after:
        return x
    value = np.asarray(fill.data).reshape(-1) if fill.op == "constant" else ()
    if mode == "constant" and len(value) == 1 and x.dtype.kind in "fiu" \
            and float(value[0]) == value[0]:
        widths = [(0, 0)] * x.ndim      # graphc's pad: the other axes may be of unknown size
        widths[axis] = (before, after)
        return gc.pad(x, widths, value=float(value[0]))
    if mode == "constant":
        parts = [x]
        for k, at in ((before, 0), (after, len(parts) + 1)):
            shape = tuple(k if i == axis else d for i, d in enumerate(x.shape))
            ctx.need(all(isinstance(d, int) for d in shape), "padding with unknown sizes")
            if k:
                parts.insert(at, gc.broadcast_to(gc.reshape(fill, (1,) * x.ndim), shape))
        return gc.concat(parts, axis=axis)
    pos = np.arange(-before, n + after)
    if mode == "edge":
        idx = np.clip(pos, 0, n - 1)
    elif mode == "wrap":
        idx = pos % n
    else:
        ctx.need(n > 1, "reflect padding of a size-1 axis")
        period = 2 * (n - 1)
        idx = np.abs((pos + period * (abs(before) // period + 1)) % period)
        idx = np.where(idx >= n, period - idx, idx)
    return fn("take")(x, constant(idx.astype(np.int64)), axis=axis)


@onnx_op("Dropout", const=(1, 2), seed=None, ratio=None)
def dropout(ctx, x, ratio_in=None, training_mode=None, *, seed, ratio):
    """Inference: x itself and a mask of ones (bool; x's type before opset 10, whose ratio
    is an attribute and whose mode is the runtime's)."""
    training = training_mode is not None and bool(ctx.const(training_mode, "training_mode"))
    r = 0.5 if ratio_in is None else float(ctx.const(ratio_in, "ratio"))
    if training and r > 0:
        raise Unsupported("training-mode Dropout (random; graphc imports inference graphs)")
    dtype = np.dtype(bool) if ctx.opset >= 10 else x.dtype
    if all(isinstance(d, int) for d in x.shape):
        return x, constant(np.ones(x.shape, dtype))
    return x, gc.ones_like(x, dtype=dtype.name)        # a mask of the batch's size


@onnx_op("ReverseSequence", const=(1,), batch_axis=1, time_axis=0)
def reverse_sequence(ctx, x, lengths, *, batch_axis, time_axis):
    lens = ctx.ints(lengths, "sequence_lens")
    shape = static(x, "ReverseSequence")
    t = np.arange(shape[time_axis]).reshape([-1 if i == time_axis else 1
                                             for i in range(x.ndim)])
    n = np.asarray(lens).reshape([-1 if i == batch_axis else 1 for i in range(x.ndim)])
    idx = np.broadcast_to(np.where(t < n, n - 1 - t, t), shape).astype(np.int64)
    return gc.take_along_axis(x, constant(idx), axis=time_axis)


@onnx_op("TensorScatter", const=(2,), mode="linear", axis=-2)
def tensor_scatter(ctx, cache, update, write_indices=None, *, mode, axis):
    """The update written into the cache along `axis` from each batch's write index."""
    ctx.need(mode in ("linear", "circular"), f"mode {mode!r}")
    shape, ushape = static(cache, "TensorScatter"), static(update, "TensorScatter")
    axis = axis % cache.ndim
    starts = ctx.ints(write_indices, "write_indices", [0] * shape[0])
    pos = np.arange(ushape[axis]).reshape([-1 if i == axis else 1 for i in range(cache.ndim)])
    first = np.asarray(starts).reshape([-1] + [1] * (cache.ndim - 1))
    idx = pos + first
    if mode == "circular":
        idx = idx % shape[axis]
    ctx.need(bool(np.all(idx < shape[axis])), "writes past the end of the cache")
    idx = np.broadcast_to(idx, ushape).astype(np.int64)
    return gc.scatter_elements(cache, constant(idx), update, axis=axis)
