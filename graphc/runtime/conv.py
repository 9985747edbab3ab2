"""Convolution and pooling kernels for compiled plans: NCHW, written into given buffers.

Each conv step owns a workspace dict (`ws`) that keeps its column buffer between calls; the
weight gradient of a convolution reuses the columns its forward step built in the same call.
"""
from __future__ import annotations

import numpy as np

from graphc.ops.conv import offsets


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


def nhwc(a):
    """a's channels-last form when a (NCHW) is stored so (runtime/layout.py): a view, else
    None."""
    t = a.transpose(0, 2, 3, 1)
    return t if t.flags.c_contiguous else None


def channels_last(x) -> bool:
    """Wide inputs take the channels-last path (long contiguous rows in im2col)."""
    return wide(x.shape)


def wide(shape) -> bool:
    return shape[1] >= 8


def g_last(g, ws, shared, fill):
    """g (N, Co, Ho, Wo) as a channels-last copy: in ws, or in the `shared` dict of the two
    gradient steps reading the same g (the first fills it, the second reuses it)."""
    box = ws if shared is None else shared
    if "gT" not in box:
        box["gT"] = np.empty(g.shape[:1] + g.shape[2:] + g.shape[1:2], g.dtype)
    if fill or shared is None:
        np.copyto(box["gT"], g.transpose(0, 2, 3, 1))
    return box["gT"]


