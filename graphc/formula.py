"""Sympy formulas of nodes (gradient nodes included); `explain` (graphc/explain.py) reads them.

Scalar graphs become ordinary expressions in the user's names; graphs over tensors become
matrix expressions (MatrixSymbol products, transposes, Hadamard products, functions applied
elementwise). Each op's scalar meaning comes from its OpDef.sym; simplification only ever
rewrites an expression into an equal one.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import sympy as sp

from graphc.ir import OPS, GraphcError, Node, toposort, user_line
from graphc.ops.fused import decomposition
from graphc.symbolic import (Broadcast, Elementwise, Opaque, Sum, is_scalar_broadcast,
                             labelled, scalar_sym, sigmoid)

BATCH = sp.Symbol("n", integer=True, positive=True)     # a dim of unknown size (None)


def constant_sym(arr: np.ndarray):
    v = arr.reshape(-1)[0].item()
    if isinstance(v, bool):
        return sp.true if v else sp.false
    if isinstance(v, int) or float(v).is_integer():
        return sp.Integer(int(v))
    short = repr(float(np.float32(v))) if arr.dtype == np.float32 else repr(float(v))
    return sp.Rational(short) if len(short) <= 8 else sp.Float(v)


def leaf_names(order: list[Node]) -> dict[int, str]:
    """The user's names for leaves; unnamed ones x1, W1, C1 by kind; repeats get _2, _3."""
    prefix = {"placeholder": "x", "variable": "W", "constant": "C"}
    counts: dict[str, int] = {}
    names: dict[int, str] = {}
    for n in order:
        if n.op in prefix:
            base = n.name or prefix[n.op]
            counts[base] = counts.get(base, 0) + 1
            if not n.name:
                names[id(n)] = f"{base}{counts[base]}"
            else:
                names[id(n)] = base if counts[base] == 1 else f"{base}_{counts[base]}"
    return names


# matrix meaning of one op ---------------------------------------------------------------

def dims(shape) -> tuple:
    """A node shape as (rows, cols) for a matrix, () for a scalar; vectors are rows."""
    d = [BATCH if not isinstance(s, int) else sp.Integer(s) for s in shape]
    if len(d) == 0:
        return ()
    if len(d) == 1:
        return (sp.Integer(1), d[0])
    return (sp.Mul(*d[:-1]), d[-1])


def fit(x, shape) -> object:
    """x (scalar or matrix) as a value of `shape`: broadcast rows, columns or scalars."""
    target = dims(shape)
    if not target:
        return x
    if not isinstance(x, sp.MatrixExpr):
        return Broadcast(x, *target)
    if x.shape == target:
        return x
    (r, c), (tr, tc) = x.shape, target
    if (c, r) == (tr, tc):
        return x.T
    if (r == 1 or r == tr) and (c == 1 or c == tc):
        return Broadcast(x, tr, tc)
    if (c == 1 or c == tr) and (r == 1 or r == tc):
        return Broadcast(x.T, tr, tc)
    return Opaque("reshape", tr, tc, x)


def matrix_sym(n: Node, args: list):
    """The node's value as a matrix expression (or a scalar expression for shape ())."""
    op, attrs = n.op, n.attrs
    if all(not isinstance(a, sp.MatrixExpr) for a in args) and n.shape == ():
        return scalar_sym(op, args, attrs)          # a scalar computed from scalars
    if OPS[op].glue:
        return fit(args[0], n.shape)
    if op == "size":
        return sp.Mul(*[dims((n.inputs[0].shape[a],))[1] for a in attrs["axis"]])
    if op == "transpose" and isinstance(args[0], sp.MatrixExpr) and n.ndim == 2:
        return args[0].T
    if op == "matmul" and len(n.shape) <= 2 and all(i.ndim <= 2 for i in n.inputs):
        a, b = args
        b = b.T if n.inputs[1].ndim == 1 else b
        return fit(a * b, n.shape)
    if op == "sum" and isinstance(args[0], sp.MatrixExpr) and n.inputs[0].ndim <= 2:
        return reduce_sym(n, args[0])
    if op in MATRIX_FORMS and n.ndim <= 2:
        return MATRIX_FORMS[op](n, *args)
    if OPS[op].elementwise and n.ndim <= 2:
        return elementwise_sym(n, args)
    r, c = dims(n.shape) or (1, 1)
    label = labelled(op, row_wise(n))
    return sp.Function(label)(*args) if n.shape == () else Opaque(label, r, c, *args)


def row_wise(n: Node) -> dict:
    """The attributes a formula shows: an axis that is the last of a matrix is left out, so
    softmax(X) reads as the textbook's row-wise softmax (the other axis is said)."""
    last = {-1, n.inputs[0].ndim - 1} if n.inputs else set()
    return {k: v for k, v in n.attrs.items()
            if not (k == "axis" and (v in last or (isinstance(v, tuple) and len(v) == 1
                                                    and v[0] in last)))}


