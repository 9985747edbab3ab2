"""Winograd convolution (Lavin & Gray 2015) against the compiled conv kernels on cnn_b64's
conv2 shape ((64, 32, 13, 13) * (64, 32, 3, 3) -> (64, 64, 11, 11)), channels-last, float32,
1 thread: do batched (tiles x C) @ (C x Co) GEMMs, one per point of the transformed tile,
instead of one (N*Ho*Wo x 9C) @ (9C x Co) pay, transforms included?

F(2x2, 3x3): 16 GEMMs, 2.25x fewer multiplies than im2col for even output sizes (1.89x at
11x11: the tiles cover 12x12), transforms as strided adds. F(4x4, 3x3): 36 GEMMs, 4x fewer
(3.4x at 11x11), transforms as small GEMMs with the 6x6 / 4x6 matrices, one image axis at a
time (memory-bound either way).

Timed in pairs, since the compiled plan's weight gradient reuses the forward step's columns
(cols_ready): the im2col forward + weight gradient against the Winograd forward + weight
gradient, which reuses the forward's transformed input V in the same way
(dL/dg = G^T [sum over tiles (A E A^T) * (B^T d B)] G: the transpose of the forward's
bilinear form). F(4,3) also does the input gradient from the weight gradient's transformed
g (E) and the forward's U (dX = (B x B) [E @ U^T], the tiles added back where they overlap),
against the compiled 9 offset GEMMs + col2im: all three conv2 steps with shared transforms.
Also each part alone, and the errors vs float64.

    OPENBLAS_NUM_THREADS=1 python3 bench/winograd.py [--rounds 30] [--shape 64,32,13,13,64]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from graphc.runtime import conv  # noqa: E402


def filter_transform(w, out):
    """out (4, 4, C, Co) <- G g G^T of every 3x3 filter of w (Co, C, 3, 3);
    G = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]."""
    g = w.transpose(2, 3, 1, 0)                       # (3, 3, C, Co)
    t = np.empty((4, 3) + g.shape[2:], w.dtype)
    t[0], t[3] = g[0], g[2]
    np.add(g[0], g[2], out=t[1])
    t[2] = t[1]
    t[1] += g[1]
    t[2] -= g[1]
    t[1:3] *= 0.5
    out[:, 0], out[:, 3] = t[:, 0], t[:, 2]
    np.add(t[:, 0], t[:, 2], out=out[:, 1])
    out[:, 2] = out[:, 1]
    out[:, 1] += t[:, 1]
    out[:, 2] -= t[:, 1]
    out[:, 1:3] *= 0.5
    return out


def tiles_of(x, th, tw, ws, key):
    """ws[key] (N, 2, th+1, 2, tw+1, C) <- x (N, H, W, C) with rows and columns split by
    parity ([n, p, r, q, s] = x[n, 2r + p, 2s + q], zeros beyond x): a tile's row or column
    2t + k is then the slice [k % 2, k // 2 + t], so every transform below runs along rows
    of tw*C contiguous floats instead of C (4 copies of C-float rows here, once)."""
    n, c = x.shape[0], x.shape[3]
    if key not in ws:
        ws[key] = np.zeros((n, 2, th + 1, 2, tw + 1, c), x.dtype)
    xd = ws[key]
    for p in range(2):
        for q in range(2):
            src = x[:, p::2, q::2]
            xd[:, p, :src.shape[1], q, :src.shape[2]] = src
    return xd


def b_transform(r, out):
    """out[0..3] <- B^T applied to the 4 rows r: d0 - d2, d1 + d2, d2 - d1, d1 - d3."""
    np.subtract(r[0], r[2], out=out[0])
    np.add(r[1], r[2], out=out[1])
    np.subtract(r[2], r[1], out=out[2])
    np.subtract(r[1], r[3], out=out[3])


def winograd_forward(x, w, out, ws):
    """out (N, Ho, Wo, Co) <- the valid stride-1 3x3 convolution of x (N, H, W, C); keeps
    the transformed input tiles ws["V"] (4, 4, N, th, tw, C) for the weight gradient."""
    n, h, wd, c = x.shape
    co = w.shape[0]
    th, tw = (h - 1) // 2, (wd - 1) // 2              # ceil(Ho / 2), ceil(Wo / 2)
    xd = tiles_of(x, th, tw, ws, "xd")
    if "V" not in ws:
        ws["U"] = np.empty((4, 4, c, co), x.dtype)
        ws["u1"] = np.empty((4, n, th, 2, tw + 1, c), x.dtype)
        ws["V"] = np.empty((4, 4, n, th, tw, c), x.dtype)
        ws["M"] = np.empty((4, 4, n, th, tw, co), x.dtype)
        ws["o1"] = np.empty((2, 4, n, th, tw, co), x.dtype)
        ws["o2"] = np.empty((2, 2, n, th, tw, co), x.dtype)
    u = filter_transform(w, ws["U"]).reshape(16, c, co)
    u1, v, m, o1, o2 = ws["u1"], ws["V"], ws["M"], ws["o1"], ws["o2"]
    b_transform([xd[:, k % 2, k // 2:k // 2 + th] for k in range(4)], u1)
    b_transform([u1[:, :, :, k % 2, k // 2:k // 2 + tw] for k in range(4)],
                [v[:, b] for b in range(4)])
    np.matmul(v.reshape(16, -1, c), u, out=m.reshape(16, -1, co))
    # A^T m A, A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]: rows, then columns
    np.add(m[0], m[1], out=o1[0])
    o1[0] += m[2]
    np.subtract(m[1], m[2], out=o1[1])
    o1[1] -= m[3]
    np.add(o1[:, 0], o1[:, 1], out=o2[:, 0])
    o2[:, 0] += o1[:, 2]
    np.subtract(o1[:, 1], o1[:, 2], out=o2[:, 1])
    o2[:, 1] -= o1[:, 3]
    for i in range(2):
        for j in range(2):
            dst = out[:, i::2, j::2]
            np.copyto(dst, o2[i, j, :, :dst.shape[1], :dst.shape[2]])
    return out


def winograd_grad_weight(g, out, ws):
    """out (Co, C, 3, 3) <- dL/dw from g (N, Ho, Wo, Co) and the forward's ws["V"]:
    G^T [sum over tiles and images (A e A^T) * V] G, the sum being 16 (C x P) @ (P x Co)
    GEMMs. A e = (e0, e0 + e1, e0 - e1, -e1): the sign of the last row is put on S."""
    v = ws["V"]
    _, _, n, th, tw, c = v.shape
    co = g.shape[3]
    ed = tiles_of(g, th - 1, tw - 1, ws, "ed")        # (N, 2, th, 2, tw, Co), zero rim
    if "E" not in ws:
        ws["e1"] = np.empty((4, n, th, 2, tw, co), g.dtype)
        ws["E"] = np.empty((4, 4, n, th, tw, co), g.dtype)
        ws["S"] = np.empty((4, 4, c, co), g.dtype)
    e1, e, s = ws["e1"], ws["E"], ws["S"]
    np.copyto(e1[0], ed[:, 0])
    np.add(ed[:, 0], ed[:, 1], out=e1[1])
    np.subtract(ed[:, 0], ed[:, 1], out=e1[2])
    np.copyto(e1[3], ed[:, 1])
    r0, r1 = e1[:, :, :, 0], e1[:, :, :, 1]
    np.copyto(e[:, 0], r0)
    np.add(r0, r1, out=e[:, 1])
    np.subtract(r0, r1, out=e[:, 2])
    np.copyto(e[:, 3], r1)
    np.matmul(v.reshape(16, -1, c).transpose(0, 2, 1), e.reshape(16, -1, co),
              out=s.reshape(16, c, co))
    s[3] *= -1
    s[:, 3] *= -1
    # G^T s G, G^T = [[1, .5, .5, 0], [0, .5, -.5, 0], [0, .5, .5, 1]]: rows, then columns
    t = np.empty((3, 4, c, co), g.dtype)
    np.add(s[1], s[2], out=t[0])
    t[0] *= 0.5
    np.subtract(s[1], s[2], out=t[1])
    t[1] *= 0.5
    np.add(t[0], s[3], out=t[2])
    t[0] += s[0]
    dw = out.transpose(2, 3, 1, 0)                    # (3, 3, C, Co) view of out
    p = np.empty((2, c, co), g.dtype)
    for i in range(3):
        np.add(t[i, 1], t[i, 2], out=p[0])
        p[0] *= 0.5
        np.subtract(t[i, 1], t[i, 2], out=dw[i, 1])
        dw[i, 1] *= 0.5
        np.add(p[0], t[i, 3], out=dw[i, 2])
        np.add(p[0], t[i, 0], out=dw[i, 0])
    return out


# F(4x4, 3x3): y = A^T [(G g G^T) * (B^T d B)] A on 6x6 input tiles at stride 4
BT43 = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                 [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
G43 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
AT43 = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                 [0, 1, -1, 8, -8, 1]], np.float64)


def f43_forward(x, w, out, ws):
    """out (N, Ho, Wo, Co) <- the valid stride-1 3x3 convolution of x (N, H, W, C) by
    F(4x4, 3x3); keeps the transformed tiles ws["V"] (36, P, C) for the weight gradient."""
    n, h, wd, c = x.shape
    co = w.shape[0]
    ho, wo = h - 2, wd - 2
    th, tw = -(-ho // 4), -(-wo // 4)
    p, f = n * th * tw, x.dtype
    if "V" not in ws:
        ws["xp"] = np.zeros((n, 4 * th + 2, 4 * tw + 2, c), f)   # zero rim: odd sizes
        ws["X"] = np.empty((6, 6, n, th, tw, c), f)
        ws["Z"] = np.empty((6, 6, p * c), f)
        ws["V"] = np.empty((36, p, c), f)
        ws["U"] = np.empty((36, c * co), f)
        ws["M"] = np.empty((36, p, co), f)
        ws["Z2"] = np.empty((4, 6, p * co), f)
        ws["Y"] = np.empty((4, 4, n, th, tw, co), f)
        ws["o"] = np.empty((n, th, 4, tw, 4, co), f)
        ws["BT"], ws["AT"] = BT43.astype(f), AT43.astype(f)
        ws["GG"] = np.kron(G43, G43).astype(f)
    xp = ws["xp"]
    np.copyto(xp[:, :h, :wd], x)
    tiles = np.lib.stride_tricks.sliding_window_view(xp, (6, 6), axis=(1, 2))[:, ::4, ::4]
    np.copyto(ws["X"], tiles.transpose(4, 5, 0, 1, 2, 3))
    np.matmul(ws["BT"], ws["X"].reshape(6, -1), out=ws["Z"].reshape(6, -1))   # rows
    np.matmul(ws["BT"], ws["Z"], out=ws["V"].reshape(6, 6, -1))               # columns
    transform_w(w, ws)
    np.matmul(ws["V"], ws["U"].reshape(36, c, co), out=ws["M"])
    np.matmul(ws["AT"], ws["M"].reshape(6, -1), out=ws["Z2"].reshape(4, -1))
    np.matmul(ws["AT"], ws["Z2"], out=ws["Y"].reshape(4, 4, -1))
    np.copyto(ws["o"], ws["Y"].transpose(2, 3, 0, 4, 1, 5))
    np.copyto(out, ws["o"].reshape(n, 4 * th, 4 * tw, co)[:, :ho, :wo])
    return out


def f43_grad_weight(g, out, ws):
    """out (Co, C, 3, 3) <- dL/dw from g (N, Ho, Wo, Co) and f43_forward's ws["V"]:
    (G^T x G^T) [sum over tiles ((A x A) e) * V] (x: Kronecker product)."""
    v = ws["V"]
    _, p, c = v.shape
    n, ho, wo, co = g.shape
    th, tw = -(-ho // 4), -(-wo // 4)
    if "E" not in ws:
        ws["gp"] = np.zeros((n, 4 * th, 4 * tw, co), g.dtype)
        ws["Ec"] = np.empty((4, 4, n, th, tw, co), g.dtype)
        ws["E"] = np.empty((36, p, co), g.dtype)
        ws["S"] = np.empty((36, c, co), g.dtype)
        ws["dW"] = np.empty((3, 3, c, co), g.dtype)
        ws["AA"] = np.kron(AT43, AT43).T.astype(g.dtype)
        ws["GGt"] = np.kron(G43, G43).T.astype(g.dtype)
    transform_g(g, ws)
    np.matmul(v.transpose(0, 2, 1), ws["E"], out=ws["S"])
    np.matmul(ws["GGt"], ws["S"].reshape(36, -1), out=ws["dW"].reshape(9, -1))
    np.copyto(out, ws["dW"].transpose(3, 2, 0, 1))
    return out


def transform_w(w, ws):
    """ws["U"] (36, C*Co) <- (G x G) of every filter of w (Co, C, 3, 3)."""
    np.matmul(ws["GG"], w.transpose(2, 3, 1, 0).reshape(9, -1), out=ws["U"])


def transform_g(g, ws):
    """ws["E"] (36, P, Co) <- (A x A) of every 4x4 tile of g (N, Ho, Wo, Co), zero rim."""
    n, ho, wo, co = g.shape
    gp = ws["gp"]
    np.copyto(gp[:, :ho, :wo], g)
    th, tw = gp.shape[1] // 4, gp.shape[2] // 4
    np.copyto(ws["Ec"], gp.reshape(n, th, 4, tw, 4, co).transpose(2, 4, 0, 1, 3, 5))
    np.matmul(ws["AA"], ws["Ec"].reshape(16, -1), out=ws["E"].reshape(36, -1))


def f43_grad_input(ws, out):
    """out (N, H, W, C) <- dL/dx of a padding-0 f43_forward from f43_grad_weight's
    E = (A x A) e and the forward's U: dV = E @ U^T per tile point, dX = (B x B) dV, and
    the 6x6 tiles (stride 4) added back where they overlap, columns then rows."""
    e, u = ws["E"], ws["U"]
    _, p, co = e.shape
    n, hp, wp, c = ws["xp"].shape
    th, tw = (hp - 2) // 4, (wp - 2) // 4
    if "dV" not in ws:
        ws["dV"] = np.empty((36, p, c), e.dtype)
        ws["dZ"] = np.empty((6, 6, p * c), e.dtype)
        ws["dX"] = np.empty((6, 6, n, th, tw, c), e.dtype)
        ws["Q"] = np.empty((6, n, th, 4 * tw + 4, c), e.dtype)
        ws["dxp"] = np.empty((n, 4 * th + 4, 4 * tw + 4, c), e.dtype)
        ws["B"] = ws["BT"].T.copy()
    np.matmul(e, u.reshape(36, c, co).transpose(0, 2, 1), out=ws["dV"])
    np.matmul(ws["B"], ws["dV"].reshape(6, -1), out=ws["dZ"].reshape(6, -1))   # rows
    np.matmul(ws["B"], ws["dZ"], out=ws["dX"].reshape(6, 6, -1))               # columns
    d, q, dxp = ws["dX"], ws["Q"], ws["dxp"]
    # columns: tile column j of tile s lands at 4s + j (j = 4, 5 on the next tile's 0, 1)
    np.copyto(q[:, :, :, :4 * tw].reshape(6, n, th, tw, 4, c), d[:, :4].transpose(0, 2, 3, 4, 1, 5))
    q[:, :, :, 4 * tw:] = 0
    spill = q[:, :, :, 4:4 * tw + 4].reshape(6, n, th, tw, 4, c)[:, :, :, :, :2]
    spill += d[:, 4:6].transpose(0, 2, 3, 4, 1, 5)
    # rows, the same way
    np.copyto(dxp[:, :4 * th].reshape(n, th, 4, 4 * tw + 4, c), q[:4].transpose(1, 2, 0, 3, 4))
    dxp[:, 4 * th:] = 0
    spill = dxp[:, 4:4 * th + 4].reshape(n, th, 4, 4 * tw + 4, c)[:, :, :2]
    spill += q[4:6].transpose(1, 2, 0, 3, 4)
    np.copyto(out, dxp[:, :out.shape[1], :out.shape[2]])
    return out


def best(f, rounds):
    ts = []
    for _ in range(rounds):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return min(ts) * 1e3, float(np.median(ts)) * 1e3


def errors(got, ref):
    err = np.abs(got - ref)
    return f"max abs {err.max():.1e}, max abs / max |ref| {err.max() / np.abs(ref).max():.1e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--shape", default="64,32,13,13,64", help="N,C,H,W,Co")
    a = ap.parse_args()
    n, c, h, wd, co = map(int, a.shape.split(","))
    ho, wo = h - 2, wd - 2
    rng = np.random.default_rng(0)
    xc = rng.standard_normal((n, h, wd, c)).astype(np.float32)       # channels-last storage
    x = xc.transpose(0, 3, 1, 2)                                      # its NCHW view
    w = (rng.standard_normal((co, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    gl = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
    win = np.lib.stride_tricks.sliding_window_view(xc.astype(np.float64), (3, 3), axis=(1, 2))
    ref = np.einsum("nhwcij,ocij->nhwo", win, w.astype(np.float64))
    ref_dw = np.einsum("nhwcij,nhwo->ocij", win, gl.astype(np.float64))
    ref_dx = np.zeros(xc.shape)
    for i in range(3):
        for j in range(3):
            ref_dx[:, i:i + ho, j:j + wo] += gl.astype(np.float64) @ w[:, :, i, j].astype(float)

    out, dw, ws_im = np.empty((n, co, ho, wo), np.float32), np.empty(w.shape, np.float32), {}

    def im2col_fwd():
        conv.conv2d(x, w, stride=(1, 1), padding=(0, 0), out=out, ws=ws_im, last=True,
                    nchw=False)

    def im2col_dw():
        conv.conv2d_grad_weight(x, gl.transpose(0, 3, 1, 2), w, stride=(1, 1), padding=(0, 0),
                                out=dw, ws=ws_im, cols_ready=True, last=True, gT=gl)

    dx, ws_dx = np.empty(x.shape, np.float32), {}

    def im2col_dx():                # 9 offset GEMMs + col2im: the compiled input gradient
        conv.conv2d_grad_input(gl.transpose(0, 3, 1, 2), w, x, stride=(1, 1), padding=(0, 0),
                               out=dx, ws=ws_dx, gT=gl)

    im2col_fwd(), im2col_dw(), im2col_dx()
    print(f"im2col   forward {errors(conv.as_last(out), ref)}; dw {errors(dw, ref_dw)}; "
          f"dx {errors(dx.transpose(0, 2, 3, 1), ref_dx)}")
    cases = {"im2col fwd + dw": lambda: (im2col_fwd(), im2col_dw()),
             "im2col fwd": im2col_fwd, "im2col dw (cols ready)": im2col_dw,
             "im2col fwd + dw + dx": lambda: (im2col_fwd(), im2col_dw(), im2col_dx()),
             "im2col dx": im2col_dx}
    for name, fwd, grad in (("F(2,3)", winograd_forward, winograd_grad_weight),
                            ("F(4,3)", f43_forward, f43_grad_weight)):
        o, d, ws = np.empty((n, ho, wo, co), np.float32), np.empty(w.shape, np.float32), {}
        fw = (lambda fwd=fwd, o=o, ws=ws: fwd(xc, w, o, ws))
        gw = (lambda grad=grad, d=d, ws=ws: grad(gl, d, ws))
        fw(), gw()
        print(f"{name}   forward {errors(o, ref)}; dw {errors(d, ref_dw)}")
        cases[f"{name} fwd + dw"] = lambda fw=fw, gw=gw: (fw(), gw())
        cases[f"{name} fwd"] = fw
        cases[f"{name} dw (V ready)"] = gw
        if name == "F(4,3)":
            dxw = np.empty(xc.shape, np.float32)
            f43_grad_input(ws, dxw)
            print(f"{name}   dx {errors(dxw, ref_dx)}")
            cases[f"{name} dx (E ready)"] = lambda ws=ws, dxw=dxw: f43_grad_input(ws, dxw)
            cases[f"{name} dx alone"] = \
                lambda ws=ws, dxw=dxw: (transform_g(gl, ws), transform_w(w, ws),
                                        f43_grad_input(ws, dxw))
            cases[f"{name} fwd + dw + dx"] = \
                lambda fw=fw, gw=gw, ws=ws, dxw=dxw: (fw(), gw(), f43_grad_input(ws, dxw))
        k = 16 if name == "F(2,3)" else 36              # points of a transformed tile
        v, m, e, s, u = (ws[key].reshape(k, -1, dim) for key, dim in
                         (("V", c), ("M", co), ("E", co), ("S", co), ("U", co)))
        cases[f"  {name} fwd GEMMs"] = \
            lambda v=v, u=u, m=m: np.matmul(v, u, out=m)
        cases[f"  {name} dw GEMMs"] = \
            lambda v=v, e=e, s=s: np.matmul(v.transpose(0, 2, 1), e, out=s)
    cols, wr, res = ws_im["matrix"], ws_im["wr"].reshape(-1, co), ws_im["nhwc"].reshape(-1, co)
    cases["  im2col fwd GEMM"] = lambda: np.matmul(cols, wr, out=res)
    cases["  im2col dw GEMM"] = lambda: np.matmul(cols.T, gl.reshape(-1, co),
                                                  out=ws_im["dwT"].reshape(-1, co))
    for r in range(2):              # alternating rounds: the machine is shared
        print(f"round {r + 1} (best / median of {a.rounds}, ms)")
        for name in sorted(cases, key=lambda k: (k.startswith(" "), "+ dx" not in k,
                                                 "+ dw" not in k, "dw" in k, "dx" in k)):
            lo, med = best(cases[name], a.rounds)
            print(f"  {name:24s} {lo:6.2f} / {med:6.2f}")


if __name__ == "__main__":
    main()