def fill_cols_last(x, ws, kh, kw, stride, padding, tile=None, crop=None):
    """The (N*Ho*Wo, kh*kw*C) matrix of every window of x (also kept as ws["matrix"]).
    Wide inputs: ws["cols"] (N, Ho, Wo, kh, kw, C), one copy of the sliding windows of a
    channels-last copy of x (~3x faster than kh*kw copies of C-float rows). Narrow inputs:
    its transpose, ws["cols"] (kh, kw, C, N, Ho, Wo), kh*kw copies along x's image rows (a
    window's C floats are too short a row); BLAS reads either orientation. tile=(p, q): the
    rows in the order of a result stored tiled (`as_tiles`): (p, q, N, Ho/p, Wo/q). crop:
    the windows of the top-left (Ho, Wo) outputs only (all that the readers read)."""
    (sh, sw), (ph, pw) = stride, padding
    n, c, h, w = x.shape
    ho, wo = crop or ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    rows = (n, ho, wo) if tile is None else tile + (n, ho // tile[0], wo // tile[1])
    if c < 8:
        if ph or pw:
            if "padded" not in ws:
                ws["padded"] = np.zeros((n, c, h + 2 * ph, w + 2 * pw), x.dtype)
            ws["padded"][:, :, ph:ph + h, pw:pw + w] = x
            x = ws["padded"]
        if "cols" not in ws:
            ws["cols"] = np.empty((kh, kw, c) + rows, x.dtype)
            ws["matrix"] = ws["cols"].reshape(kh * kw * c, n * ho * wo).T
        for i in range(kh):
            for j in range(kw):
                src = x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                np.copyto(ws["cols"][i, j], src.transpose(1, 0, 2, 3) if tile is None
                          else by_offset(src, tile).transpose(5, 0, 1, 2, 3, 4))
        return ws["matrix"]
    if "cols" not in ws:
        ws["cols"] = np.empty(rows + (kh, kw, c), x.dtype)
        ws["matrix"] = ws["cols"].reshape(n * ho * wo, kh * kw * c)
    xh = nhwc(x) if not (ph or pw) else None       # x stored channels-last: read as it is
    if xh is None:
        if "xh" not in ws:
            ws["xh"] = np.zeros((n, h + 2 * ph, w + 2 * pw, c), x.dtype)
        xh = ws["xh"]
        np.copyto(xh[:, ph:ph + h, pw:pw + w, :], x.transpose(0, 2, 3, 1))
    windows = np.lib.stride_tricks.sliding_window_view(xh, (kh, kw), axis=(1, 2))
    windows = windows[:, :sh * (ho - 1) + 1:sh, :sw * (wo - 1) + 1:sw]   # (N, Ho, Wo, C, kh, kw)
    if tile is None:
        np.copyto(ws["cols"], windows.transpose(0, 1, 2, 4, 5, 3))
        return ws["matrix"]
    windows = by_offset(windows.transpose(0, 3, 1, 2, 4, 5), tile)   # (p, q, N, .., C, kh, kw)
    np.copyto(ws["cols"], np.moveaxis(windows, 5, 7))
    return ws["matrix"]


def by_offset(a, tile):
    """a (N, C, Ho, Wo, ...) as (p, q, N, Ho/p, Wo/q, C, ...): the positions grouped by their
    offset in the (p, q) windows that tile them (a view)."""
    (p, q), (n, c, ho, wo) = tile, a.shape[:4]
    a = a.reshape((n, c, ho // p, p, wo // q, q) + a.shape[4:])
    return np.moveaxis(a, (3, 5, 0, 2, 4, 1), (0, 1, 2, 3, 4, 5))


def conv2d(x, w, *, stride, padding, out, ws, last=None, nchw=True, tile=None, crop=None):
    """out (N, Co, Ho, Wo): im2col and one GEMM (channels-last for wide inputs or when `last`,
    else one GEMM per image straight into NCHW). The channels-last path leaves its result in
    ws["nhwc"] too, for a max-pool step that reads it (see max_pool2d's `shadow`); with
    nchw=False (every reader reads that) it is out's own memory, in channels-last order, or
    with tile=(p, q) stored tiled (`as_tiles`: ws["nhwc"] is then the windows' 6-D view);
    crop=(Ho, Wo): only the top-left outputs that its readers (pools) read, at the start of
    out's memory (`as_last`), the rest of out unwritten."""
    co, c, kh, kw = w.shape
    n = x.shape[0]
    assert crop is None or not nchw, "a cropped result is read only channels-last"
    if not (channels_last(x) if last is None else last):
        cols = fill_cols(x, ws, kh, kw, stride, padding)
        np.matmul(w.reshape(co, -1), cols, out=out.reshape(n, co, cols.shape[2]))
        return out
    cols = fill_cols_last(x, ws, kh, kw, stride, padding, tile, crop)
    if "wr" not in ws:
        ws["wr"] = np.empty((kh, kw, c, co), w.dtype)
    np.copyto(ws["wr"], w.transpose(2, 3, 1, 0))
    if not nchw:                # every reader reads ws["nhwc"]: it is out's memory
        ws["nhwc"] = as_last(out, crop) if tile is None else as_tiles(out, tile, crop)
        np.matmul(cols, ws["wr"].reshape(-1, co), out=as_last(out, crop).reshape(-1, co))
        return out
    if "res" not in ws:
        ws["res"] = np.empty((n,) + out.shape[2:] + (co,), out.dtype)
    ws["nhwc"] = ws["res"]
    np.matmul(cols, ws["wr"].reshape(-1, co), out=ws["res"].reshape(-1, co))
    np.copyto(out, ws["nhwc"].transpose(0, 3, 1, 2))
    return out


def as_last(out, crop=None):
    """out's memory as a channels-last array of out's NCHW shape (a result only its
    channels-last readers read lives there: no buffer beside the planner's); crop=(h, w):
    of that height and width, in the start of out's memory."""
    assert out.flags.c_contiguous, "a planner buffer"    # else reshape would copy
    n, c, h, w = out.shape
    h, w = crop or (h, w)
    return out.reshape(-1)[:n * h * w * c].reshape(n, h, w, c)


def as_tiles(out, tile, crop=None):
    """out's memory stored tiled for the (p, q) max-pool windows that tile it: offset by
    offset, (p, q, N, H/p, W/q, C), each window offset's block contiguous, so the pool and
    its gradient run as whole-block passes (no 32-float inner loops); returned as the
    windows' (N, H/p, p, W/q, q, C) view. Only for a result read by those pools and by its
    weight gradient, whose sum over all positions does not care about their order."""
    n, h, w, c = as_last(out, crop).shape
    p, q = tile
    return as_last(out, crop).reshape(p, q, n, h // p, w // q, c).transpose(2, 3, 0, 4, 1, 5)


def conv2d_grad_weight(x, g, like, *, stride, padding, out, ws, cols_ready=False,
                       shared=None, fill=True, last=None, gT=None):
    """dw from the columns (those of the paired forward step when cols_ready; `last` is then
    the layout that step used); gT: a channels-last copy of g another step already made."""
    co, c, kh, kw = like.shape
    n = x.shape[0]
    if channels_last(x) if last is None else last:
        cols = ws["matrix"] if cols_ready \
            else fill_cols_last(x, ws, kh, kw, stride, padding)
        gT = g_last(g, ws, shared, fill) if gT is None else gT
        if "dwT" not in ws:
            ws["dwT"] = np.empty((kh, kw, c, co), out.dtype)
        np.matmul(cols.T, gT.reshape(-1, co), out=ws["dwT"].reshape(-1, co))
        np.copyto(out, ws["dwT"].transpose(3, 2, 0, 1))
        return out
    cols = ws["cols"].reshape(n, c * kh * kw, g.shape[2] * g.shape[3]) if cols_ready \
        else fill_cols(x, ws, kh, kw, stride, padding)
    if "per_image" not in ws:
        ws["per_image"] = np.empty((n, co, cols.shape[1]), out.dtype)
    per = ws["per_image"]
    np.matmul(g.reshape(n, co, cols.shape[2]), cols.transpose(0, 2, 1), out=per)
    np.add.reduce(per, axis=0, out=out.reshape(co, -1))
    return out


CHUNK_BYTES = 2 ** 21      # the offsets' gradients of one batch chunk: about an L2's worth


def conv2d_grad_input(g, w, like, *, stride, padding, out, ws, shared=None, fill=True,
                      gT=None, chunks=True):
    """dx: one batched GEMM per window offset, (N*Ho*Wo, Co) @ (Co, C), gives each offset's
    gradient channels-last and contiguous; col2im adds them back offset by offset along long
    rows (Wo*C floats when the stride is 1). Both run per chunk of images whose offsets'
    gradients fit in CHUNK_BYTES: col2im reads them while they are in cache (~6 % faster at
    (64, 64, 11, 11) on one BLAS thread, and that workspace 1/4 of the whole batch's).
    chunks=False (the lowering's choice when the BLAS runs on several threads): the whole
    batch at once, kh*kw GEMMs in all, as each GEMM is a hand-off between the BLAS threads."""
    co, c, kh, kw = w.shape
    h, wd = like.shape[2:]
    gT = g_last(g, ws, shared, fill) if gT is None else gT
    n, ho, wo = gT.shape[:3]          # gT may cover only the top-left of g (zero elsewhere)
    if "wk" not in ws:
        per_image = kh * kw * ho * wo * c * out.itemsize
        ws["chunk"] = max(1, min(n, CHUNK_BYTES // per_image)) if chunks else max(n, 1)
        ws["wk"] = np.empty((kh, kw, co, c), out.dtype)
        ws["d"] = np.empty((kh * kw, ws["chunk"] * ho * wo, c), out.dtype)
    (ph, pw) = padding
    dxh = nhwc(out) if not (ph or pw) else None     # out stored channels-last: col2im into it
    if dxh is None:
        if "dxh" not in ws:
            ws["dxh"] = np.empty((n, h + 2 * ph, wd + 2 * pw, c), out.dtype)
        dxh = ws["dxh"]
    np.copyto(ws["wk"], w.transpose(2, 3, 0, 1))
    wk, rows, step = ws["wk"].reshape(kh * kw, co, c), gT.reshape(n, ho * wo, co), ws["chunk"]
    for s in range(0, n, step):
        m = min(step, n - s)
        d = ws["d"][:, :m * ho * wo]
        np.matmul(rows[s:s + m].reshape(-1, co), wk, out=d)
        col2im(d.reshape(kh * kw, m, ho, wo, c), dxh[s:s + m], (kh, kw), stride)
    if dxh is not ws.get("dxh"):
        return out
    np.copyto(out, dxh[:, ph:ph + h, pw:pw + wd, :].transpose(0, 3, 1, 2))
    return out


def col2im(d5, dxh, size, stride):
    """dxh (padded, channels-last) <- the sum of each window offset's gradient d5[k] over the
    positions that offset reads."""
    (kh, kw), (sh, sw) = size, stride
    ho, wo = d5.shape[2:4]
    first = 0
    if (sh, sw) == (1, 1):      # the first offset's block is contiguous: copied, rim zeroed
        np.copyto(dxh[:, :ho, :wo], d5[0])
        dxh[:, ho:] = 0
        dxh[:, :ho, wo:] = 0
        first = 1
    else:
        dxh.fill(0)
    for k in range(first, kh * kw):
        i, j = divmod(k, kw)
        view = dxh[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
        np.add(view, d5[k], out=view)


def windows_at(x, size, stride, out_hw, last=False):
    """Each window offset's view of x (NCHW; NHWC when last; a tiled result's 6-D windows,
    `as_tiles`, whose windows tile it), in the op kernels' order."""
    if x.ndim == 6:
        for i in range(size[0]):
            for j in range(size[1]):
                yield x[:, :, i, :, j, :]
        return
    for _, (_, _, rows, cols) in offsets(size, stride, out_hw):
        yield x[:, rows, cols, :] if last else x[:, :, rows, cols]


def max_pool2d(x, *, size, stride, out, ws=None, shadow=None):
    """Max over each window; 2x2 windows with stride 2 first take the max of row pairs (two
    contiguous halves), then of column pairs. `shadow`: x channels-last (kept by the step that
    made x, or x itself when stored channels-last; the 6-D windows of x stored tiled): pooled
    there along contiguous channel rows (whole blocks when tiled), the result kept in
    ws["nhwc"] (out's own memory when out is stored channels-last). With a shadow, only out's
    values are written: x is not read."""
    if shadow is None and ws is not None:
        shadow = nhwc(x)
    if shadow is not None:
        n, ho, wo, c = shadow.shape[0], out.shape[2], out.shape[3], shadow.shape[-1]
        dst = nhwc(out)
        if dst is not None:
            ws["nhwc"] = dst
        elif "nhwc" not in ws:
            ws["nhwc"] = np.empty((n, ho, wo, c), out.dtype)
        max_into(ws["nhwc"], list(windows_at(shadow, size, stride, (ho, wo), last=True)))
        if dst is None:
            np.copyto(out, ws["nhwc"].transpose(0, 3, 1, 2))
        return out
    if ws is not None and tuple(size) == tuple(stride) == (2, 2):
        n, c, h, w = x.shape
        ho, wo = out.shape[2:]
        if "rows" not in ws:
            ws["rows"] = np.empty((n, c, ho, w), x.dtype)
        rows, pairs = ws["rows"], x[:, :, :2 * ho, :].reshape(n, c, ho, 2 * w)
        np.maximum(pairs[..., :w], pairs[..., w:], out=rows)
        np.maximum(rows[..., 0:2 * wo:2], rows[..., 1:2 * wo:2], out=out)
        return out
    max_into(out, list(windows_at(x, size, stride, out.shape[2:])))
    return out


def max_into(out, views):
    """out <- the elementwise max of views: the first two into out by one call (a copy of
    the first and a max with it in place cost a pass more)."""
    if len(views) == 1:
        np.copyto(out, views[0])
        return
    np.maximum(views[0], views[1], out=out)
    for v in views[2:]:
        np.maximum(out, v, out=out)


def max_pool2d_grad(g, x, *, size, stride, out, ws, top=None, shadow=None, top_shadow=None,
                    nchw=True):
    """Each window's g goes to its first maximum (row-major), as the registered kernel does;
    `top` is the forward pooling's result when the plan still has it. With the channels-last
    copies of x and top (`shadow`, `top_shadow`) it runs channels-last, keeps that result in
    ws["nhwc"] and writes its NCHW transpose to out; with nchw=False (every reader reads
    ws["nhwc"]) that result is out's own memory, in channels-last order (as_last), or tiled
    as x is (as_tiles) when x's shadow is its tiled windows."""
    if top is None:
        if "top" not in ws:
            ws["top"] = np.empty(g.shape, x.dtype)
        top = max_pool2d(x, size=size, stride=stride, out=ws["top"])
    if shadow is None or top_shadow is None:
        return route(g, x, top, size, stride, out, ws, last=False)
    if "res" not in ws:
        ws["res"] = None if not nchw else np.empty(shadow.shape, out.dtype)
    # nchw False: every reader reads ws["nhwc"], out's memory (x's shadow when out is x),
    # tiled as x is when x's shadow is its 6-D windows (the lowering's promise): ws["nhwc"]
    # is then that memory in its order, as the weight gradient's GEMM reads it
    assert shadow.ndim == 4 or not nchw, "a tiled result's gradient is stored tiled"
    # x's shadow covering only the top-left outputs the pools read (a cropped convolution):
    # its gradient is stored so too, the rest is zero for the readers (the lowering's promise)
    hw = (shadow.shape[1] * shadow.shape[2], shadow.shape[3] * shadow.shape[4]) \
        if shadow.ndim == 6 else shadow.shape[1:3]
    assert nchw is False or tuple(hw) == out.shape[2:], "a cropped gradient is not NCHW"
    dst = ws["res"] if nchw else as_last(out, hw) if shadow.ndim == 4 \
        else as_tiles(out, size, hw)
    ws["nhwc"] = dst if dst.ndim == 4 else dst.transpose(2, 4, 0, 1, 3, 5)
    gl = nhwc(g)            # g stored channels-last: read as it is
    if gl is None:
        if "g_nhwc" not in ws:
            ws["g_nhwc"] = np.empty(top_shadow.shape, g.dtype)
        gl = ws["g_nhwc"]
        np.copyto(gl, g.transpose(0, 2, 3, 1))
    route(gl, shadow, top_shadow, size, stride, dst, ws, last=True)
    if nchw:
        np.copyto(out, ws["nhwc"].transpose(0, 3, 1, 2))
    return out


def route(g, x, top, size, stride, out, ws, last):
    """out <- g at each window's first maximum of x, zeros elsewhere (NCHW or NHWC arrays)."""
    disjoint = all(s >= k for s, k in zip(stride, size))
    (kh, kw), (sh, sw) = size, stride
    ho, wo = g.shape[1:3] if last else g.shape[2:]
    if disjoint and (kh, kw) == (sh, sw):     # windows tile out: zero only the uncovered rim
        h, w = ho * sh, wo * sw
        if out.ndim == 6:
            pass                              # tiled: the windows cover it all
        elif last:
            out[:, h:] = 0
            out[:, :h, w:] = 0
        else:
            out[:, :, h:, :] = 0
            out[:, :, :h, w:] = 0
        if unique_maxima(g, x, top, (kh, kw), (ho, wo), out, ws, last):
            return out
    else:
        out.fill(0)
    key = "hit_last" if last else "hit"
    if key not in ws:
        ws[key], ws[key + "_taken"] = np.empty(g.shape, bool), np.empty(g.shape, bool)
    hit, taken = ws[key], ws[key + "_taken"]
    final = kh * kw - 1
    pairs = zip(windows_at(x, size, stride, (ho, wo), last),
                windows_at(out, size, stride, (ho, wo), last))
    for k, (view, dst) in enumerate(pairs):
        np.equal(view, top, out=hit)
        if k:
            np.greater(hit, taken, out=hit)      # hit and not taken by an earlier offset
        if k == 0 and final:
            np.copyto(taken, hit)
        elif k < final:
            np.logical_or(taken, hit, out=taken)
        if disjoint:
            np.multiply(g, hit, out=dst)
        else:
            dst += g * hit
    return out



def unique_maxima(g, x, top, size, out_hw, out, ws, last) -> bool:
    """Tiling windows: each window offset compared with the maxima once; when that hits
    exactly one element per window (no tie, and no NaN, whose window has no hit), the
    gradient is g times the hits: 2 calls per offset instead of 4, no first-maximum
    bookkeeping. False (out's windows untouched) when some window needs the first-maximum
    rule. All of x is read before out is written: out may be x."""
    if last and x.ndim == 4:                  # tiled (6-D): offset by offset, as NCHW
        return unique_maxima_last(g, x, top, size, out_hw, out, ws)
    if "tile_hits" not in ws:
        ws["tile_hits"] = np.empty((size[0] * size[1],) + top.shape, bool)
    hits = ws["tile_hits"]
    for k, view in enumerate(windows_at(x, size, size, out_hw, last)):
        np.equal(view, top, out=hits[k])
    if np.count_nonzero(hits) != g.size or np.isnan(np.add.reduce(top, axis=None)):
        return False             # a tie, or a NaN window (inf - inf: a rare false alarm)
    for k, dst in enumerate(windows_at(out, size, size, out_hw, last)):
        np.multiply(g, hits[k], out=dst)
    return True


def unique_maxima_last(g, x, top, size, out_hw, out, ws) -> bool:
    """unique_maxima channels-last: every window element against its maximum in one
    comparison and g to the hits in one product (2 calls in all instead of 2 per window
    offset; the inner loops are C floats long either way)."""
    x6, o6 = tiles(x, size, out_hw), tiles(out, size, out_hw)
    if "tile_eq" not in ws:
        ws["tile_eq"] = np.empty(x6.shape, bool)
    eq = ws["tile_eq"]
    np.equal(x6, top[:, :, None, :, None, :], out=eq)
    if np.count_nonzero(eq) != g.size or np.isnan(np.add.reduce(top, axis=None)):
        return False
    np.multiply(g[:, :, None, :, None, :], eq, out=o6)
    return True


def tiles(a, size, out_hw):
    """The (N, Ho, kh, Wo, kw, C) view of the windows of a channels-last `a` that tile it."""
    (kh, kw), (ho, wo) = size, out_hw
    s0, s1, s2, s3 = a.strides
    return np.lib.stride_tricks.as_strided(
        a, (a.shape[0], ho, kh, wo, kw, a.shape[3]), (s0, kh * s1, s1, kw * s2, s2, s3))
