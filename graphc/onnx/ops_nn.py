"""Import entries for ONNX's convolution, pooling, normalization and loss ops.

graphc's conv and pooling primitives are 2-D NCHW with symmetric padding and no dilation;
1-D ops are imported through a height-1 image, groups as one conv per group, dilation as a
kernel spread out by a constant 0/1 matrix, asymmetric padding and ceil mode as an explicit
pad of the input.
"""
from __future__ import annotations

import itertools

import numpy as np

from graphc import api as gc
from graphc.ir import Node, apply, constant
from graphc.onnx.ops_math import like, need_float
from graphc.onnx.ops_reduce import back
from graphc.onnx.ops_shape import norm, pad_axis, reshape_to, static
from graphc.onnx.table import REQUIRED, Unsupported, onnx_op

CONV_ATTRS = dict(auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
                  strides=None)


def spatial(ctx, x, what: str) -> int:
    ctx.need(x.ndim in (3, 4), f"{what} of rank {x.ndim} (1-D and 2-D only)")
    return x.ndim - 2


def as_2d(x):
    """(N, C, W) -> (N, C, 1, W); 2-D inputs as they are."""
    return reshape_to(x, x.shape[:2] + (1,) + x.shape[2:]) if x.ndim == 3 else x


def from_2d(y, rank):
    return reshape_to(y, y.shape[:2] + y.shape[3:]) if rank == 1 else y


