"""Import entries for ONNX's image ops that are linear maps with constant weights: Resize
(each axis is one matmul with an interpolation matrix), CenterCropPad and the window makers.

Resize's interpolation matrices are computed once, at import, by onnx's reference 1-D
interpolation applied to an identity matrix, so every coordinate mode, nearest rounding,
cubic coefficient, antialias and extrapolation rule is ONNX's own; the model's data then flows
through graphc matmuls, and gradients flow back through them.
"""
from __future__ import annotations

import itertools
import math
import os

import numpy as np

from graphc import api as gc
from graphc.ir import GraphcError, constant
from graphc.onnx.ops_shape import norm, pad_axis, static
from graphc.onnx.table import Unsupported, onnx_op


def coeff_fn(mode, antialias, cubic_a, nearest_mode):
    """onnx's own coefficient function for the mode (imported lazily, at import time)."""
    try:
        from onnx.reference.ops import op_resize as r
    except ImportError:      # pragma: no cover  (an onnx without the reference backend)
        raise Unsupported("Resize needs onnx's reference interpolation weights") from None
    if mode == "nearest":
        if antialias:
            raise Unsupported("antialias with mode='nearest'")
        return lambda x, scale: r._nearest_coeffs(x, mode=nearest_mode)
    if mode == "cubic":
        f = r._cubic_coeffs_antialias if antialias else r._cubic_coeffs
        return lambda x, scale: f(x, scale, A=cubic_a)
    if mode == "linear":
        return r._linear_coeffs_antialias if antialias else r._linear_coeffs
    raise Unsupported(f"mode={mode!r}")


def axis_map(n_in, n_out, scale, coeffs, roi, ext_value, ctm, exclude):
    """(M of shape (n_out, n_in), extrapolated rows mask) for one axis."""
    from onnx.reference.ops.op_resize import _interpolate_1d_along_axis as interp
    kw = dict(roi=roi, coordinate_transformation_mode=ctm, exclude_outside=exclude)
    matrix = interp(np.eye(n_in), 0, scale, n_out, coeffs, extrapolation_value=0.0, **kw)
    marks = interp(np.ones((n_in, 1)), 0, scale, n_out, coeffs, extrapolation_value=np.nan,
                   **kw)
    return matrix, np.isnan(marks[:, 0])


def sizes_and_scales(ctx, shape, roi, scales, sizes, axes, policy):
    """Per-axis output size and scale, as onnx's reference computes them."""
    r = len(shape)
    axes = list(range(r)) if axes is None else [a % r for a in axes]
    full_scales = [1.0] * r
    full_sizes = list(shape)
    full_roi = None
    if roi is not None and roi.size:
        full_roi = [0.0] * r + [1.0] * r
        for i, a in enumerate(axes):
            full_roi[a], full_roi[r + a] = roi[i], roi[len(axes) + i]
    if sizes is not None:
        for i, a in enumerate(axes):
            full_sizes[a] = int(sizes[i])
        full_scales = [full_sizes[i] / shape[i] for i in range(r)]
        if policy != "stretch":
            ctx.need(policy in ("not_larger", "not_smaller"), f"policy {policy!r}")
            pick = min if policy == "not_larger" else max
            s = pick(full_scales[a] for a in axes)
            full_scales = [s if i in axes else 1.0 for i in range(r)]
            full_sizes = [int(s * shape[i] + 0.5) if i in axes else shape[i] for i in range(r)]
    else:
        ctx.need(scales is not None, "neither scales nor sizes")
        for i, a in enumerate(axes):
            full_scales[a] = float(scales[i])
        full_sizes = [int(s * n) for s, n in zip(full_scales, shape)]
    return axes, full_sizes, full_scales, full_roi


def along(x, matrix, axis):
    """matrix (out, in) applied along `axis` of x."""
    moved = gc.swapaxes(x, axis, -1) if axis != x.ndim - 1 else x
    out = gc.matmul(moved, constant(matrix.T.astype(x.dtype)))
    return gc.swapaxes(out, axis, -1) if axis != x.ndim - 1 else out


