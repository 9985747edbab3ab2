"""einsum: one primitive whose VJP is einsum again (the output's letters and the other
operands' letters contracted into the operand's letters).

The spec is kept in explicit form (`ij,jk->ik`, ellipses spelled out as letters) so that the
shape rule, the gradient and a saved graph never depend on NumPy's implicit-output rules.
"""
from __future__ import annotations

import string

import numpy as np

from graphc.ir import ShapeError, OpDef, apply, register
from graphc.ops.common import promote

__all__ = ["einsum"]


def parse(spec: str, ranks: list[int]) -> tuple[list[str], str]:
    """The operands' letters and the output's letters, ellipses replaced by unused letters."""
    if not isinstance(spec, str):
        raise ShapeError(f"spec must be a string like 'ij,jk->ik', got {spec!r}")
    spec = spec.replace(" ", "")
    lhs, arrow, rhs = spec.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ShapeError(f"spec {spec!r} names {len(terms)} operands, got {len(ranks)}")
    used = set(spec) - set(".,->")
    if not used <= set(string.ascii_letters):
        raise ShapeError(f"spec {spec!r}: operands are named by letters only")
    spare = [c for c in string.ascii_letters if c not in used]
    n_ell = max([r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t],
                default=0)
    ell = "".join(spare[:n_ell])
    out_terms = []
    for t, r in zip(terms, ranks):
        if "..." in t:
            k = r - len(t.replace("...", ""))
            t = t.replace("...", ell[n_ell - k:] if k else "")
        if len(t) != r:
            raise ShapeError(f"spec {spec!r}: operand {t!r} names {len(t)} axes, its rank is {r}")
        if len(set(t)) != len(t):
            raise ShapeError(f"spec {spec!r}: a letter repeats inside operand {t!r} (diagonals "
                             "and traces are not supported; multiply by gc.constant(np.eye(n)) "
                             "and sum instead)")
        out_terms.append(t)
    if arrow:
        out = rhs.replace("...", ell)
    else:        # NumPy's implicit output: letters seen once, in alphabetical order
        letters = "".join(out_terms)
        out = ell + "".join(sorted(c for c in set(letters) - set(ell) if letters.count(c) == 1))
    if len(set(out)) != len(out) or not set(out) <= set("".join(out_terms)):
        raise ShapeError(f"spec {spec!r}: output letters {out!r} must be distinct letters of "
                         "the operands")
    return out_terms, out


def einsum_infer(*xs, spec):
    if not xs:
        raise ShapeError("needs at least one operand")
    terms, out = parse(spec, [x.ndim for x in xs])
    sizes: dict[str, object] = {}
    for t, x in zip(terms, xs):
        for c, d in zip(t, x.shape):
            old = sizes.get(c)
            if isinstance(old, int) and isinstance(d, int) and old != d:
                raise ShapeError(f"letter {c!r} has size {old} in one operand and {d} in "
                                 "another")
            if c not in sizes or not isinstance(old, int):
                sizes[c] = d
    explicit = ",".join(terms) + "->" + out
    return tuple(sizes[c] for c in out), promote(*xs), {"spec": explicit}


def einsum_vjp(g, out, *xs, spec):
    """d/dx_i: einsum of g and the other operands into x_i's letters; letters x_i alone has
    (summed in the forward pass) come back by broadcasting."""
    lhs, res = spec.split("->")
    terms = lhs.split(",")
    grads = []
    for i, (t, x) in enumerate(zip(terms, xs)):
        if x.dtype.kind != "f":
            grads.append(None)
            continue
        others = [(terms[j], xs[j]) for j in range(len(xs)) if j != i]
        seen = set(res).union(*[set(o) for o, _ in others])
        kept = "".join(c for c in t if c in seen)
        sub = ",".join([res] + [o for o, _ in others]) + "->" + kept
        gx = apply("einsum", g, *[n for _, n in others], spec=sub)
        if kept != t:                # letters only x_i had: size 1, then broadcast to x
            gx = apply("reshape", gx, x, keepdims_of=tuple(
                k for k, c in enumerate(t) if c not in kept))
            gx = apply("broadcast_to", gx, x)
        grads.append(gx)
    return tuple(grads)


def einsum_kernel(*xs, spec):
    """optimize=True lets NumPy contract through BLAS (10x faster than its plain loops)."""
    return np.asarray(np.einsum(spec, *xs, optimize=len(xs) > 1))


register(OpDef("einsum", einsum_infer, einsum_kernel, einsum_vjp))


def einsum(spec: str, *xs):
    """Einstein summation as np.einsum (`'bhtd,bhsd->bhts'`, `...` for leading axes);
    a letter may not repeat inside one operand (no diagonals or traces)."""
    return apply("einsum", *xs, spec=spec)
