"""Numerical stabilization: naive log-of-probability forms become stable ops, in forward AND
gradient graphs.

Forward rules replace log(softmax), log(sigmoid), log(1 - sigmoid) and the hand-written
softmax cross-entropy by stable ops. The gradient graph that autodiff built from the naive
forward still divides by the (underflowing) probability: log's VJP is g / p, and the VJPs of
softmax / sigmoid multiply by p again. The rules `cancel` and `distribute` cancel a factor that
is positive in exact arithmetic (exp, sigmoid, softmax, softplus, 1 - sigmoid) from numerator
and denominator of a product, which is exact algebra and removes every 0/0 and inf*0 of those
gradients. `stable_grad` is the other route: stabilize the cost, then differentiate it.
The hand-written binary cross-entropy, once its logs are softplus forms, is merged into
softplus(z) - y z, and its (cancelled) gradient into sigmoid(z) - y, by two more rules.
"""
from __future__ import annotations

from typing import Sequence

from graphc.autodiff import grad
from graphc.ir import OPS, Graph, Node, apply, constant
from graphc.passes.patterns import fit, is_value, positive
from graphc.passes.rewrite import Rule, rewrite
from graphc.passes.algebra import FOLD, SIMPLIFY

MAX_FACTORS = 12      # products flattened deeper than this are left alone (linear time)


def factors(n: Node, out: tuple[list, list, list], depth: int = 0) -> None:
    """Flatten n as sign * prod(num) / prod(den) through float mul, div and neg (an integer
    product is one factor: regrouped, it would wrap where it did not, or the reverse)."""
    sign, num, den = out
    if depth < MAX_FACTORS and len(num) + len(den) < MAX_FACTORS and n.dtype.kind == "f":
        if n.op == "mul":
            factors(n.inputs[0], out, depth + 1)
            factors(n.inputs[1], out, depth + 1)
            return
        if n.op == "div":
            factors(n.inputs[0], out, depth + 1)
            factors(n.inputs[1], (sign, den, num), depth + 1)
            return
        if n.op == "neg":
            sign[0] = -sign[0]
            factors(n.inputs[0], out, depth + 1)
            return
    num.append(n)


def product(xs: list[Node], n: Node) -> Node:
    """The factors multiplied in n's float dtype: an integer factor met only floats in n
    (`a * (g / p) * p` of int8 a, g: a * g in int8 wrapped, 16 for 10000)."""
    if not xs:
        return constant(1.0, dtype=n.dtype)
    xs = [x if x.dtype.kind == "f" else apply("cast", x, dtype=n.dtype.name) for x in xs]
    total = xs[0]
    for x in xs[1:]:
        total = total * x
    return total


PRODUCTS = ("mul", "div", "neg")     # the ops `factors` flattens


def cancel(n: Node, *_: Node) -> Node | None:
    """p * (g / p) -> g for p > 0 in exact arithmetic (the gradients of log(p) chains)."""
    if n.op == "mul" and n.inputs[0].op not in PRODUCTS and n.inputs[1].op not in PRODUCTS:
        return None                      # a * b: no divisor to cancel
    sign, num, den = [1], [], []
    factors(n, (sign, num, den))
    hit = False
    for d in list(den):
        if positive(d) and any(x is d for x in num):
            num.pop(next(i for i, x in enumerate(num) if x is d))
            den.remove(d)
            hit = True
    if not hit:
        return None
    out = product(num, n)
    if den:
        out = out / product(den, n)
    return fit(-out if sign[0] < 0 else out, n)


def has_divisor(t: Node, p: Node) -> bool:
    if t.op not in PRODUCTS:
        return False                     # t alone: no divisor
    sign, num, den = [1], [], []
    factors(t, (sign, num, den))
    return any(d is p for d in den)


def distribute(n: Node, a: Node, b: Node) -> Node | None:
    """p * (g / p - s) -> p * (g / p) - p * s, so that the first term cancels."""
    for p, t in ((a, b), (b, a)):
        if t.op in ("add", "sub") and (t.inputs[0].op in PRODUCTS or t.inputs[1].op in PRODUCTS) \
                and positive(p) and any(has_divisor(x, p) for x in t.inputs):
            return fit(apply(t.op, p * t.inputs[0], p * t.inputs[1]), n)
    return None


