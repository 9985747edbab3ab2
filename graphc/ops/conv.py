"""Image ops on NCHW arrays: conv2d (im2col + GEMM), max and average pooling, and their
gradient ops. Every gradient op is linear in its upstream gradient, so its own VJP is another
op of this module: gradients of gradients work.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from graphc.ir import OpDef, ShapeError, apply, format_shape, register
from graphc.ops.common import need_float, promote

__all__ = ["conv2d", "max_pool2d", "avg_pool2d"]


# shared pieces ------------------------------------------------------------------------

MAX_ATTR = (1 << 31) - 1     # bound on sizes, strides and paddings (keeps index math exact)


def pair(v, what: str, low: int) -> tuple[int, int]:
    """An int or a pair of ints (each in [low, MAX_ATTR]) as a pair."""
    vals = (v, v) if isinstance(v, (int, np.integer)) else tuple(v) \
        if isinstance(v, (tuple, list)) else ()
    if len(vals) != 2 or not all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                 and low <= a <= MAX_ATTR for a in vals):
        raise ShapeError(f"{what} must be an int in [{low}, {MAX_ATTR}] or a pair of them, "
                         f"got {str(v)[:80]}")
    return int(vals[0]), int(vals[1])


def expect_shape(node, shape, what: str) -> None:
    """node must have `shape` (None matching any size): a gradient op's g must have the shape
    its forward op gives, so that its stride, padding and size are checked like the forward's."""
    if node.ndim != len(shape) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                      for a, b in zip(node.shape, shape)):
        raise ShapeError(f"{what} {format_shape(node.shape)} must have the shape "
                         f"{format_shape(shape)} of the forward op's output")


def out_size(n, k, s: int, p: int, what: str):
    """Windows along one axis (floor mode); None when the size is known only at run time."""
    if not isinstance(n, int) or not isinstance(k, int):
        return None
    if n + 2 * p < k:
        raise ShapeError(f"{what} {k} is larger than the input size {n}"
                         + (f" padded by {p} on each side" if p else "")
                         + " (images are NCHW: batch, channels, height, width)")
    return (n + 2 * p - k) // s + 1


def need_rank4(*nodes) -> None:
    for n in nodes:
        if n.ndim != 4:
            raise ShapeError(f"expects NCHW rank-4 inputs, got {format_shape(n.shape)}")


def offsets(size, stride, out_hw):
    """(k, index) per window offset; `index` picks that offset of every window (row-major)."""
    (kh, kw), (sh, sw), (ho, wo) = size, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            rows, cols = slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw)
            yield i * kw + j, (slice(None), slice(None), rows, cols)


def pad(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x


def windows(x, size, stride, padding=(0, 0)):
    """(N, C, Ho, Wo, kh, kw) strided view of every window of x (no copy)."""
    view = sliding_window_view(pad(x, padding), size, axis=(2, 3))
    return view[:, :, ::stride[0], ::stride[1]]


# conv2d -------------------------------------------------------------------------------

def conv_infer(x, w, *, stride=1, padding=0):
    need_rank4(x, w)
    dtype = need_float(x, w)
    stride, padding = pair(stride, "stride", 1), pair(padding, "padding", 0)
    (n, c, h, wd), (co, ci, kh, kw) = x.shape, w.shape
    if isinstance(c, int) and isinstance(ci, int) and c != ci:
        raise ShapeError(f"channel mismatch: x {format_shape(x.shape)} has {c} channels but "
                         f"w {format_shape(w.shape)} (C_out, C_in, kH, kW) expects {ci} "
                         "(images are NCHW: batch, channels, height, width)")
    shape = (n, co, out_size(h, kh, stride[0], padding[0], "kernel height"),
             out_size(wd, kw, stride[1], padding[1], "kernel width"))
    return shape, dtype, {"stride": stride, "padding": padding}


def im2col(x, size, stride, padding):
    """(N, C*kh*kw, Ho*Wo): every window of x as a column, one contiguous copy; (Ho, Wo)."""
    cols = windows(x, size, stride, padding)                  # N, C, Ho, Wo, kh, kw
    n, c, ho, wo, kh, kw = cols.shape
    cols = np.ascontiguousarray(cols.transpose(0, 1, 4, 5, 2, 3))
    return cols.reshape(n, c * kh * kw, ho * wo), (ho, wo)


def conv_kernel(x, w, *, stride, padding):
    cols, out_hw = im2col(x, w.shape[2:], stride, padding)
    out = w.reshape(w.shape[0], -1) @ cols                    # GEMM per image, NCHW order
    return out.reshape(x.shape[0], w.shape[0], *out_hw)


def grad_input_kernel(g, w, like, *, stride, padding):
    """col2im: g through the weights back to the windows, then kH*kW strided adds."""
    n, c, h, wd = like.shape
    cols = w.reshape(w.shape[0], -1).T @ g.reshape(n, g.shape[1], g.shape[2] * g.shape[3])
    cols = cols.reshape(n, c, w.shape[2], w.shape[3], *g.shape[2:])   # N, C, kh, kw, Ho, Wo
    ph, pw = padding
    dx = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), cols.dtype)
    for k, index in offsets(w.shape[2:], stride, g.shape[2:]):
        dx[index] += cols[(slice(None), slice(None)) + divmod(k, w.shape[3])]
    return np.ascontiguousarray(dx[:, :, ph:ph + h, pw:pw + wd]) if ph or pw else dx


