"""Winograd F(4x4, 3x3) convolution kernels (Lavin & Gray 2015) for compiled plans.

A stride-1 3x3 convolution is, per 6x6 input tile d (stride 4) and filter g, the 4x4 output
tile A^T [(G g G^T) * (B^T d B)] A: 36 products per tile and channel pair instead of 144, i.e.
36 batched (tiles x C) @ (C x Co) GEMMs, one per point of the transformed tile. The transforms
are memory-bound passes over the maps, so one step alone barely pays (bench/winograd.py); the
three steps of one convolution share them instead, as im2col's columns are shared:
- the forward keeps V = (B^T x B^T) d (every input tile) and U = (G x G) g (every filter);
- the gradients of the same g share E = (A x A) e (every 4x4 tile e of g, zero beyond it);
- the weight gradient is (G^T x G^T) [sum over tiles V * E] (the forward's bilinear form
  transposed), the input gradient (B x B) [E @ U^T], the 6x6 tiles added back where they
  overlap (x: Kronecker product: both sides of every tile in one GEMM).
Rounding: the transforms' constants (up to 8 and 1/24) make the error ~10x im2col's, 3e-6 to
1e-5 of the largest result in float32 (measured); an inf input gives NaN where im2col gives
inf (inf - inf in the transforms). `pays` decides where it is used (runtime/lower_conv.py).
"""
from __future__ import annotations

import numpy as np

from graphc.runtime.conv import as_last

# y = A^T [(G g G^T) * (B^T d B)] A
BT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
      (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))
G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
     (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))

# measured, bench/winograd_rule.py: below these the transforms and ~40 NumPy calls a step
# cost more than the products they save
MIN_CHANNELS = 16
MIN_PRODUCTS = 2 ** 22  # N * Ho * Wo * C * Co (im2col's multiplies / 9)
MAX_WORK = 0.3          # the tiles' products over im2col's (partial tiles waste them)
MAX_THREADS = 1         # BLAS threads (bench/winograd_ab.py, bench/README: at 2, im2col)