def decomposed_sym(n: Node, args: list):
    """An op declared as primitives (dense: act(x·W + b)) as the formula of those."""
    body = decomposition(n)
    return build(body.outputs, {id(p): a for p, a in zip(body.inputs, args)})[id(body.outputs[0])]


def per_row(g, rows, cols):
    """A per-example weight (one value per row) repeated along each row."""
    if isinstance(g, Broadcast) and not isinstance(g.args[0], sp.MatrixExpr):
        g = g.args[0]
    if isinstance(g, sp.MatrixExpr) and g.shape[0] == 1 and rows != 1:
        g = g.T
    return Broadcast(g, rows, cols)


def sce_grad_form(n: Node, z, y, g):
    """softmax_cross_entropy_grad(z, y, g) = (softmax(z)·sum(y) − y) ∘ g, y one-hot if ints."""
    r, c = dims(n.shape)
    probs = Opaque("softmax", r, c, z)
    if n.inputs[1].dtype.kind in "iu":
        target = Opaque("one_hot", r, c, y)
    else:
        target = fit(y, n.shape)
        probs = sp.HadamardProduct(probs, per_row(Sum(target, 1), r, c))
    return sp.HadamardProduct(probs - target, per_row(g, r, c))


MATRIX_FORMS = {"softmax_cross_entropy_grad": sce_grad_form}   # ops read better expanded


def reduce_sym(n: Node, x):
    axes = n.attrs["axis"]
    if n.inputs[0].ndim == 1:
        axes = tuple(a + 1 for a in axes)
    if axes == (0, 1) or (axes == (1,) and n.shape == ()):
        if is_scalar_broadcast(x):                # a repeated scalar sums to count * scalar
            return x.shape[0] * x.shape[1] * x.args[0]
        return sp.Function("sum")(x)
    if axes in ((0,), (1,)):
        if is_scalar_broadcast(x):
            return fit(x.shape[axes[0]] * x.args[0], n.shape)
        return fit(Sum(x, axes[0]), n.shape)
    return sp.Function("sum")(x)


def elementwise_sym(n: Node, args: list):
    op = n.op
    if all(is_scalar_broadcast(a) or not isinstance(a, sp.MatrixExpr) for a in args):
        plain = [a.args[0] if isinstance(a, Broadcast) else a for a in args]
        return fit(scalar_sym(op, plain, n.attrs), n.shape)     # one repeated value
    # a scalar read from a matrix (sum(x)) is noncommutative to sympy, and sum(x)·x raised
    # NotImplementedError in MatMul: it is broadcast and multiplies entry by entry
    mats = [fit(a, n.shape) if isinstance(a, sp.MatrixExpr) or not a.is_commutative else a
            for a in args]
    if op in ("add", "sub"):
        a, b = [fit(m, n.shape) for m in mats]
        return a + b if op == "add" else a - b
    if op == "neg":
        return -mats[0]
    if op == "mul":
        a, b = mats
        if not isinstance(a, sp.MatrixExpr) or not isinstance(b, sp.MatrixExpr):
            return a * b
        return sp.HadamardProduct(a, b)
    if op == "div" and not isinstance(mats[1], sp.MatrixExpr):
        return mats[0] / mats[1]
    if op == "div":
        return sp.HadamardProduct(fit(mats[0], n.shape), sp.HadamardPower(mats[1], -1))
    if op == "pow" and not isinstance(mats[1], sp.MatrixExpr):
        return mats[0] if mats[1] == 1 else sp.HadamardPower(mats[0], mats[1])
    return Elementwise(op, n.attrs, *[fit(m, n.shape) for m in mats])


# building and tidying -------------------------------------------------------------------

def is_matrix_graph(order: list[Node]) -> bool:
    """Scalar formulas only when every value is a scalar (sum of a broadcast is not x)."""
    return any(n.ndim > 0 for n in order)


def node_sym(n: Node, args: list, matrix: bool, name: str | None = None):
    if n.op in ("placeholder", "variable"):
        if matrix and n.ndim > 0:
            return sp.MatrixSymbol(name, *dims(n.shape))
        return sp.Symbol(name, real=True)
    if n.op == "constant":
        if matrix and n.ndim > 0:
            flat = n.data.reshape(-1)
            if flat.size and np.all(flat == flat[0]):
                return fit(constant_sym(n.data), n.shape)
            return sp.MatrixSymbol(name, *dims(n.shape))
        return constant_sym(n.data)
    if OPS[n.op].decompose is not None and n.ndim <= 2:
        return decomposed_sym(n, args)
    return matrix_sym(n, args) if matrix else scalar_sym(n.op, args, n.attrs)