def cross_entropy(n: Node, x: Node) -> Node | None:
    """sum(y * log_softmax(z), last axis) -> -softmax_cross_entropy(z, y), y float.

    A one-hot y stays the float probabilities it is (not its integer labels): a label outside
    [0, depth) is a zero row, which the float form turns into zero loss and zero gradient,
    where the integer form would raise."""
    if x.op != "mul" or n.attrs["keepdims"] or "softmax_cross_entropy" not in OPS:
        return None
    for y, ls in (x.inputs, x.inputs[::-1]):
        z = ls.inputs[0] if ls.op == "log_softmax" else None
        last = (z.ndim - 1,) if z is not None else None
        if z is None or ls.attrs["axis"] != last[0] or n.attrs["axis"] != last \
                or y.shape != z.shape or y.dtype.kind != "f":
            continue
        return fit(-apply("softmax_cross_entropy", z, y), n)
    return None


def softmax_by_hand(n: Node, e: Node, s: Node) -> Node | None:
    """exp(z - c) / sum(exp(z - c), axis, keepdims) -> softmax(z, axis) (c: a shift)."""
    if e.op != "exp" or s.op != "sum" or s.inputs[0] is not e or not s.attrs["keepdims"] \
            or len(s.attrs["axis"]) != 1 or "softmax" not in OPS:
        return None
    z = e.inputs[0]
    m = z.inputs[1] if z.op == "sub" else None
    if m is not None and m.op == "max" and m.inputs[0] is z.inputs[0] \
            and m.attrs["axis"] == s.attrs["axis"] and m.attrs["keepdims"]:
        z = z.inputs[0]                    # the usual max shift: softmax is shift-invariant
    return fit(apply("softmax", z, axis=s.attrs["axis"][0]), n)


def log_one_minus(n: Node, x: Node) -> Node | None:
    if x.op == "sub" and is_value(x.inputs[0], 1) and x.inputs[1].op == "sigmoid":
        return fit(-apply("softplus", x.inputs[1].inputs[0]), n)
    return None


def softplus_by_hand(n: Node, x: Node) -> Node | None:
    if x.op != "add":
        return None
    for one, e in (x.inputs, x.inputs[::-1]):
        if is_value(one, 1) and e.op == "exp":
            return fit(apply("softplus", e.inputs[0]), n)
    return None


def log1p_by_hand(n: Node, x: Node) -> Node | None:
    """log(1 + y) -> log1p(y): 1 + y rounds a small y away (log(1 + exp z) is softplus)."""
    if x.op != "add":
        return None
    for one, y in (x.inputs, x.inputs[::-1]):
        if is_value(one, 1) and y.op != "exp" and y.dtype == x.dtype:
            return fit(apply("log1p", y), n)
    return None


def expm1_by_hand(n: Node, e: Node, one: Node) -> Node | None:
    """exp(z) - 1 -> expm1(z): exp(z) - 1 cancels every digit of a small z."""
    if e.op == "exp" and is_value(one, 1):
        return fit(apply("expm1", e.inputs[0]), n)
    return None


POSITIVE = ("positive", "sigmoid")   # Rule.present of what needs a `positive` factor
TERMS = ("mul", "neg")     # the ops of an add's terms `signed_products` reads


def signed_products(n: Node) -> list[tuple[int, list[Node]]] | None:
    """The two terms of an add / sub, each as (sign, its factors) when it is a product
    (None also when a term is not a product: the rules below need two factors per term)."""
    if n.inputs[0].op not in TERMS or n.inputs[1].op not in TERMS:
        return None
    out = []
    for k, t in enumerate(n.inputs):
        sign, num, den = [-1 if (n.op == "sub" and k == 1) else 1], [], []
        factors(t, (sign, num, den))
        if den:
            return None
        out.append((sign[0], num))
    return out


def take(xs: list[Node], pred) -> Node | None:
    """Remove and return the first x of xs with pred(x)."""
    for i, x in enumerate(xs):
        if pred(x):
            return xs.pop(i)
    return None


def one_minus(x: Node, y: Node) -> bool:
    return x.op == "sub" and is_value(x.inputs[0], 1) and x.inputs[1] is y


def same_factors(a: list[Node], b: list[Node]) -> bool:
    return sorted(map(id, a)) == sorted(map(id, b))


def bce_logits(n: Node, *_: Node) -> Node | None:
    """y softplus(-z) + (1 - y) softplus(z) -> softplus(z) - y z (binary cross-entropy from
    logits, the two softplus forms of -log sigmoid and -log(1 - sigmoid) merged)."""
    terms = signed_products(n)
    if terms is None or terms[0][0] != terms[1][0]:
        return None
    for (sign, f1), (_, f2) in (terms, terms[::-1]):
        f1, f2 = list(f1), list(f2)
        neg_sp = take(f1, lambda x: x.op == "softplus" and x.inputs[0].op == "neg")
        z = neg_sp.inputs[0].inputs[0] if neg_sp is not None else None
        if z is None or take(f2, lambda x: x.op == "softplus" and x.inputs[0] is z) is None \
                or len(f1) != 1 or len(f2) != 1 or not one_minus(f2[0], f1[0]):
            continue
        out = apply("softplus", z) - f1[0] * z
        return fit(out if sign > 0 else -out, n)
    return None


