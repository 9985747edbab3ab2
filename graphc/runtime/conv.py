"""Convolution and pooling kernels for compiled plans: NCHW, written into given buffers.

Each conv step owns a workspace dict (`ws`) that keeps its column buffer between calls; the
weight gradient of a convolution reuses the columns its forward step built in the same call.
"""
from __future__ import annotations

import numpy as np


def fill_cols(x, ws, kh, kw, stride, padding):
    """ws["cols"] (N, C*kh*kw, Ho*Wo) <- every window of x, kh*kw strided copies."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    if ph or pw:
        if "padded" not in ws:
            ws["padded"] = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
        ws["padded"][:, :, ph:ph + h, pw:pw + w] = x
        x = ws["padded"]
    ho, wo = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    if "cols" not in ws:
        ws["cols"] = np.empty((n, c, kh, kw, ho, wo), x.dtype)
    cols = ws["cols"]
    for i in range(kh):
        for j in range(kw):
            np.copyto(cols[:, :, i, j], x[:, :, i:i + sh * (ho - 1) + 1:sh,
                                           j:j + sw * (wo - 1) + 1:sw])
    return cols.reshape(n, c * kh * kw, ho * wo)


def channels_last(x) -> bool:
    """Wide inputs take the channels-last path (long contiguous rows in im2col)."""
    return x.shape[1] >= 8


def fill_cols_last(x, ws, kh, kw, stride, padding):
    """ws["cols"] (N*Ho*Wo, kh*kw*C) <- every window of x, via a channels-last copy of x."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    if "xh" not in ws:
        ws["xh"] = np.zeros((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
    xh = ws["xh"]
    np.copyto(xh[:, ph:ph + h, pw:pw + w, :], x.transpose(0, 2, 3, 1))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if "cols" not in ws:
        ws["cols"] = np.empty((n, ho, wo, kh, kw, c), x.dtype)
    cols = ws["cols"]
    for i in range(kh):
        for j in range(kw):
            np.copyto(cols[:, :, :, i, j, :],
                      xh[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :])
    return cols.reshape(n * ho * wo, kh * kw * c)


def conv2d(x, w, *, stride, padding, out, ws):
    """out (N, Co, Ho, Wo): im2col and one GEMM (channels-last for wide inputs, else one GEMM
    per image straight into NCHW)."""
    co, c, kh, kw = w.shape
    n = x.shape[0]
    if not channels_last(x):
        cols = fill_cols(x, ws, kh, kw, stride, padding)
        np.matmul(w.reshape(co, -1), cols, out=out.reshape(n, co, -1))
        return out
    cols = fill_cols_last(x, ws, kh, kw, stride, padding)
    if "res" not in ws:
        ws["wr"] = np.empty((kh, kw, c, co), w.dtype)
        ws["res"] = np.empty((cols.shape[0], co), out.dtype)
    np.copyto(ws["wr"], w.transpose(2, 3, 1, 0))
    np.matmul(cols, ws["wr"].reshape(-1, co), out=ws["res"])
    np.copyto(out, ws["res"].reshape(n, out.shape[2], out.shape[3], co).transpose(0, 3, 1, 2))
    return out


def conv2d_grad_weight(x, g, like, *, stride, padding, out, ws, cols_ready=False):
    """dw from the columns (those of the paired forward step when cols_ready)."""
    co, c, kh, kw = like.shape
    n = x.shape[0]
    if channels_last(x):
        cols = ws["cols"].reshape(-1, kh * kw * c) if cols_ready \
            else fill_cols_last(x, ws, kh, kw, stride, padding)
        if "gT" not in ws:
            ws["gT"] = np.empty((n, g.shape[2], g.shape[3], co), out.dtype)
            ws["dw"] = np.empty((co, kh, kw, c), out.dtype)
        np.copyto(ws["gT"], g.transpose(0, 2, 3, 1))
        np.matmul(ws["gT"].reshape(-1, co).T, cols, out=ws["dw"].reshape(co, -1))
        np.copyto(out, ws["dw"].transpose(0, 3, 1, 2))
        return out
    cols = ws["cols"].reshape(n, -1, g.shape[2] * g.shape[3]) if cols_ready \
        else fill_cols(x, ws, kh, kw, stride, padding)
    if "per_image" not in ws:
        ws["per_image"] = np.empty((n, co, cols.shape[1]), out.dtype)
    per = ws["per_image"]
    np.matmul(g.reshape(n, co, -1), cols.transpose(0, 2, 1), out=per)
    np.add.reduce(per, axis=0, out=out.reshape(co, -1))
    return out


def conv2d_grad_input(g, w, like, *, stride, padding, out, ws):
    """dx: one GEMM gives every window's gradient in channels-last order, which is then added
    back window offset by window offset along long contiguous rows (col2im)."""
    co, c, kh, kw = w.shape
    n, _, ho, wo = g.shape
    (sh, sw), (ph, pw) = stride, padding
    h, wd = like.shape[2:]
    if "gT" not in ws:
        ws["gT"] = np.empty((n, ho, wo, co), out.dtype)
        ws["wr"] = np.empty((co, kh, kw, c), out.dtype)
        ws["d"] = np.empty((n * ho * wo, kh * kw * c), out.dtype)
        ws["dxh"] = np.empty((n, h + 2 * ph, wd + 2 * pw, c), out.dtype)
    gT, wr, d, dxh = ws["gT"], ws["wr"], ws["d"], ws["dxh"]
    np.copyto(gT, g.transpose(0, 2, 3, 1))
    np.copyto(wr, w.transpose(0, 2, 3, 1))
    np.matmul(gT.reshape(-1, co), wr.reshape(co, -1), out=d)
    d6 = d.reshape(n, ho, wo, kh, kw, c)
    dxh.fill(0)
    for i in range(kh):
        for j in range(kw):
            view = dxh[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
            np.add(view, d6[:, :, :, i, j, :], out=view)
    np.copyto(out, dxh[:, ph:ph + h, pw:pw + wd, :].transpose(0, 3, 1, 2))
    return out


def windows_at(x, size, stride, out_hw):
    (kh, kw), (sh, sw), (ho, wo) = size, stride, out_hw
    for i in range(kh):
        for j in range(kw):
            yield x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]


def max_pool2d(x, *, size, stride, out, ws=None):
    """Max over each window; 2x2 windows with stride 2 first take the max of row pairs (two
    contiguous halves), then of column pairs."""
    if ws is not None and tuple(size) == tuple(stride) == (2, 2):
        n, c, h, w = x.shape
        ho, wo = out.shape[2:]
        if "rows" not in ws:
            ws["rows"] = np.empty((n, c, ho, w), x.dtype)
        rows, pairs = ws["rows"], x[:, :, :2 * ho, :].reshape(n, c, ho, 2 * w)
        np.maximum(pairs[..., :w], pairs[..., w:], out=rows)
        np.maximum(rows[..., 0:2 * wo:2], rows[..., 1:2 * wo:2], out=out)
        return out
    it = windows_at(x, size, stride, out.shape[2:])
    np.copyto(out, next(it))
    for view in it:
        np.maximum(out, view, out=out)
    return out


def max_pool2d_grad(g, x, *, size, stride, out, ws, top=None):
    """Each window's g goes to its first maximum (row-major), as the registered kernel does;
    `top` is the forward pooling's result when the plan still has it."""
    if "hit" not in ws:
        ws["hit"], ws["taken"] = np.empty(g.shape, bool), np.empty(g.shape, bool)
    hit, taken = ws["hit"], ws["taken"]
    if top is None:
        if "top" not in ws:
            ws["top"] = np.empty(g.shape, x.dtype)
        top = max_pool2d(x, size=size, stride=stride, out=ws["top"])
    disjoint = all(s >= k for s, k in zip(stride, size))
    (kh, kw), (sh, sw), (ho, wo) = size, stride, g.shape[2:]
    if disjoint and (kh, kw) == (sh, sw):     # windows tile out: zero only the uncovered rim
        out[:, :, ho * sh:, :] = 0
        out[:, :, :ho * sh, wo * sw:] = 0
    else:
        out.fill(0)
    last = kh * kw - 1
    pairs = zip(windows_at(x, size, stride, (ho, wo)), windows_at(out, size, stride, (ho, wo)))
    for k, (view, dst) in enumerate(pairs):
        np.equal(view, top, out=hit)
        if k:
            np.greater(hit, taken, out=hit)      # hit and not taken by an earlier offset
        if k == 0 and last:
            np.copyto(taken, hit)
        elif k < last:
            np.logical_or(taken, hit, out=taken)
        if disjoint:
            np.multiply(g, hit, out=dst)
        else:
            dst += g * hit
    return out