def pads_for(ctx, sizes, kernel, strides, dilations, pads, auto_pad):
    """Per spatial axis (before, after) padding, auto_pad resolved."""
    k = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for n, kk, s, d in zip(sizes, kernel, strides, dilations):
            ctx.need(isinstance(n, int), "SAME padding of an unknown size")
            total = max((-(-n // s) - 1) * s + (kk - 1) * d + 1 - n, 0)
            small = total // 2
            out.append((small, total - small) if auto_pad == "SAME_UPPER"
                       else (total - small, small))
        return out
    ctx.need(auto_pad in ("NOTSET", "VALID"), f"auto_pad={auto_pad!r}")
    if auto_pad == "VALID" or pads is None:
        return [(0, 0)] * k
    return list(zip(pads[:k], pads[k:]))


def window_attrs(ctx, x, kernel, strides, dilations, pads, auto_pad):
    rank = spatial(ctx, x, ctx.op_type)
    kernel = list(kernel)
    strides = list(strides or [1] * rank)
    dilations = list(dilations or [1] * rank)
    pads = pads_for(ctx, x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    if rank == 1:
        kernel, strides, dilations, pads = ([1] + kernel, [1] + strides, [1] + dilations,
                                            [(0, 0)] + pads)
    return rank, kernel, strides, dilations, pads


def pad_input(ctx, x, pads, fill):
    """x (NCHW) padded explicitly where the padding is not symmetric; the symmetric rest."""
    sym = []
    for axis, (lo, hi) in zip((2, 3), pads):
        common = min(lo, hi)
        if lo != hi:
            x = pad_axis(ctx, x, axis, lo - common, hi - common, "constant", fill)
        sym.append(common)
    return x, tuple(sym)


def kernel_sizes(w: Node, what: str) -> tuple[int, ...]:
    """A kernel's spatial sizes; its channels may be known only at run time (graphc exports
    a conv's weight gradient as a Conv whose kernel is the batch of output gradients)."""
    if not all(isinstance(d, int) for d in w.shape[2:]):
        raise Unsupported(f"{what} needs static spatial sizes, got {w.shape}")
    return w.shape[2:]


def dilated(w, dilations):
    """The kernel (O, I, kh, kw) spread out with zeros between taps, as a graph."""
    (o, i), (kh, kw) = w.shape[:2], kernel_sizes(w, "a dilated kernel")
    dh, dw = dilations
    big = ((kh - 1) * dh + 1, (kw - 1) * dw + 1)
    spread = np.zeros((kh * kw, big[0] * big[1]), w.dtype)
    for a in range(kh):
        for b in range(kw):
            spread[a * kw + b, a * dh * big[1] + b * dw] = 1
    flat = gc.matmul(reshape_to(w, (o, i, kh * kw)), constant(spread))
    return reshape_to(flat, (o, i) + big)


@onnx_op("Conv", **CONV_ATTRS)
def conv(ctx, x, w, b=None, *, auto_pad, dilations, group, kernel_shape, pads, strides):
    need_float(x)
    kernel = kernel_shape or kernel_sizes(w, "the kernel")
    rank, kernel, strides, dils, pads = window_attrs(ctx, x, kernel, strides, dilations, pads,
                                                     auto_pad)
    x, w = as_2d(x), as_2d(w)
    if dils != [1, 1]:
        w = dilated(w, dils)
    x, sym = pad_input(ctx, x, pads, like(x, 0))
    if group == 1:
        y = gc.conv2d(x, w, stride=tuple(strides), padding=sym)
    else:
        cin, cout = x.shape[1] // group, w.shape[0] // group
        y = gc.concat([gc.conv2d(gc.slice(x, 1, g * cin, (g + 1) * cin),
                                 gc.slice(w, 0, g * cout, (g + 1) * cout),
                                 stride=tuple(strides), padding=sym) for g in range(group)],
                      axis=1)
    if b is not None:
        y = y + gc.reshape(b, (1, -1, 1, 1))
    return from_2d(y, rank)


@onnx_op("ConvTranspose", output_padding=None, output_shape=None, **CONV_ATTRS)
def conv_transpose(ctx, x, w, b=None, *, auto_pad, dilations, group, kernel_shape, pads,
                   strides, output_padding, output_shape):
    """The adjoint of a stride/dilation conv with no padding, then cropped by the pads."""
    need_float(x)
    rank = spatial(ctx, x, "ConvTranspose")
    kernel = list(kernel_shape or kernel_sizes(w, "the kernel"))
    strides = list(strides or [1] * rank)
    dils = list(dilations or [1] * rank)
    extra = list(output_padding or [0] * rank)
    sizes = image_size(ctx, x)          # the batch may be known only at run time
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dils)]
    full = [s * (n - 1) + r + e for s, n, r, e in zip(strides, sizes, reach, extra)]
    ctx.need(all(e < s for e, s in zip(extra, strides)), "output_padding >= stride")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-rank:] if output_shape is not None else \
            [n * s for n, s in zip(sizes, strides)]
        full = [max(f, t) for f, t in zip(full, target)]      # larger: zeros at the end
        ctx.need(all((f - r) // s + 1 == n for f, r, s, n in zip(full, reach, strides, sizes)),
                 f"output_shape {target}")
        total = [f - t for f, t in zip(full, target)]
        crop = [(t // 2, t - t // 2) if auto_pad == "SAME_UPPER" else (t - t // 2, t // 2)
                for t in total]
    else:
        ctx.need(auto_pad in ("NOTSET", "VALID"), f"auto_pad={auto_pad!r}")
        crop = [(0, 0)] * rank if auto_pad == "VALID" or pads is None else \
            list(zip(pads[:rank], pads[rank:]))
    x, w = as_2d(x), as_2d(w)
    if rank == 1:
        strides, dils, full, crop = [1] + strides, [1] + dils, [1] + full, [(0, 0)] + crop
    if set(dils) != {1}:
        w = dilated(w, dils)
    cin, cout = x.shape[1] // group, w.shape[1]
    zeros = batch_zeros(x, (cout,) + tuple(full))
    parts = []
    for g in range(group):
        xg = gc.slice(x, 1, g * cin, (g + 1) * cin) if group > 1 else x
        wg = gc.slice(w, 0, g * cin, (g + 1) * cin) if group > 1 else w
        parts.append(apply("conv2d_grad_input", xg, wg, zeros, stride=tuple(strides),
                           padding=(0, 0)))
    y = gc.concat(parts, axis=1) if group > 1 else parts[0]
    for axis, (lo, hi) in zip((2, 3), crop):
        if lo or hi:
            y = gc.slice(y, axis, lo, y.shape[axis] - hi)
    if b is not None:
        y = y + gc.reshape(b, (1, -1, 1, 1))
    return from_2d(y, rank)


def batch_zeros(x: Node, rest: tuple[int, ...]) -> Node:
    """Zeros of shape (N,) + rest for x's batch N, also when N is known only at run time
    (graphc's own export of a conv's input gradient has a dynamic batch)."""
    if isinstance(x.shape[0], int):
        return gc.broadcast_to(like(x, 0), (x.shape[0],) + rest)
    column = gc.zeros_like(gc.sum(gc.slice(x, 1, 0, 1), axis=tuple(range(1, x.ndim)),
                                  keepdims=True))                       # (N, 1, ..., 1)
    return column + constant(np.zeros((1,) + rest, x.dtype))


# pooling ------------------------------------------------------------------------------

def pool_geometry(ctx, x, kernel, strides, pads, ceil_mode):
    """Pads (before, after) per axis, with the extra end padding ceil mode needs."""
    out = []
    for n, k, s, (lo, hi) in zip(image_size(ctx, x), kernel, strides, pads):
        span = n + lo + hi - k
        if ceil_mode and span % s:
            extra = s - span % s
            if (span + extra) // s * s >= n + lo:    # a window must start inside the input
                extra -= s
            hi += max(extra, 0)
        out.append((lo, hi))
    return out


def image_size(ctx, x) -> tuple[int, ...]:
    ctx.need(all(isinstance(d, int) for d in x.shape[2:]), f"image size {x.shape[2:]} unknown")
    return x.shape[2:]


POOL_ATTRS = dict(auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None,
                  pads=None, strides=None)


def pool_setup(ctx, x, kernel, strides, dilations, pads, auto_pad, ceil_mode):
    """kernel, strides, dilations, the given pads and the pads with ceil mode's extra end."""
    rank = x.ndim - 2
    ctx.need(rank >= 1 and kernel is not None, f"{ctx.op_type} of rank {x.ndim}")
    kernel, strides = list(kernel), list(strides or [1] * rank)
    dils = list(dilations or [1] * rank)
    given = pads_for(ctx, image_size(ctx, x), kernel, strides, dils, pads, auto_pad)
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dils)]
    return kernel, strides, dils, given, pool_geometry(ctx, x, reach, strides, given, ceil_mode)


def padded(ctx, x, pads, fill):
    for axis, (lo, hi) in enumerate(pads):
        x = pad_axis(ctx, x, 2 + axis, lo, hi, "constant", fill)
    return x


def window_starts(sizes, kernel, strides, dils):
    """Per window offset, the positions it reads along each spatial axis."""
    outs = [(n - (k - 1) * d - 1) // s + 1 for n, k, s, d in zip(sizes, kernel, strides, dils)]
    for offset in itertools.product(*[range(k) for k in kernel]):
        yield [o * d + s * np.arange(m) for o, d, s, m in zip(offset, dils, strides, outs)]


def by_offsets(x, kernel, strides, dils, combine):
    """Pooling of any rank and dilation: one strided read per window offset, combined."""
    out = None
    for reads in window_starts(x.shape[2:], kernel, strides, dils):
        part = x
        for axis, idx in enumerate(reads):
            if len(idx) > 1 and idx[1] - idx[0] == 1:
                part = gc.slice(part, 2 + axis, int(idx[0]), int(idx[-1]) + 1)
            else:
                part = gc.take(part, constant(idx.astype(np.int64)), axis=2 + axis)
        out = part if out is None else combine(out, part)
    return out


def fast_path(x, dils) -> bool:
    """graphc's own 2-D pooling ops serve 1-D and 2-D pooling without dilation."""
    return x.ndim in (3, 4) and set(dils) == {1}


@onnx_op("MaxPool", storage_order=0, **POOL_ATTRS)
def max_pool(ctx, x, *, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides,
             storage_order):
    kernel, strides, dils, _, pads = pool_setup(ctx, x, kernel_shape, strides, dilations, pads,
                                                auto_pad, ceil_mode)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    if ctx.n_outputs > 1:
        ctx.need(storage_order == 0, "Indices in column-major storage order")
        return pool_with_indices(ctx, x, kernel, strides, dils, pads, low)
    if not fast_path(x, dils):
        return by_offsets(padded(ctx, x, pads, like(x, low)), kernel, strides, dils,
                          gc.maximum)
    rank = x.ndim - 2
    if rank == 1:
        kernel, strides, pads = [1] + kernel, [1] + strides, [(0, 0)] + pads
    x = padded(ctx, as_2d(x), pads, like(x, low))
    return from_2d(gc.max_pool2d(x, tuple(kernel), tuple(strides)), rank)


def batch_positions(x: Node, size: int) -> Node:
    """n * size for each sample n of x's batch, of shape (N, 1, ..., 1) (N may be known only
    at run time)."""
    one = x
    for axis in range(1, x.ndim):
        one = gc.slice(one, axis, 0, 1)
    ones = gc.broadcast_to(constant(np.ones((1,) * x.ndim, np.int64)), one)
    return (gc.cumsum(ones, axis=0) - constant(np.int64(1))) * constant(np.int64(size))


def pool_with_indices(ctx, x, kernel, strides, dils, pads, low):
    """Max pooling that also returns each maximum's flat position in x (the first one wins);
    a batch of unknown size: positions in one sample plus each sample's start."""
    sample = static(gc.slice(x, 0, 0, 1), "MaxPool with Indices")
    xp = padded(ctx, x, pads, like(x, low))
    flat = np.arange(int(np.prod(sample))).reshape(sample)
    flat = np.pad(flat, [(0, 0), (0, 0)] + list(pads), constant_values=-1)
    best, where_ = None, None
    for reads in window_starts(xp.shape[2:], kernel, strides, dils):
        part = xp
        for axis, idx in enumerate(reads):
            part = gc.take(part, constant(idx.astype(np.int64)), axis=2 + axis)
        pos = constant(flat[(slice(None), slice(None)) + np.ix_(*reads)].astype(np.int64))
        if best is None:
            best, where_ = part, pos
            continue
        wins = gc.greater(part, best)
        best, where_ = gc.where(wins, part, best), gc.where(wins, pos, where_)
    if x.shape[0] != 1:
        where_ = where_ + batch_positions(best, int(np.prod(sample)))
    return best, where_


@onnx_op("AveragePool", count_include_pad=0, **POOL_ATTRS)
def average_pool(ctx, x, *, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides,
                 count_include_pad):
    need_float(x)
    kernel, strides, dils, given, pads = pool_setup(ctx, x, kernel_shape, strides, dilations,
                                                    pads, auto_pad, ceil_mode)
    inside = np.ones(image_size(ctx, x))           # what each window's count includes
    if count_include_pad:
        inside = np.pad(inside, given, constant_values=1)
        inside = np.pad(inside, [(0, hi - g[1]) for (lo, hi), g in zip(pads, given)])
    else:
        inside = np.pad(inside, pads)
    counts = sum(inside[np.ix_(*reads)] for reads in
                 window_starts(inside.shape, kernel, strides, dils))
    size = int(np.prod(kernel))
    if fast_path(x, dils):
        rank = x.ndim - 2
        k2, s2, p2 = (([1] + kernel, [1] + strides, [(0, 0)] + pads) if rank == 1
                      else (kernel, strides, pads))
        y = gc.avg_pool2d(padded(ctx, as_2d(x), p2, like(x, 0)), tuple(k2), tuple(s2))
        y = from_2d(y, rank)
    else:
        y = by_offsets(padded(ctx, x, pads, like(x, 0)), kernel, strides, dils, gc.add)
        size = 1
    scale = size / counts
    if not np.all(scale == 1):
        y = y * constant(scale.astype(x.dtype))
    return y


@onnx_op("GlobalAveragePool")
def global_average_pool(ctx, x):
    return gc.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@onnx_op("GlobalMaxPool")
def global_max_pool(ctx, x):
    return gc.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


# normalization ------------------------------------------------------------------------

def per_channel(v, x):
    """A (C,) vector shaped to broadcast over NC... inputs."""
    return gc.reshape(v, (1, -1) + (1,) * (x.ndim - 2))


@onnx_op("BatchNormalization", const=(3, 4), epsilon=1e-5, momentum=0.9, training_mode=0)
def batch_norm(ctx, x, scale, b, mean, var, *, epsilon, momentum, training_mode):
    """Inference form; training_mode=1 normalizes with the batch's statistics and also
    returns the updated running mean and variance."""
    need_float(x)
    axes = (0,) + tuple(range(2, x.ndim))
    if training_mode:
        batch_mean, centered, batch_var = moments(x, axes)
        y = centered / gc.sqrt(batch_var + like(x, epsilon)) * per_channel(scale, x) \
            + per_channel(b, x)
        m = like(x, momentum)
        flat_mean = gc.reshape(batch_mean, (-1,))
        flat_var = gc.reshape(batch_var, (-1,))
        return (y, gc.cast(mean, x.dtype) * m + flat_mean * (1 - m),
                gc.cast(var, x.dtype) * m + flat_var * (1 - m))
    ctx.need(ctx.n_outputs == 1, "running statistics outputs without training_mode")
    inv = gc.cast(scale, x.dtype) / gc.sqrt(gc.cast(var, x.dtype) + like(x, epsilon))
    return (x - per_channel(gc.cast(mean, x.dtype), x)) * per_channel(inv, x) \
        + per_channel(gc.cast(b, x.dtype), x)


def moments(x, axes):
    """(mean, x - mean, variance) over axes, reduced axes kept."""
    mean = gc.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    return mean, centered, gc.mean(centered * centered, axis=axes, keepdims=True)


@onnx_op("LayerNormalization", axis=-1, epsilon=1e-5, stash_type=1)
def layer_norm(ctx, x, scale, b=None, *, axis, epsilon, stash_type):
    need_float(x)
    ctx.need(stash_type == 1, f"stash_type={stash_type}")
    axes = tuple(range(norm(axis, x.ndim), x.ndim))
    xf = gc.cast(x, "float32") if x.dtype == np.float16 else x
    mean, centered, var = moments(xf, axes)
    inv = like(xf, 1) / gc.sqrt(var + like(xf, epsilon))
    y = back(centered * inv, x) * scale
    if b is not None:
        y = y + b
    return y, mean, inv


@onnx_op("RMSNormalization", axis=-1, epsilon=1e-5, stash_type=1)
def rms_norm(ctx, x, scale, *, axis, epsilon, stash_type):
    need_float(x)
    ctx.need(stash_type == 1, f"stash_type={stash_type}")
    axes = tuple(range(norm(axis, x.ndim), x.ndim))
    xf = gc.cast(x, "float32") if x.dtype == np.float16 else x
    ms = gc.mean(xf * xf, axis=axes, keepdims=True)
    return back(xf / gc.sqrt(ms + like(xf, epsilon)), x) * scale


@onnx_op("InstanceNormalization", epsilon=1e-5)
def instance_norm(ctx, x, scale, b, *, epsilon):
    need_float(x)
    _, centered, var = moments(x, tuple(range(2, x.ndim)))
    y = centered / gc.sqrt(var + like(x, epsilon))
    return y * per_channel(scale, x) + per_channel(b, x)


@onnx_op("GroupNormalization", num_groups=1, epsilon=1e-5, stash_type=1)
def group_norm(ctx, x, scale, b, *, num_groups, epsilon, stash_type):
    need_float(x)
    shape = static(x)
    c = shape[1]
    ctx.need(scale.shape == (c,), "per-group scale (GroupNormalization-18)")
    g = reshape_to(x, (shape[0], num_groups, -1))
    _, centered, var = moments(g, (2,))
    y = reshape_to(centered / gc.sqrt(var + like(x, epsilon)), shape)
    return y * per_channel(scale, x) + per_channel(b, x)


@onnx_op("LpNormalization", axis=-1, p=2)
def lp_norm(ctx, x, *, axis, p):
    need_float(x)
    ctx.need(p in (1, 2), f"p={p}")
    norm = gc.sum(gc.abs(x), axis=axis, keepdims=True) if p == 1 else \
        gc.sqrt(gc.sum(x * x, axis=axis, keepdims=True))
    zero = gc.equal(norm, like(norm, 0))
    return gc.where(zero, like(x, 0), x / gc.where(zero, like(norm, 1), norm))


@onnx_op("MeanVarianceNormalization", axes=(0, 2, 3))
def mvn(ctx, x, *, axes):
    need_float(x)
    _, centered, var = moments(x, tuple(norm(a, x.ndim) for a in axes))
    return centered / (gc.sqrt(var) + like(x, 1e-9))


@onnx_op("LRN", alpha=1e-4, beta=0.75, bias=1.0, size=REQUIRED)
def lrn(ctx, x, *, alpha, beta, bias, size):
    need_float(x)
    c = static(x)[1]
    sq = x * x
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = pad_axis(ctx, sq, 1, lo, hi, "constant", like(x, 0))
    total = gc.slice(padded, 1, 0, c)
    for k in range(1, size):
        total = total + gc.slice(padded, 1, k, k + c)
    return x / gc.pow(like(x, bias) + like(x, alpha / size) * total, like(x, beta))


# losses -------------------------------------------------------------------------------

def class_loss(ctx, logp, labels, weights, reduction, ignore_index):
    """-logp[label] per element with weights and ignore_index, then the reduction."""
    ctx.need(reduction in ("none", "sum", "mean"), f"reduction={reduction!r}")
    c = logp.shape[1]
    ignored = None
    if ignore_index is not None:     # an ignored label may lie outside [0, C): one_hot of 0
        ignored = gc.equal(labels, like(labels, ignore_index))
        labels = gc.where(ignored, like(labels, 0), labels)
    hot = gc.one_hot(labels, c, dtype=logp.dtype)          # (N, d..., C)
    perm = (0, logp.ndim - 1) + tuple(range(1, logp.ndim - 1))
    hot = gc.transpose(hot, perm)                            # (N, C, d...)
    picked = -gc.sum(logp * hot, axis=1)
    w = gc.sum(hot * per_channel(weights, logp), axis=1) if weights is not None else None
    if ignored is not None:
        keep = gc.cast(gc.logical_not(ignored), logp.dtype)
        w = keep if w is None else w * keep
    loss = picked if w is None else picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return gc.sum(loss)
    return gc.mean(loss) if w is None else gc.sum(loss) / gc.sum(w)


@onnx_op("NegativeLogLikelihoodLoss", reduction="mean", ignore_index=None)
def nll_loss(ctx, x, target, weight=None, *, reduction, ignore_index):
    need_float(x)
    return class_loss(ctx, x, target, weight, reduction, ignore_index)


@onnx_op("SoftmaxCrossEntropyLoss", reduction="mean", ignore_index=None)
def sce_loss(ctx, scores, labels, weights=None, *, reduction, ignore_index):
    need_float(scores)
    logp = gc.log_softmax(scores, axis=1)
    return class_loss(ctx, logp, labels, weights, reduction, ignore_index), logp