def bce_logits_grad(n: Node, *_: Node) -> Node | None:
    """-c y (1 - sigmoid z) + c (1 - y) sigmoid z -> c (sigmoid z - y): the gradient of the
    binary cross-entropy through the cancelled log-sigmoid forms."""
    terms = signed_products(n)
    if terms is None or terms[0][0] == terms[1][0]:
        return None
    for (_, f1), (sign, f2) in (terms, terms[::-1]):
        f1, f2 = list(f1), list(f2)
        comp = take(f1, lambda x: x.op == "sub" and is_value(x.inputs[0], 1)
                    and x.inputs[1].op == "sigmoid")
        sig = comp.inputs[1] if comp is not None else None
        if sig is None or take(f2, lambda x: x is sig) is None:
            continue
        y = take(f1, lambda x: any(one_minus(v, x) for v in f2))
        if y is None or take(f2, lambda x: one_minus(x, y)) is None or not same_factors(f1, f2):
            continue
        out = product(f2, n) * (sig - y) if f2 else sig - y
        return fit(out if sign > 0 else -out, n)
    return None


STABILIZE = [
    # log(1 + exp z) -> softplus(z)
    Rule("softplus_by_hand", "log", softplus_by_hand, needs=("add",)),
    # log(1 + y) -> log1p(y); exp(z) - 1 -> expm1(z)
    Rule("log1p_by_hand", "log", log1p_by_hand, needs=("add",)),
    Rule("expm1_by_hand", "sub", expm1_by_hand, needs=("exp",)),
    # log(softmax z) -> log_softmax z
    Rule("log_softmax", "log",
         lambda n, x: apply("log_softmax", x.inputs[0], **x.attrs) if x.op == "softmax" else None,
         needs=("softmax",)),
    # log(sigmoid z) -> -softplus(-z)
    Rule("log_sigmoid", "log",
         lambda n, x: -apply("softplus", -x.inputs[0]) if x.op == "sigmoid" else None,
         needs=("sigmoid",)),
    # log(1 - sigmoid z) -> -softplus(z)
    Rule("log_one_minus_sigmoid", "log", log_one_minus, needs=("sub",)),
    # sum(y*log_softmax z) -> -sce(z, y)
    Rule("cross_entropy", "sum", cross_entropy, needs=("mul",)),
    # y softplus(-z) + (1-y) softplus(z) -> softplus(z) - y z
    Rule("bce_logits", "add", bce_logits, needs=TERMS, present=("softplus",)),
    Rule("bce_logits_sub", "sub", bce_logits, needs=TERMS, present=("softplus",)),
    # -c y (1 - sigmoid z) + c (1-y) sigmoid z -> c (sigmoid z - y)
    Rule("bce_logits_grad", "add", bce_logits_grad, needs=TERMS, present=("sigmoid",)),
    Rule("bce_logits_grad_sub", "sub", bce_logits_grad, needs=TERMS, present=("sigmoid",)),
    # p * (g / p) -> g, p > 0
    Rule("cancel_mul", "mul", cancel, needs=PRODUCTS, present=POSITIVE),
    # (g * p) / p -> g, p > 0
    Rule("cancel_div", "div", cancel, present=POSITIVE),
    # p*(g/p - s) -> p*(g/p) - p*s
    Rule("distribute", "mul", distribute, needs=("add", "sub"), present=POSITIVE),
]


RECOGNIZE = [
    # exp(z)/sum(exp z) -> softmax(z)
    Rule("softmax_by_hand", "div", softmax_by_hand, needs=("exp",)),
]


def stabilize(graph: Graph) -> Graph:
    """Stable forms of log-probabilities and cross-entropies, and of their gradients.

    Two walks: the first cancels gradient forms while a hand-written softmax is still visible
    as exp / sum (recognizing it as one op would hide the factors that cancel), the second
    recognizes it, so log(softmax) and the cross-entropy rules apply to it too."""
    rules = STABILIZE + SIMPLIFY + FOLD
    return rewrite(rewrite(graph, rules), RECOGNIZE + rules)


def stable_grad(cost: Node, wrt: Sequence[Node] | Node) -> tuple[Node, list[Node] | Node]:
    """(stabilized cost, its gradients): the cost is made stable before it is differentiated,
    so the gradient is derived from log_softmax / softplus / softmax_cross_entropy directly."""
    single = isinstance(wrt, Node)
    wrt = [wrt] if single else list(wrt)
    stable, *targets = stabilize(Graph([cost] + wrt)).outputs   # wrt as rewritten in the cost
    grads = grad(stable, targets)
    return stable, grads[0] if single else grads