def grad_weight_kernel(x, g, like, *, stride, padding):
    cols, _ = im2col(x, like.shape[2:], stride, padding)
    g = g.reshape(g.shape[0], g.shape[1], g.shape[2] * g.shape[3])
    dw = (g @ cols.transpose(0, 2, 1)).sum(axis=0)
    return dw.reshape(like.shape)


def grad_input_infer(g, w, like, *, stride=1, padding=0):
    """conv2d_grad_input(g, w, like=x): g must be what conv2d(x, w) gives."""
    need_rank4(g, w, like)
    shape, _, attrs = conv_infer(like, w, stride=stride, padding=padding)
    expect_shape(g, shape, "g")
    return like.shape, need_float(g, w), attrs


def grad_weight_infer(x, g, like, *, stride=1, padding=0):
    """conv2d_grad_weight(x, g, like=w): g must be what conv2d(x, w) gives."""
    need_rank4(x, g, like)
    shape, _, attrs = conv_infer(x, like, stride=stride, padding=padding)
    expect_shape(g, shape, "g")
    return like.shape, need_float(x, g), attrs


register(OpDef(
    "conv2d", conv_infer, conv_kernel,
    lambda g, out, x, w, **attrs: (apply("conv2d_grad_input", g, w, x, **attrs),
                                   apply("conv2d_grad_weight", x, g, w, **attrs))))

# <grad_input(g, w), gg> = <g, conv2d(gg, w)> = <grad_weight(gg, g), w>: each of the three
# bilinear maps has the other two as its VJPs
register(OpDef(
    "conv2d_grad_input", grad_input_infer, grad_input_kernel,
    lambda gg, out, g, w, like, **attrs: (apply("conv2d", gg, w, **attrs),
                                          apply("conv2d_grad_weight", gg, g, w, **attrs),
                                          None)))
register(OpDef(
    "conv2d_grad_weight", grad_weight_infer, grad_weight_kernel,
    lambda gg, out, x, g, like, **attrs: (apply("conv2d_grad_input", g, gg, x, **attrs),
                                          apply("conv2d", x, gg, **attrs),
                                          None)))


# pooling ------------------------------------------------------------------------------

def pool_attrs(size, stride):
    size = pair(size, "size", 1)
    return size, size if stride is None else pair(stride, "stride", 1)


def pool_infer(x, *, size, stride=None):
    need_rank4(x)
    size, stride = pool_attrs(size, stride)
    n, c, h, w = x.shape
    shape = (n, c, out_size(h, size[0], stride[0], 0, "window height"),
             out_size(w, size[1], stride[1], 0, "window width"))
    return shape, x.dtype, {"size": size, "stride": stride}