def pays(x_shape, w_shape, stride, padding, dtype, threads: int = 1) -> bool:
    """Winograd for this convolution: 3x3, stride 1, float32/64, C and Co >= MIN_CHANNELS,
    MIN_PRODUCTS or more, and the 4x4 output tiles covering the map with at most MAX_WORK of
    im2col's products; and the BLAS on at most MAX_THREADS threads (`threads`, blas.threads()
    when lowering): im2col's few large GEMMs spread over its threads, Winograd's transforms
    (memory passes on one core) and its batches of 36 small GEMMs (a hand-off between the
    BLAS threads each) do not."""
    co, c, kh, kw = w_shape
    if (kh, kw) != (3, 3) or tuple(stride) != (1, 1) or min(c, co) < MIN_CHANNELS \
            or np.dtype(dtype) not in (np.float32, np.float64) or threads > MAX_THREADS:
        return False
    ho, wo = x_shape[2] + 2 * padding[0] - 2, x_shape[3] + 2 * padding[1] - 2
    if ho < 1 or wo < 1 or x_shape[0] * ho * wo * c * co < MIN_PRODUCTS:
        return False
    return 36 * -(-ho // 4) * -(-wo // 4) <= MAX_WORK * 9 * ho * wo


def mats(ws, dtype):
    """The transforms as Kronecker products (two sides of a tile in one GEMM: 1.2-1.5x
    faster than two 6-row GEMMs, whose BLAS kernels are slow on so few rows), made in
    float64 and rounded once to the step's dtype, once per workspace."""
    if "kBT" not in ws:
        bt, g, at = np.array(BT, float), np.array(G, float), np.array(AT, float)
        for k, m in (("kBT", bt), ("kB", bt.T), ("kG", g), ("kGT", g.T), ("kAT", at),
                     ("kA", at.T)):
            ws[k] = np.kron(m, m).astype(dtype)
    return ws


def apply(ws, key, src, out):
    """out <- ws[key] (k*k, m*m) applied to every tile of src (m, m, ...) into (k, k, ...)."""
    k = mats(ws, src.dtype)[key]
    np.matmul(k, src.reshape(k.shape[1], -1), out=out.reshape(k.shape[0], -1))


def scratch(pool, slot, shape, dtype):
    """A view of slot `slot` ("a" or "b") of the plan's scratch `pool` (grown to its largest
    use): what lives only during one step (padded input, tiles, products, dV) is there, so
    the plan's Winograd steps share two buffers instead of each keeping its own."""
    size = int(np.prod(shape))
    key = slot + np.dtype(dtype).char
    if key not in pool or pool[key].size < size:
        pool[key] = np.empty(size, dtype)
    return pool[key][:size].reshape(shape)


def grid(ho, wo):
    return -(-ho // 4), -(-wo // 4)


def transform_input(x, padding, ws, pool):
    """ws["V"] (36, P, C) <- (B^T x B^T) of every 6x6 tile (stride 4) of x zero-padded, P =
    N * th * tw tiles (x NCHW, any layout: copied channels-last into a zero-rimmed xp)."""
    n, c, h, w = x.shape
    (ph, pw), f = padding, x.dtype
    th, tw = grid(h + 2 * ph - 2, w + 2 * pw - 2)
    if "V" not in ws:
        ws["V"] = np.empty((36, n * th * tw, c), f)
    xp = scratch(pool, "b", (n, 4 * th + 2, 4 * tw + 2, c), f)
    xp[:, :ph] = 0
    xp[:, ph + h:] = 0
    xp[:, ph:ph + h, :pw] = 0
    xp[:, ph:ph + h, pw + w:] = 0
    np.copyto(xp[:, ph:ph + h, pw:pw + w], x.transpose(0, 2, 3, 1))
    tiles = np.lib.stride_tricks.sliding_window_view(xp, (6, 6), axis=(1, 2))[:, ::4, ::4]
    x6 = scratch(pool, "a", (6, 6, n, th, tw, c), f)
    np.copyto(x6, tiles.transpose(4, 5, 0, 1, 2, 3))
    apply(ws, "kBT", x6, ws["V"])
    return ws["V"]


def transform_filter(w, ws, pool):
    """ws["U"] (36, C, Co) <- (G x G) of every 3x3 filter of w (Co, C, 3, 3)."""
    co, c = w.shape[:2]
    if "U" not in ws:
        ws["U"] = np.empty((36, c, co), w.dtype)
    wr = scratch(pool, "b", (3, 3, c, co), w.dtype)
    np.copyto(wr, w.transpose(2, 3, 1, 0))
    apply(ws, "kG", wr, ws["U"])
    return ws["U"]


def transform_grad(g, box, pool, gT=None):
    """box["E"] (36, P, Co) <- (A x A) of every 4x4 tile of g (N, Co, Ho, Wo), zeros beyond
    g (gT: g channels-last, when a step already made it)."""
    n, co, ho, wo = g.shape
    th, tw = grid(ho, wo)
    if "E" not in box:
        box["E"] = np.empty((36, n * th * tw, co), g.dtype)
    ec = scratch(pool, "b", (4, 4, n, th, tw, co), g.dtype)
    if ho % 4:
        ec[:, :, :, th - 1] = 0          # the last tiles' rows beyond g
    if wo % 4:
        ec[:, :, :, :, tw - 1] = 0
    gl = g.transpose(0, 2, 3, 1) if gT is None else gT
    for i in range(4):
        for j in range(4):
            src = gl[:, i::4, j::4]
            np.copyto(ec[i, j, :, :src.shape[1], :src.shape[2]], src)
    apply(box, "kA", ec, box["E"])
    return box["E"]


def winograd_conv2d(x, w, *, stride, padding, out, ws, pool=None, nchw=True):
    """out (N, Co, Ho, Wo) <- the stride-1 3x3 convolution of x by F(4x4, 3x3); keeps V and
    U in ws for the gradients and the channels-last result in ws["nhwc"] (out's own memory
    when nchw=False: every reader reads that). pool: the plan's scratch (else ws)."""
    pool = ws if pool is None else pool
    n, co, ho, wo = out.shape
    th, tw = grid(ho, wo)
    v = transform_input(x, padding, ws, pool)
    u = transform_filter(w, ws, pool)
    m = scratch(pool, "b", (36, v.shape[1], co), out.dtype)
    np.matmul(v, u, out=m)
    y = scratch(pool, "a", (4, 4, n, th, tw, co), out.dtype)
    apply(ws, "kAT", m, y)
    if "res" not in ws:
        ws["res"] = None if not nchw else np.empty((n, ho, wo, co), out.dtype)
    res = ws["nhwc"] = ws["res"] if nchw else as_last(out)
    for i in range(4):
        for j in range(4):
            dst = res[:, i::4, j::4]
            np.copyto(dst, y[i, j, :, :dst.shape[1], :dst.shape[2]])
    if nchw:
        np.copyto(out, res.transpose(0, 3, 1, 2))
    return out


def winograd_grad_weight(x, g, like, *, stride, padding, out, ws, pool=None, fwd=None,
                         shared=None, fill=True, gT=None):
    """dw (Co, C, 3, 3) = (G^T x G^T) [sum over tiles V * E]: V from the forward step's
    workspace `fwd` when the plan has it, E from `shared` (the gradient steps reading this
    g: the first fills it, fill=False reuses it)."""
    pool = ws if pool is None else pool
    co, c = like.shape[:2]
    v = fwd["V"] if fwd is not None else transform_input(x, padding, ws, pool)
    box = ws if shared is None else shared
    e = transform_grad(g, box, pool, gT) if fill or shared is None else box["E"]
    s = scratch(pool, "b", (36, c, co), out.dtype)
    np.matmul(v.transpose(0, 2, 1), e, out=s)
    dw = scratch(pool, "a", (3, 3, c, co), out.dtype)
    apply(ws, "kGT", s, dw)
    np.copyto(out, dw.transpose(3, 2, 0, 1))
    return out


def winograd_grad_input(g, w, like, *, stride, padding, out, ws, pool=None, fwd=None,
                        shared=None, fill=True, gT=None):
    """dx (N, C, H, W) = (B x B) [E @ U^T] per tile, the 6x6 tiles (stride 4) added back
    where they overlap: U from the forward's workspace `fwd` when the plan has it, E from
    `shared` as for the weight gradient."""
    pool = ws if pool is None else pool
    n, c, h, wd = like.shape
    (ph, pw), f = padding, out.dtype
    th, tw = grid(h + 2 * ph - 2, wd + 2 * pw - 2)
    u = fwd["U"] if fwd is not None else transform_filter(w, ws, pool)
    box = ws if shared is None else shared
    e = transform_grad(g, box, pool, gT) if fill or shared is None else box["E"]
    dv = scratch(pool, "b", (36, e.shape[1], c), f)
    np.matmul(e, u.transpose(0, 2, 1), out=dv)
    d = scratch(pool, "a", (6, 6, n, th, tw, c), f)
    apply(ws, "kB", dv, d)
    # columns: tile column j of tile s lands at 4s + j (j = 4, 5 on the next tile's 0, 1)
    q = scratch(pool, "b", (6, n, th, tw + 1, 4, c), f)            # dV is read
    np.copyto(q[:, :, :, :tw], d[:, :4].transpose(0, 2, 3, 4, 1, 5))
    q[:, :, :, tw] = 0
    q[:, :, :, 1:, :2] += d[:, 4:].transpose(0, 2, 3, 4, 1, 5)
    # rows, the same way
    q4 = q.reshape(6, n, th, 4 * tw + 4, c)
    dxp = scratch(pool, "a", (n, th + 1, 4, 4 * tw + 4, c), f)     # d is read
    np.copyto(dxp[:, :th], q4[:4].transpose(1, 2, 0, 3, 4))
    dxp[:, th] = 0
    dxp[:, 1:, :2] += q4[4:].transpose(1, 2, 0, 3, 4)
    full = dxp.reshape(n, 4 * th + 4, 4 * tw + 4, c)
    np.copyto(out, full[:, ph:ph + h, pw:pw + wd].transpose(0, 3, 1, 2))
    return out