def build(nodes: Sequence[Node], named: dict[int, object] | None = None) -> dict[int, object]:
    """id(node) -> formula for every node the given ones depend on; `named` nodes stay names."""
    order = toposort(nodes)
    matrix = is_matrix_graph(order)
    names = leaf_names(order)
    env: dict[int, object] = {}
    for n in order:
        if named and id(n) in named:
            env[id(n)] = named[id(n)]
        else:
            env[id(n)] = node_sym(n, [env[id(i)] for i in n.inputs], matrix, names.get(id(n)))
    return env


def tidy(expr):
    """An equal expression that reads better: sigmoids kept whole, fractions cancelled.
    A scalar computed from matrices (a loss: sum(...) / n) is left as built: cancel and
    factor see each opaque matrix function as a symbol and took minutes on an attention
    block's loss (a sum over 3 axes is `sum[axis=...]`, not `sum`)."""
    if isinstance(expr, sp.MatrixExpr):
        return tidy_matrix(expr)
    if not isinstance(expr, sp.Expr) or expr.has(sp.Piecewise, sp.Function("sum")) or \
            any(isinstance(e, sp.MatrixExpr) for e in sp.preorder_traversal(expr)):
        return expr
    sigs = sorted(expr.atoms(sigmoid), key=sp.default_sort_key)
    stand = {s: sp.Dummy(f"s{k}") for k, s in enumerate(sigs)}
    flat = expr.xreplace(stand)
    steps = (lambda e: sp.factor_terms(sp.cancel(e)), None, sp.factor_terms, sp.cancel,
             sp.factor)
    candidates = []
    for f in steps:                    # ties go to the earlier form
        try:
            candidates.append(flat if f is None else f(flat))
        except (sp.PolynomialError, TypeError, ValueError, NotImplementedError):
            pass
    best = min(enumerate(candidates), key=lambda kv: (sp.count_ops(kv[1]), kv[0]))[1]
    return best.xreplace({d: s for s, d in stand.items()})


def tidy_matrix(expr):
    """A ∘ broadcast(c) -> c·A and (c·A) ∘ B -> c·(A ∘ B), nested products flattened. A c
    read from a matrix (1/sqrt(sum(A ∘ A)), std's gradient) stays a broadcast: sympy takes it
    for a noncommuting scalar, and c·A raised NotImplementedError."""
    def hadamard(e):
        scale, factors = sp.Integer(1), []
        stack = list(e.args)
        while stack:
            a = stack.pop(0)
            if is_scalar_broadcast(a) and a.args[0].is_commutative:
                scale *= a.args[0]
            elif isinstance(a, sp.HadamardProduct):
                stack = list(a.args) + stack
            elif isinstance(a, sp.MatMul) and len([f for f in a.args
                                                   if isinstance(f, sp.MatrixExpr)]) == 1:
                scale *= sp.Mul(*[f for f in a.args if not isinstance(f, sp.MatrixExpr)])
                stack.insert(0, next(f for f in a.args if isinstance(f, sp.MatrixExpr)))
            else:
                factors.append(a)
        if not factors:
            return e
        body = factors[0] if len(factors) == 1 else sp.HadamardProduct(*factors)
        return body if scale == 1 else scale * body
    return expr.replace(lambda e: isinstance(e, sp.HadamardProduct), hadamard)


@contextlib.contextmanager
def within_sympy(what: str):
    """sympy recurses over expression trees: a very deep graph becomes a clear error."""
    try:
        yield
    except RecursionError:
        raise GraphcError(f"{what}: the expression is too deep for sympy; print the listing "
                          "or draw the graph with gc.render instead") from None


def formula(node: Node, simplify: bool = True):
    """A sympy expression for the node's value in the names of its placeholders/variables."""
    if not isinstance(node, Node):     # formula(3.0), formula([y]): AttributeError, TypeError
        hint = "; for several nodes, a Graph or a Function: gc.explain" \
            if hasattr(node, "__iter__") or hasattr(node, "graph") or hasattr(node, "outputs") \
            else ""
        raise GraphcError(f"formula: needs one graph node, got {type(node).__name__}{hint}\n"
                          f"  at {user_line()}")
    with within_sympy("formula"):
        expr = build([node])[id(node)]
        expr = tidy(expr) if simplify else expr
        str(expr)       # a formula too deep to print fails here, not in the user's print()
        return expr


def local_formula(node: Node, names: Sequence[str]):
    """The node's own step as a formula of its inputs, named `names` (one op, no expansion:
    cheap for any graph size, where the full formula of a deep node would not be)."""
    matrix = node.ndim > 0 or any(i.ndim > 0 for i in node.inputs)
    args = [node_sym(i, [], matrix, name) if i.op in ("placeholder", "variable", "constant")
            else (sp.MatrixSymbol(name, *dims(i.shape)) if matrix and i.ndim
                  else sp.Symbol(name, real=True))
            for i, name in zip(node.inputs, names)]
    with within_sympy("formula"):
        return node_sym(node, args, matrix)