def pool_hw(x, size, stride):
    """Windows along H and W; a window larger than the image (a size known only at run time)
    is an error, not an empty result."""
    if any(d < k for d, k in zip(x.shape[2:], size)):
        raise ValueError(f"pooling window {size[0]}x{size[1]} is larger than the image "
                         f"{x.shape[2]}x{x.shape[3]} (images are NCHW: batch, channels, "
                         f"height, width)")
    return tuple((d - k) // s + 1 for d, k, s in zip(x.shape[2:], size, stride))


def max_pool_kernel(x, *, size, stride):
    it = offsets(size, stride, pool_hw(x, size, stride))
    out = x[next(it)[1]].copy()
    for _, index in it:
        np.maximum(out, x[index], out=out)
    return out


def winners(x, size, stride):
    """(index, hit) per window offset: hit marks windows whose first maximum sits there."""
    top = max_pool_kernel(x, size=size, stride=stride)
    taken = np.zeros(top.shape, bool)
    for _, index in offsets(size, stride, top.shape[2:]):
        hit = np.equal(x[index], top)
        hit &= ~taken                    # an earlier offset already won this window's tie
        taken |= hit
        yield index, hit


def max_grad_kernel(g, x, *, size, stride):
    """Route each window's g to its winner (scatter)."""
    dx = np.zeros(x.shape, np.result_type(g, x))
    disjoint = all(s >= k for s, k in zip(stride, size))   # each x read by one window at most
    for index, hit in winners(x, size, stride):
        if disjoint:
            dx[index] = g * hit
        else:
            dx[index] += g * hit
    return dx


def max_gather_kernel(y, x, *, size, stride):
    """y (x's shape) read at each window's winner of x (gather)."""
    out = None
    for index, hit in winners(x, size, stride):
        out = np.where(hit, y[index], 0 if out is None else out)
    return out.astype(np.result_type(y, x), copy=False)


def avg_pool_kernel(x, *, size, stride):
    it = offsets(size, stride, pool_hw(x, size, stride))
    out = x[next(it)[1]].copy()
    for _, index in it:
        out += x[index]
    return out * np.asarray(1 / (size[0] * size[1]), out.dtype)


def avg_grad_kernel(g, like, *, size, stride):
    """Spread each window's g / (kh * kw) over the window."""
    share = g * np.asarray(1 / (size[0] * size[1]), g.dtype)
    dx = np.zeros(like.shape, np.result_type(g, like))
    for _, index in offsets(size, stride, g.shape[2:]):
        dx[index] += share
    return dx


def scatter_infer(g, x, *, size, stride=None):
    """max/avg_pool2d_grad(g, x): g must be what pooling x gives."""
    need_rank4(g, x)
    shape, _, attrs = pool_infer(x, size=size, stride=stride)
    expect_shape(g, shape, "g")
    return x.shape, promote(g, x), attrs


def gather_infer(y, x, *, size, stride=None):
    """max_pool2d_gather(y, x): y is read where x's windows have their maximum."""
    shape, _, attrs = pool_infer(x, size=size, stride=stride)
    expect_shape(y, x.shape, "y")
    return shape, promote(y, x), attrs


def avg_infer(x, *, size, stride=None):
    need_float(x)
    return pool_infer(x, size=size, stride=stride)


register(OpDef(
    "max_pool2d", pool_infer, max_pool_kernel,
    lambda g, out, x, **attrs: (apply("max_pool2d_grad", g, x, **attrs),)))
register(OpDef(   # linear in g given x: the adjoint of scattering is gathering, and back
    "max_pool2d_grad", scatter_infer, max_grad_kernel,
    lambda gg, out, g, x, **attrs: (apply("max_pool2d_gather", gg, x, **attrs), None)))
register(OpDef(
    "max_pool2d_gather", gather_infer, max_gather_kernel,
    lambda gg, out, y, x, **attrs: (apply("max_pool2d_grad", gg, x, **attrs), None)))
register(OpDef(
    "avg_pool2d", avg_infer, avg_pool_kernel,
    lambda g, out, x, **attrs: (apply("avg_pool2d_grad", g, x, **attrs),)))
register(OpDef(   # the adjoint of spreading is averaging
    "avg_pool2d_grad", scatter_infer, avg_grad_kernel,
    lambda gg, out, g, like, **attrs: (apply("avg_pool2d", gg, **attrs), None)))


# the public builders ------------------------------------------------------------------

def conv2d(x, w, stride=1, padding=0):
    """2-D cross-correlation of NCHW `x` with weights (C_out, C_in, kH, kW)."""
    return apply("conv2d", x, w, stride=stride, padding=padding)


def max_pool2d(x, size, stride=None):
    """Max over size windows of NCHW `x`; stride defaults to size, partial windows dropped."""
    return apply("max_pool2d", x, size=size, stride=stride)


def avg_pool2d(x, size, stride=None):
    """Mean over size windows of NCHW `x`; stride defaults to size, partial windows dropped."""
    return apply("avg_pool2d", x, size=size, stride=stride)