def memory_bytes() -> int:
    """This machine's memory (2**40 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def too_big(need: int, what: str) -> None:
    """An op whose constant matrices or output would not fit in this machine's memory is
    refused before they are made (a hostile Resize scale of 10**6: minutes of onnx's
    reference computing the matrix row by row, then a MemoryError)."""
    have = memory_bytes()
    if need > have:
        raise GraphcError(f"{what} needs {need / 2**30:.3g} GiB, more than this machine's "
                          f"memory ({have / 2**30:.3g} GiB)")


@onnx_op("Resize", const=(1, 2, 3), antialias=0, axes=None,
         coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75, exclude_outside=0,
         extrapolation_value=0.0, keep_aspect_ratio_policy="stretch", mode="nearest",
         nearest_mode="round_prefer_floor")
def resize(ctx, x, roi=None, scales=None, sizes=None, *, antialias, axes,
           coordinate_transformation_mode, cubic_coeff_a, exclude_outside, extrapolation_value,
           keep_aspect_ratio_policy, mode, nearest_mode):
    shape = static(x, "Resize")
    roi, scales, sizes = (ctx.const(v, w) for v, w in ((roi, "roi"), (scales, "scales"),
                                                       (sizes, "sizes")))
    scales = None if scales is not None and scales.size == 0 else scales
    sizes = None if sizes is not None and sizes.size == 0 else sizes
    coeffs = coeff_fn(mode, antialias, cubic_coeff_a, nearest_mode)
    if scales is not None and not (np.isfinite(scales).all() and (scales > 0).all()):
        raise GraphcError(f"Resize: scales must be positive finite numbers, got "
                          f"{scales.tolist()}")
    if sizes is not None and (sizes < 0).any():
        raise GraphcError(f"Resize: sizes must be >= 0, got {sizes.tolist()}")
    axes, out_sizes, out_scales, full_roi = sizes_and_scales(
        ctx, shape, roi, scales, sizes, axes, keep_aspect_ratio_policy)
    r = len(shape)
    y = x if x.dtype.kind == "f" else gc.cast(x, "float64")
    too_big(max(math.prod(out_sizes) * y.dtype.itemsize,
                max(n * m * 8 for n, m in zip(shape, out_sizes))),
            f"Resize of {list(shape)} to {list(out_sizes)} {y.dtype.name}")
    for a in axes:
        same_roi = full_roi is None or (math.isclose(full_roi[a], 0.0)
                                        and math.isclose(full_roi[a + r], 1.0))
        if math.isclose(out_scales[a], 1.0) and out_sizes[a] == shape[a] and same_roi:
            continue
        axis_roi = None if full_roi is None else [full_roi[a], full_roi[a + r]]
        matrix, outside = axis_map(shape[a], out_sizes[a], out_scales[a], coeffs, axis_roi,
                                   extrapolation_value, coordinate_transformation_mode,
                                   bool(exclude_outside))
        y = along(y, matrix, a)
        if outside.any():
            mark = outside.reshape([-1 if i == a else 1 for i in range(r)])
            y = gc.where(constant(mark), constant(np.asarray(extrapolation_value, y.dtype)), y)
    if x.dtype.kind != "f":
        info = np.iinfo(x.dtype)
        y = gc.cast(gc.clip(gc.round(y), float(info.min), float(info.max)), x.dtype)
    return y


@onnx_op("Upsample", const=(1,), mode="nearest", scales=None)
def upsample(ctx, x, scales_in=None, *, mode, scales):
    """Resize as opsets 7-9 wrote it (old models' upsampling): the output position over the
    scale is the input position, which `nearest` rounds down; scales an attribute at 7."""
    scales = ctx.const(scales_in, "scales") if scales_in is not None else scales
    ctx.need(scales is not None, "no scales")
    ctx.need(mode in ("nearest", "linear", "bilinear"), f"mode {mode!r}")
    return resize(ctx, x, None, constant(np.asarray(scales, np.float32)), None, antialias=0,
                  axes=None, coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.75,
                  exclude_outside=0, extrapolation_value=0.0, keep_aspect_ratio_policy="stretch",
                  mode="nearest" if mode == "nearest" else "linear", nearest_mode="floor")


@onnx_op("CenterCropPad", const=(1,), axes=None)
def center_crop_pad(ctx, x, shape, *, axes):
    target = ctx.ints(shape, "shape")
    axes = list(range(x.ndim)) if axes is None else [norm(a, x.ndim) for a in axes]
    for a, want in zip(axes, target):
        n = static(x)[a]
        if want < n:
            start = (n - want) // 2
            x = gc.slice(x, a, start, start + want)
        elif want > n:
            before = (want - n) // 2
            x = pad_axis(ctx, x, a, before, want - n - before, "constant",
                         constant(np.zeros((), x.dtype)))
    return x


def window(kind):
    def build(ctx, size, *, output_datatype, periodic):
        n = int(ctx.const(size, "size").reshape(-1)[0])
        from graphc.onnx.ops_math import to_dtype
        k = np.arange(n)
        denom = n if periodic else n - 1
        if kind == "hann":
            w = np.sin(np.pi * k / denom) ** 2
        elif kind == "hamming":
            w = 25 / 46 - 21 / 46 * np.cos(2 * np.pi * k / denom)
        else:
            w = 0.42 - 0.5 * np.cos(2 * np.pi * k / denom) + 0.08 * np.cos(4 * np.pi * k / denom)
        return constant(w.astype(to_dtype(output_datatype)))
    return build


for _name, _kind in [("HannWindow", "hann"), ("HammingWindow", "hamming"),
                     ("BlackmanWindow", "blackman")]:
    onnx_op(_name, const=(0,), output_datatype=1, periodic=1)(window(_kind))


@onnx_op("DFT", const=(1, 2), inverse=0, onesided=0, axis=None)
def dft(ctx, x, dft_length=None, axis_in=None, *, inverse, onesided, axis):
    """A linear map along the axis: real and imaginary parts through constant matrices."""
    need_float = x.dtype.kind == "f"
    ctx.need(need_float, f"DFT of {x.dtype.name}")
    if axis is None:                      # DFT-20: an input (default -2); DFT-17: attribute 1
        axis = int(ctx.const(axis_in, "axis").reshape(-1)[0]) if axis_in is not None else \
            (-2 if ctx.opset >= 20 else 1)
    axis = norm(axis, x.ndim)
    ctx.need(axis != x.ndim - 1, "a DFT along the real/imaginary axis")
    n = static(x, "DFT")[axis]
    length = int(ctx.const(dft_length, "dft_length").reshape(-1)[0]) if dft_length is not None \
        else (2 * (n - 1) if inverse and onesided else n)
    too_big(max(length, 0) * n * 16 * 2, f"DFT of length {length} along an axis of {n}")
    eye = np.eye(n)
    real = gc.slice(x, -1, 0, 1)
    imag = gc.slice(x, -1, 1, 2) if x.shape[-1] == 2 else None
    if inverse and onesided:               # irfft: real output, R-linear in both parts
        a = np.fft.irfft(eye + 0j, n=length, axis=0)
        b = np.fft.irfft(1j * eye, n=length, axis=0)
        out = along(real, a, axis)
        return out if imag is None else out + along(imag, b, axis)
    m = (np.fft.ifft if inverse else np.fft.fft)(eye, n=length, axis=0)
    if onesided:
        m = m[:length // 2 + 1]
    return complex_map(real, imag, m, axis)


def complex_map(real, imag, m, axis):
    """The complex matrix m applied along axis to real + i imag, as (..., [real, imag])."""
    yr, yi = along(real, m.real, axis), along(real, m.imag, axis)
    if imag is not None:
        yr, yi = yr - along(imag, m.imag, axis), yi + along(imag, m.real, axis)
    return gc.concat([yr, yi], axis=-1)


@onnx_op("STFT", const=(1, 3), onesided=1)
def stft(ctx, signal, frame_step, window=None, frame_length=None, *, onesided):
    """Frames read by a constant gather, windowed, then one DFT matrix along each frame."""
    ctx.need(signal.dtype.kind == "f", f"signal of type {signal.dtype.name}")
    step = int(ctx.const(frame_step, "frame_step").reshape(-1)[0])
    size = int(ctx.const(frame_length, "frame_length").reshape(-1)[0]) \
        if frame_length is not None else static(window, "STFT's window")[0]
    length = static(signal, "STFT")[1]
    count = 1 + (length - size) // step
    too_big(max(size, 0) * (max(size, 0) + max(count, 0)) * 16,
            f"STFT of frames of {size} every {step}")
    index = (np.arange(count)[:, None] * step + np.arange(size)[None, :]).astype(np.int64)
    frames = gc.take(signal, constant(index), axis=1)          # (B, frames, size, 1|2)
    if window is not None:
        frames = frames * gc.reshape(gc.cast(window, signal.dtype), (1, 1, size, 1))
    m = np.fft.fft(np.eye(size), axis=0)
    if onesided:
        m = m[:size // 2 + 1]
    real = gc.slice(frames, -1, 0, 1)
    imag = gc.slice(frames, -1, 1, 2) if signal.shape[-1] == 2 else None
    return complex_map(real, imag, m, 2)


@onnx_op("Col2Im", const=(1, 2), dilations=None, pads=None, strides=None)
def col2im(ctx, x, image_shape, block_shape, *, dilations, pads, strides):
    """Each block column added back at its place: one constant 0/1 matrix per channel."""
    image, block = ctx.ints(image_shape, "image_shape"), ctx.ints(block_shape, "block_shape")
    r = len(image)
    dils, strides = dilations or [1] * r, strides or [1] * r
    pads = pads or [0] * (2 * r)
    counts = [(n + pads[i] + pads[i + r] - d * (k - 1) - 1) // s + 1
              for i, (n, k, d, s) in enumerate(zip(image, block, dils, strides))]
    k_size, l_size = int(np.prod(block)), int(np.prod(counts))
    too_big(math.prod(image) * k_size * l_size * 8, f"Col2Im of image {image}, blocks {block}")
    matrix = np.zeros((int(np.prod(image)), k_size * l_size), np.float64)
    for kk, koff in enumerate(np.ndindex(*block)):
        for ll, loff in enumerate(np.ndindex(*counts)):
            pos = [lo * s - pads[i] + ko * d for i, (ko, lo, s, d)
                   in enumerate(zip(koff, loff, strides, dils))]
            if all(0 <= p < n for p, n in zip(pos, image)):
                matrix[np.ravel_multi_index(pos, image), kk * l_size + ll] = 1
    n, ck, _ = static(x, "Col2Im")
    c = ck // k_size
    flat = gc.reshape(x, (n, c, k_size * l_size))
    out = gc.matmul(flat, constant(matrix.T.astype(x.dtype)))
    return gc.reshape(out, (n, c) + tuple(image))


@onnx_op("AffineGrid", const=(1,), align_corners=0)
def affine_grid(ctx, theta, size, *, align_corners):
    """theta (N, r, r+1) applied to the constant grid of normalized coordinates."""
    dims = ctx.ints(size, "size")[2:]
    too_big(math.prod(dims) * (len(dims) + 1) * 8 * 3, f"AffineGrid of size {list(dims)}")
    axes = []
    for n in dims:
        axes.append(np.linspace(-1, 1, n) if align_corners else (2 * np.arange(n) + 1) / n - 1)
    mesh = np.meshgrid(*axes, indexing="ij")              # per spatial axis, (D, H, W)
    coords = [m.reshape(-1) for m in mesh[::-1]]          # x (width) first, then y, z
    base = np.stack(coords + [np.ones(coords[0].size)])  # (r + 1, prod(dims))
    grid = gc.matmul(theta, constant(base.astype(theta.dtype)))     # (N, r, prod)
    grid = gc.swapaxes(grid, 1, 2)
    return gc.reshape(grid, (theta.shape[0],) + tuple(dims) + (len(dims),))


# GridSample: sampling at run-time positions, as gathers weighted by graph arithmetic ------

def reflect(v, lo: float, hi: float):
    """v reflected by the near border until inside [lo, hi] (onnx's _gs_reflect)."""
    span = hi - lo
    c = lambda a: constant(np.asarray(a, v.dtype))   # noqa: E731
    below, above = gc.less(v, c(lo)), gc.greater(v, c(hi))
    dx = gc.where(below, c(lo) - v, v - c(hi))
    n = gc.floor(dx / c(span))
    r = dx - n * c(span)
    even = gc.equal(gc.mod(n, c(2)), c(0))
    low_side = gc.where(even, c(lo) + r, c(hi) - r)
    high_side = gc.where(even, c(hi) - r, c(lo) + r)
    return gc.where(below, low_side, gc.where(above, high_side, v))


def cubic_weights(t):
    """Keys' cubic convolution weights (a = -0.75) for the four taps around t in [0, 1)."""
    a = -0.75
    c = lambda v: constant(np.asarray(v, t.dtype))   # noqa: E731
    one = c(1)
    u = [t + one, t, one - t, c(2) - t]
    far = lambda x: ((c(a) * x - c(5 * a)) * x + c(8 * a)) * x - c(4 * a)   # noqa: E731
    near = lambda x: ((c(a + 2) * x - c(a + 3)) * x * x + one)              # noqa: E731
    return [far(u[0]), near(u[1]), near(u[2]), far(u[3])]


@onnx_op("GridSample", align_corners=0, mode="linear", padding_mode="zeros")
def grid_sample(ctx, x, grid, *, align_corners, mode, padding_mode):
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    ctx.need(mode in ("nearest", "linear", "cubic"), f"mode={mode!r}")
    ctx.need(padding_mode in ("zeros", "border", "reflection"), f"padding_mode={padding_mode!r}")
    ctx.need(x.dtype.kind == "f", f"X of type {x.dtype.name}")
    shape = static(x, "GridSample")
    n, ch, dims = shape[0], shape[1], shape[2:]
    r = len(dims)
    out = static(grid, "GridSample")[1:-1]
    c = lambda v: constant(np.asarray(v, grid.dtype))   # noqa: E731
    coords, borders = [], []
    for i, size in enumerate(dims):             # grid's last axis lists x (width) first
        g = gc.reshape(gc.slice(grid, -1, r - 1 - i, r - i), (n,) + out)
        v = (g + c(1)) / c(2) * c(size - 1) if align_corners else \
            ((g + c(1)) * c(size) - c(1)) / c(2)
        lo, hi = (0.0, size - 1.0) if align_corners else (-0.5, size - 0.5)
        if mode == "nearest":
            v = gc.round(v)
        if padding_mode == "border":
            v = gc.clip(v, 0.0, float(size - 1))
        elif padding_mode == "reflection":
            v = reflect(v, lo, hi)
        coords.append(v)
        borders.append((lo, hi))
    flat_x = gc.reshape(x, (n, ch, int(np.prod(dims))))
    strides = np.cumprod((1,) + tuple(dims[::-1]))[:-1][::-1]
    q = int(np.prod(out))

    def fetch(index):
        """X at integer positions (one float node per axis), with the padding rule."""
        flat, valid = None, None
        for i, (pos, size) in enumerate(zip(index, dims)):
            if padding_mode == "reflection":
                pos = gc.trunc(reflect(pos, *borders[i]))
            inside = gc.logical_and(gc.greater_equal(pos, c(0)), gc.less(pos, c(size)))
            valid = inside if valid is None else gc.logical_and(valid, inside)
            k = gc.cast(gc.clip(pos, 0.0, float(size - 1)), "int64") * int(strides[i])
            flat = k if flat is None else flat + k
        idx = gc.broadcast_to(gc.reshape(flat, (n, 1, q)), (n, ch, q))
        got = gc.reshape(gc.take_along_axis(flat_x, idx, axis=2), (n, ch) + out)
        if padding_mode == "zeros":
            got = got * gc.cast(gc.expand_dims(valid, 1), x.dtype)
        return got

    if mode == "nearest":
        return fetch(coords)
    taps = []
    for v in coords:
        base = gc.floor(v)
        t = v - base
        if mode == "linear":
            taps.append([(base, c(1) - t), (base + c(1), t)])
        else:
            w = cubic_weights(t)
            taps.append([(base + c(k - 1), w[k]) for k in range(4)])
    total = None
    for corner in itertools.product(*taps):
        weight = None
        for _, w in corner:
            weight = w if weight is None else weight * w
        term = fetch([p for p, _ in corner]) * gc.cast(gc.expand_dims(weight, 1), x.dtype)
        total = term if total is None else total + term
    return total
