"""Cleanup passes: constant folding, CSE, dead code, and algebraic simplification rules.

Folding policy: a constant subgraph is folded when its result is no larger than its largest
input (or tiny): folding `x * 2` of constants saves work, but folding `broadcast_to(0, (784,
128))` would only turn a scalar into a 400 KB array stored in the graph and printed listings.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import OPS, Graph, Node, apply, constant
from graphc.passes.patterns import CONSTANT, LEAF_RANK, const_value, fit, is_value, positive, \
    static, zeros
from graphc.passes.rewrite import Rule, rewrite

FOLD_TINY = 16          # results up to this many elements are always folded


def fold(n: Node, *xs: Node) -> Node | None:
    """Evaluate an op whose inputs are all constants with its kernel."""
    for x in xs:
        if x.op != "constant":
            return None
    if not xs or OPS[n.op].random:
        return None
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(OPS[n.op].kernel(*[x.data for x in xs], **n.attrs))
    except Exception:       # e.g. a bad label: leave it to fail at run time, with its line
        return None
    if out.size > max(FOLD_TINY, *(x.data.size for x in xs)):
        return None
    return constant(np.array(out, dtype=n.dtype))


def fold_size(n: Node, x: Node) -> Node | None:
    dims = [x.shape[a] for a in (n.attrs["axis"] or range(x.ndim))]
    return constant(np.asarray(np.prod(dims), n.dtype)) if static(dims) else None


FOLD = [
    # op(constants) -> constant
    Rule("fold", "*", fold, needs=CONSTANT),
    # size(x) with static dims -> constant
    Rule("fold_size", "size", fold_size),
]


def commute(n: Node, a: Node, b: Node) -> Node | None:
    ra, rb = LEAF_RANK.get(a.op, 0), LEAF_RANK.get(b.op, 0)     # order_key(b) < order_key(a)
    return apply(n.op, b, a) if rb < ra or rb == ra and b.id < a.id else None


def compose_transpose(n: Node, x: Node) -> Node | None:
    if x.op != "transpose":
        return None
    axes = tuple(x.attrs["axes"][a] for a in n.attrs["axes"])
    inner = x.inputs[0]
    return inner if axes == tuple(range(inner.ndim)) else apply("transpose", inner, axes=axes)


def same_size(a: Node, b: Node) -> bool:
    """a and b certainly hold the same number of elements (one unknown dim at most)."""
    return a.shape == b.shape and sum(not isinstance(d, int) for d in a.shape) <= 1


def sum_unit_axes(n: Node, x: Node) -> Node | None:
    """Summing over axes of size 1 only drops them."""
    axes = n.attrs["axis"]
    if not all(x.shape[a] == 1 for a in axes) or n.dtype.kind == "f" and x.dtype.kind == "f":
        return None                            # NumPy's float sum of a -0.0 alone is 0.0
    if n.attrs["keepdims"]:
        return fit(x, n)                       # a sum of bools counts: int64
    return fit(apply("reshape", x, shape=n.shape), n) if static(n.shape) else None


def sum_broadcast(n: Node, x: Node) -> Node | None:
    """Sum of a broadcast scalar is the scalar times the count (static dims only)."""
    if x.op != "broadcast_to" or x.inputs[0].shape not in ((), (1,) * x.ndim):
        return None
    dims = [x.shape[a] for a in n.attrs["axis"]]
    if not static(dims):
        return None
    with np.errstate(over="ignore"):
        count = np.asarray(np.prod(dims), n.dtype)
    if n.dtype.kind == "f" and not np.isfinite(count):
        return None                     # more than 65504 in float16: the count is inf
    y = apply("reshape", x.inputs[0], shape=()) if x.inputs[0].shape else x.inputs[0]
    return fit(y * constant(count), n)


def where_chain(n: Node, c: Node, a: Node, b: Node) -> Node | None:
    """The inner where's zero stands for the outer's: of one sign (a -0.0 is not 0.0)."""
    if a.op == "where" and a.inputs[0] is c and is_value(b, 0) and is_value(a.inputs[2], 0) \
            and np.signbit(const_value(b)).any() == np.signbit(const_value(a.inputs[2])).any():
        return fit(a, n)
    return None


def pool_relu(n: Node, x: Node) -> Node | None:
    """max_pool2d(relu x) -> relu(max_pool2d x): both monotone, relu on the smaller map."""
    return apply("relu", apply("max_pool2d", x.inputs[0], **n.attrs)) if x.op == "relu" \
        else None


def pool_relu_grad(n: Node, c: Node, a: Node, b: Node) -> Node | None:
    """where(x > 0, max_pool2d_grad(g, relu x), 0) -> max_pool2d_grad(where(pool x > 0, g, 0),
    x): the gradient of relu(max_pool2d x), exactly (a window whose max is <= 0 gets 0 in
    both; otherwise relu x and x have their first maximum at the same place)."""
    if a.op != "max_pool2d_grad" or a.inputs[1].op != "relu" or not is_value(b, 0) \
            or c.op != "greater" or not is_value(c.inputs[1], 0):
        return None
    g, r = a.inputs
    x = r.inputs[0]
    if c.inputs[0] is not x and c.inputs[0] is not r:
        return None
    top = apply("max_pool2d", x, **a.attrs)
    masked = apply("where", apply("greater", top, c.inputs[1]), g, b)
    return fit(apply("max_pool2d_grad", masked, x, **a.attrs), n)


def window_constant(b: Node, x: Node) -> bool:
    """b, added to the NCHW map x, is the same over each pooling window (size 1 along H, W)."""
    return x.ndim == 4 and (b.ndim == 0 or 2 <= b.ndim <= 4 and b.shape[-2:] == (1, 1))


def split_window_constant(s: Node) -> tuple[Node, Node] | None:
    """add(x, b) with b constant over H and W -> (x, b)."""
    if s.op != "add":
        return None
    for x, b in (s.inputs, s.inputs[::-1]):
        if x.shape == s.shape and window_constant(b, x):
            return x, b
    return None


def pool_bias(n: Node, s: Node) -> Node | None:
    """max_pool2d(x + b) -> max_pool2d(x) + b for b constant over each window (rounding is
    monotone, so the values are exactly equal): the add runs on the pooled map."""
    parts = split_window_constant(s)
    return fit(apply("max_pool2d", parts[0], **n.attrs) + parts[1], n) if parts else None


def pool_grad_bias(n: Node, g: Node, s: Node) -> Node | None:
    """max_pool2d_grad(g, x + b) -> max_pool2d_grad(g, x): the gradient of the rewritten
    pool_bias forward (the winners of x, b constant over each window). Not exact where x + b
    rounds two values of a window to one maximum (its first then wins, not x's larger one):
    in float16 a few hundred windows of a CNN step's 346,112 (x ~ N(0, 1), b ~ N(0, .25)),
    so not there; in float32 none in such a step (a tie within one ulp of the sum)."""
    if n.dtype.itemsize < 4:
        return None
    parts = split_window_constant(s)
    return fit(apply("max_pool2d_grad", g, parts[0], **n.attrs), n) if parts else None


def from_pool(v: Node, x: Node, attrs: dict) -> bool:
    """v is max_pool2d(x) (these attrs) or a sum or ReLU of it: NaN where that window's is."""
    while v.op in ("add", "relu"):
        v = next((i for i in v.inputs if i.shape == v.shape), v.inputs[0])
    return v.op == "max_pool2d" and v.inputs[0] is x and v.attrs == attrs


def sum_pool_grad(n: Node, x: Node) -> Node | None:
    """sum(max_pool2d_grad(g, x)) over H and W (and more) -> sum(g): every g lands once,
    but a window whose maximum is NaN routes its g nowhere (the kernels and eval): g as it is
    when already 0 there (where(pool(x) (+ b, relu) > c, ., 0), the CNN's masked gradient),
    else where(top == top, g, 0), top = pool(x) (the forward's own, merged by CSE)."""
    axes = n.attrs["axis"]
    if x.op != "max_pool2d_grad" or 2 not in axes or 3 not in axes:
        return None
    g, src = x.inputs
    if g.op != "where" or not is_value(g.inputs[2], 0) or g.inputs[0].op != "greater" \
            or not from_pool(g.inputs[0].inputs[0], src, x.attrs):
        top = apply("max_pool2d", src, **x.attrs)
        # a 0-d zero: zeros(g) is None for a g of unknown dims that no input of g has
        g = apply("where", apply("equal", top, top), g, constant(np.zeros((), g.dtype)))
    return fit(apply("sum", g, axis=axes, keepdims=n.attrs["keepdims"]), n)


def where_constant(n: Node, c: Node, a: Node, b: Node) -> Node | None:
    arr = const_value(c)
    if arr is None or arr.size == 0 or not (arr.all() or not arr.any()):
        return None
    return fit(a if arr.all() else b, n)


def shape_source(n: Node, x: Node, *rest: Node) -> Node | None:
    """A shape-only input (`like`) read from the cheapest node with that shape: walk down
    elementwise ops to an input of the same shape, so the value itself need not be computed."""
    k = 0 if n.op == "size" else 1
    if len(n.inputs) <= k:
        return None
    like = src = n.inputs[k]
    while src.inputs and OPS[src.op].elementwise:   # the whole way down at once: one step
        same = next((i for i in src.inputs if i.shape == src.shape), None)  # per fire made
        if same is None:                            # a node per step (3 per chain block)
            break
        src = same
    return None if src is like else n.replace(n.inputs[:k] + (src,) + n.inputs[k + 1:])


def exact_neg(x: Node, n: Node) -> bool:
    """A negation in x's dtype is one in n's: not for an integer widened after it (-1 in
    uint8 is 255, so int8 a - (-b) of uint8 b is not a + b in int16)."""
    return x.dtype == n.dtype or x.dtype.kind == "f"


def signed_zero(n: Node, kept: Node, zero: Node, negative: bool) -> bool:
    """Dropping `zero` keeps every value of `kept`: in integers, or when each zero has the
    given sign. x + -0.0 and x - 0.0 are x for every float x; x + 0.0 and x - -0.0 turn a -0.0
    into 0.0 (then 1 / x is inf where x's is -inf), and 0.0 - x is 0.0 where -x is -0.0."""
    if n.dtype.kind in "biu" or kept.dtype.kind in "biu":
        return True
    arr = const_value(zero)
    return arr is not None and bool(np.all(np.signbit(arr) == negative))


def exact_zero(n: Node) -> bool:
    """x * 0 and x - x are 0 in integers only: a float x may be inf or NaN (NaN then, as
    eval computes) or negative (-0.0); which the graph cannot know of a computed value."""
    return n.dtype.kind in "biu"


SIMPLIFY = [
    # x+0 -> x (-0.0 in floats)
    Rule("add_zero", "add", lambda n, a, b: fit(a, n) if is_value(b, 0)
         and signed_zero(n, a, b, True) else None, needs=CONSTANT),
    # 0+x -> x (-0.0 in floats)
    Rule("zero_add", "add", lambda n, a, b: fit(b, n) if is_value(a, 0)
         and signed_zero(n, b, a, True) else None, needs=CONSTANT),
    # x-0 -> x (+0.0 in floats)
    Rule("sub_zero", "sub", lambda n, a, b: fit(a, n) if is_value(b, 0)
         and signed_zero(n, a, b, False) else None, needs=CONSTANT),
    # 0-x -> -x (-0.0 in floats)
    Rule("zero_sub", "sub",
         lambda n, a, b: fit(-b, n) if is_value(a, 0) and exact_neg(b, n)
         and signed_zero(n, b, a, True) else None, needs=CONSTANT),
    # x-x -> zeros
    Rule("sub_self", "sub", lambda n, a, b: zeros(n) if a is b and exact_zero(n) else None),
    # x*1 -> x
    Rule("mul_one", "mul", lambda n, a, b: fit(a, n) if is_value(b, 1) else None, needs=CONSTANT),
    # 1*x -> x
    Rule("one_mul", "mul", lambda n, a, b: fit(b, n) if is_value(a, 1) else None, needs=CONSTANT),
    # x*0 -> zeros
    Rule("mul_zero", "mul",
         lambda n, a, b: zeros(n) if exact_zero(n) and (is_value(a, 0) or is_value(b, 0))
         else None, needs=CONSTANT),
    # x*-1 -> -x
    Rule("mul_minus_one", "mul",
         lambda n, a, b: fit(-a, n) if is_value(b, -1) and exact_neg(a, n) else None,
         needs=CONSTANT),
    # x/1 -> x
    Rule("div_one", "div", lambda n, a, b: fit(a, n) if is_value(b, 1) else None, needs=CONSTANT),
    # --x -> x
    Rule("neg_neg", "neg", lambda n, x: x.inputs[0] if x.op == "neg" else None, needs=("neg",)),
    # -(a-b) -> b-a (integers: -(a - a) is -0.0)
    Rule("neg_sub", "neg",
         lambda n, x: x.inputs[1] - x.inputs[0] if x.op == "sub" and exact_zero(n) else None,
         needs=("sub",)),
    # a+-b -> a-b
    Rule("add_neg", "add",
         lambda n, a, b: a - b.inputs[0] if b.op == "neg" and exact_neg(b, n) else None,
         needs=("neg",)),
    # -a+b -> b-a
    Rule("neg_add", "add",
         lambda n, a, b: b - a.inputs[0] if a.op == "neg" and exact_neg(a, n) else None,
         needs=("neg",)),
    # a--b -> a+b
    Rule("sub_neg", "sub",
         lambda n, a, b: a + b.inputs[0] if b.op == "neg" and exact_neg(b, n) else None,
         needs=("neg",)),
    # -a*-b -> a*b
    Rule("mul_neg_neg", "mul",
         lambda n, a, b: a.inputs[0] * b.inputs[0] if a.op == b.op == "neg"
         and exact_neg(a, n) and exact_neg(b, n) else None, needs=("neg",)),
    # log(exp x) -> x
    Rule("log_exp", "log", lambda n, x: x.inputs[0] if x.op == "exp" else None, needs=("exp",)),
    # exp(log x) -> x, x > 0
    Rule("exp_log", "exp",
         lambda n, x: x.inputs[0] if x.op == "log" and positive(x.inputs[0]) else None,
         needs=("log",)),
    # T(T(x)) -> T(x) or x
    Rule("transpose_transpose", "transpose", compose_transpose, needs=("transpose",)),
    # T(x, identity) -> x
    Rule("transpose_identity", "transpose",
         lambda n, x: x if n.attrs["axes"] == tuple(range(x.ndim)) else None),
    # reshape(reshape(x)) -> reshape(x)
    Rule("reshape_reshape", "reshape",
         lambda n, x, *like: n.replace((x.inputs[0],) + like) if x.op == "reshape" else None,
         needs=("reshape",)),
    # reshape(x) to x's shape -> x
    Rule("reshape_same", "reshape",
         lambda n, x, *like: x if same_size(x, n) else None),
    # broadcast_to(x) to x's shape -> x
    Rule("broadcast_same", "broadcast_to",
         lambda n, x, *like: x if x.shape == n.shape else None),
    # bcast(reshape(scalar, ones)) -> bcast(scalar)
    Rule("broadcast_scalar", "broadcast_to",
         lambda n, x, *like: n.replace((x.inputs[0],) + like) if x.op == "reshape"
         and x.inputs[0].shape == () and all(d == 1 for d in x.shape) else None,
         needs=("reshape",)),
    # bcast(bcast(x)) -> bcast(x)
    Rule("broadcast_broadcast", "broadcast_to",
         lambda n, x, *like: n.replace((x.inputs[0],) + like) if x.op == "broadcast_to" else None,
         needs=("broadcast_to",)),
    # sum(x, ()) -> x (as int64 when x is bool)
    Rule("sum_no_axes", "sum", lambda n, x: fit(x, n) if not n.attrs["axis"] else None),
    # sum over 1-sized axes -> reshape
    Rule("sum_unit_axes", "sum", sum_unit_axes),
    # sum(bcast(s)) -> s * count
    Rule("sum_broadcast", "sum", sum_broadcast, needs=("broadcast_to",)),
    # cast(x, x.dtype) -> x
    Rule("cast_same", "cast", lambda n, x: x if x.dtype == n.dtype else None),
    # where(c,x,x) -> x
    Rule("where_same", "where", lambda n, c, a, b: fit(a, n) if a is b else None),
    # where(c, where(c,g,0), 0) -> where(c,g,0)
    Rule("where_where", "where", where_chain, needs=("where",)),
    # where(x > 0, pool_grad(g, relu x), 0) -> pool_grad(where(pool x > 0, g, 0), x)
    Rule("pool_relu_grad", "where", pool_relu_grad, needs=("max_pool2d_grad",)),
    # max_pool2d(x + b) -> max_pool2d(x) + b, b constant over H, W
    Rule("pool_bias", "max_pool2d", pool_bias, needs=("add",)),
    # max_pool2d_grad(g, x + b) -> max_pool2d_grad(g, x), b constant over H, W
    Rule("pool_grad_bias", "max_pool2d_grad", pool_grad_bias, needs=("add",)),
    # sum(max_pool2d_grad(g, x), H and W) -> sum(g)
    Rule("sum_pool_grad", "sum", sum_pool_grad, needs=("max_pool2d_grad",)),
    # max_pool2d(relu x) -> relu(max_pool2d x)
    Rule("pool_relu", "max_pool2d", pool_relu, needs=("relu",)),
    # where(True, a, b) -> a
    Rule("where_constant", "where", where_constant, needs=CONSTANT),
    # reshape(x, like) -> reshape(x, shape)
    Rule("reshape_static", "reshape",
         lambda n, x, *like: apply("reshape", x, shape=n.shape) if like and static(n.shape)
         else None),
    # bcast(x, like) -> bcast(x, shape)
    Rule("broadcast_static", "broadcast_to",
         lambda n, x, *like: apply("broadcast_to", x, shape=n.shape) if like and static(n.shape)
         else None),
    # reshape(g, a*b) -> reshape(g, a)
    Rule("like_reshape", "reshape", shape_source),
    # bcast(g, a*b) -> bcast(g, a)
    Rule("like_broadcast", "broadcast_to", shape_source),
    # unslice(g, a*b) -> unslice(g, a)
    Rule("like_unslice", "unslice", shape_source),
    # size(a*b) -> size(a)
    Rule("like_size", "size", shape_source),
    # relu(x) > 0 -> x > 0
    Rule("relu_positive", "greater",
         lambda n, a, b: apply("greater", a.inputs[0], b)
         if a.op == "relu" and is_value(b, 0) else None, needs=("relu",)),
    # b + a -> a + b (canonical order)
    Rule("commute_add", "add", commute),
    # b * a -> a * b (canonical order)
    Rule("commute_mul", "mul", commute),
]


def fold_constants(graph: Graph) -> Graph:
    """Evaluate constant subgraphs (variables and random ops are never constant)."""
    return rewrite(graph, FOLD)


def eliminate_common_subexpressions(graph: Graph) -> Graph:
    """Same op, attributes and inputs -> one node (the driver's hash-consing, no rules)."""
    return rewrite(graph, ())


def eliminate_dead_code(graph: Graph) -> Graph:
    """Keep only what outputs and updates need; drop updates that write a variable to itself.
    (A Graph holds only what its outputs and updates reach: without such an update, the graph
    itself is the answer.)"""
    if all(u is not v for v, u in graph.updates):
        return graph
    return Graph(graph.outputs, [(v, u) for v, u in graph.updates if u is not v])


def simplify(graph: Graph) -> Graph:
    """Algebraic identities, the leftovers of VJP rules, canonical operand order, folding."""
    return rewrite(graph, SIMPLIFY + FOLD)
