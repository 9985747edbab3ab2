"""Which way round a GEMM is asked, at 1 and 2 BLAS threads (runtime/layout.py's TRANSPOSED).

NumPy asks BLAS for `c = a @ b` row-major, which OpenBLAS computes as the column-major
c.T = b.T @ a.T: its "m" is c's columns. Into an F-ordered c (c.T C-contiguous) NumPy asks for
c.T = b.T @ a.T instead, OpenBLAS's "m" being c's rows. At one thread both are the same
kernel; at two, OpenBLAS splits the work by m or n and the two ways differ.

Per shape: C = the result C-ordered (as asked now), F = the result stored transposed (an
F-ordered buffer, what the layout rule makes), for the products of a dense MLP layer:
    fwd   x (rows, K) @ W (K, N)              (x a new array every call, as a feed is)
    bwd   g (rows, N) @ W.T                   (g in the same order as the result)
    upd   W -= x.T @ g through blas.gemm      (g C- or F-ordered: the update reads it)
Interleaved rounds (C and F alternating first): the least of the per-round best-of-3 times
in microseconds, and the median of the per-round ratios F / C.

    python3 bench/gemm_forms.py --threads 2 [--rounds 15] [--rows 16,32,64,...]
(sets OPENBLAS_NUM_THREADS itself: run once per thread count; a loaded host: ratios only.)
"""
from __future__ import annotations

import argparse
import os
import sys
import timeit

SHAPES = ((784, 128), (128, 64), (64, 10), (784, 10), (512, 1024))   # (K, N) of the layers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--rows", default="16,32,64,128,256,512,1024")
    p.add_argument("--shapes", default=None, help="K:N,K:N (default: the bench layers)")
    p.add_argument("--kinds", default="fwd,bwd,upd")
    args = p.parse_args()
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from graphc.runtime import blas

    shapes = SHAPES if args.shapes is None else \
        [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
    kinds = args.kinds.split(",")
    print(f"BLAS threads {blas.threads()} (asked {args.threads}); rounds {args.rounds}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'kind':5} {'rows':>5} {'K':>5} {'N':>5} {'C us':>8} {'F us':>8} {'F/C':>6}")
    rng = np.random.default_rng(0)
    for k, n in shapes:
        for m in [int(r) for r in args.rows.split(",")]:
            xs = [rng.standard_normal((m, k), dtype=np.float32) for _ in range(4)]
            w = rng.standard_normal((k, n), dtype=np.float32)
            gc_ = rng.standard_normal((m, n), dtype=np.float32)
            gf = np.asfortranarray(gc_)
            oc, of = np.empty((m, n), np.float32), np.empty((m, n), np.float32, order="F")
            bc, bf = np.empty((m, k), np.float32), np.empty((m, k), np.float32, order="F")
            i = [0]

            def nxt():
                i[0] += 1
                return xs[i[0] % 4]
            pc, pf = blas.Prepared(), blas.Prepared()
            wu = w.copy()
            cases = {}
            if "fwd" in kinds:
                cases["fwd"] = (lambda: np.matmul(nxt(), w, out=oc),
                                lambda: np.matmul(nxt(), w, out=of))
            if "bwd" in kinds:
                cases["bwd"] = (lambda: np.matmul(gc_, w.T, out=bc),
                                lambda: np.matmul(gf, w.T, out=bf))
            if "upd" in kinds:
                cases["upd"] = (lambda: blas.gemm(wu, nxt(), gc_, True, False, -1e-6, 1.0, pc),
                                lambda: blas.gemm(wu, nxt(), gf, True, False, -1e-6, 1.0, pf))
            number = min(50, max(2, int(1e5 / max(1, m * n * k // 1000))))
            for kind, (fc, ff) in cases.items():
                tc, tf = [], []
                for r in range(args.rounds):      # the order alternates within the round
                    for fn, t in ((fc, tc), (ff, tf))[::1 if r % 2 else -1]:
                        t.append(min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6)
                ratios = sorted(f / c for c, f in zip(tc, tf))
                print(f"{kind:5} {m:5} {k:5} {n:5} {min(tc):8.1f} {min(tf):8.1f} "
                      f"{ratios[len(ratios) // 2]:6.2f}", flush=True)

if __name__ == "__main__":
    main()
