"""`explain`: each node's formula with shared subexpressions named once (`let z1 = x·W1 +
b1`), loops as recurrences -- a readable derivation built on graphc.formula's formulas."""
from __future__ import annotations

from typing import Sequence

import sympy as sp

from graphc.formula import (build, dims, is_matrix_graph, leaf_names, node_sym, tidy,
                            within_sympy)
from graphc.ir import OPS, Graph, Node, as_graph, toposort
from graphc.symbolic import is_scalar_broadcast, tex, text

# explain builds whole formulas (sympy then cancels across shared values) up to this many
# nodes, a shared value counted once per path to it; bigger ones name shared values first
WHOLE_FORMULAS = 2000


class Explanation(str):
    """Plain text that shows as LaTeX in Jupyter."""
    latex: str = ""

    def __repr__(self) -> str:          # the text itself, not an escaped one-line string
        return str(self)

    def _repr_markdown_(self) -> str:
        return "$$\\begin{aligned}" + self.latex + "\\end{aligned}$$"

    def _repr_latex_(self) -> str:
        return self._repr_markdown_()


def shared(nodes: Sequence[Node]) -> list[Node]:
    """Non-leaf nodes of the inputs' values read more than once, or named by the user."""
    graph = Graph(nodes)
    users = graph.users()
    live: set[int] = set()             # depends on a placeholder or variable
    for n in graph.nodes:
        if n.op in ("placeholder", "variable") or any(id(i) in live for i in n.inputs):
            live.add(id(n))
    wanted = {id(n) for n in nodes}
    return [n for n in graph.nodes if n.inputs and id(n) in live and id(n) not in wanted
            and not OPS[n.op].glue and n.dtype != bool and (len(users[id(n)]) > 1 or n.name)]


def explain(nodes, latex: bool = False) -> str:
    """Each node's formula, shared subexpressions named once (`let z1 = x·W1 + b1`).

    `nodes`: a node, a list or a dict (label -> node) of them, a Graph, or a compiled Function
    (its graph as built: the outputs, then each update's new value, `new W`)."""
    if isinstance(nodes, Node):
        nodes = [nodes]
    graph = nodes if isinstance(nodes, Graph) else getattr(nodes, "original", None)
    if isinstance(graph, Graph):        # a Graph or Function was a TypeError (not iterable)
        labels = [n.name or f"out{k}" for k, n in enumerate(graph.outputs)] \
            + [f"new {v.name or f'W{k}'}" for k, (v, _) in enumerate(graph.updates)]
        nodes = list(graph.outputs) + [new for _, new in graph.updates]
    elif isinstance(nodes, dict):
        labels, nodes = list(nodes.keys()), list(nodes.values())
    else:
        if not hasattr(nodes, "__iter__") or isinstance(nodes, (str, bytes)):
            nodes = [nodes]             # explain(None): a GraphcError below, not TypeError
        nodes = list(nodes)
        labels = [getattr(n, "name", None) or f"out{k}" for k, n in enumerate(nodes)]
    as_graph(nodes, "explain")          # a non-node is a GraphcError, not AttributeError
    with within_sympy("explain"):
        return explanation(nodes, labels, latex)


def explanation(nodes: list[Node], labels: list[str], latex: bool,
                known: dict[int, object] | None = None) -> str:
    """`known`: names of loop results explained elsewhere (their loops are not repeated)."""
    order = toposort(nodes)
    matrix = is_matrix_graph(order)
    known = dict(known or {})
    loops = [n for n in order if n.op == "scan" and not any(
        m.op == "item" and m.inputs[0] is n and id(m) in known for m in order)]
    items = {**known, **loop_items(order, loops, matrix)}
    whole = expanded_size(order, nodes) <= WHOLE_FORMULAS
    env, lets, names = (whole_with_lets(nodes, items, matrix) if whole
                        else with_lets(order, nodes, items, matrix))
    outs = [tidy(env[id(n)]).xreplace(names) for n in nodes]
    lets = inline_single_use(lets, outs)
    lines = [f"let {text(s)} = {text(b)}" for _, s, b in lets]
    lines += [f"{label} = {text(o)}" for label, o in zip(labels, outs)]
    tex_lines = [f"{tex(s)} &= {tex(b)}" for _, s, b in lets]
    tex_lines += [f"\\text{{{label}}} &= {tex(o)}" for label, o in zip(labels, outs)]
    for m, loop in enumerate(loops, 1):
        plain, typeset = recurrence(loop, m, items)
        lines += plain
        tex_lines += typeset
    result = Explanation(" \\\\\n".join(tex_lines) if latex else "\n".join(lines))
    result.latex = " \\\\\n".join(tex_lines)
    return result


# loops: the recurrence of one step ---------------------------------------------------------

def loop_items(order: list[Node], loops: list[Node], matrix: bool) -> dict[int, object]:
    """Names for what loop L<m> returns: final carries L1.s1[T], stacked outputs L1.y1,
    stacked carries entering each step L1.s1[t-1]."""
    names: dict[int, object] = {}
    for n in order:
        if n.op != "item" or n.inputs[0] not in loops:
            continue
        loop, k = n.inputs[0], n.attrs["index"]
        m, c = loops.index(loop) + 1, loop.attrs["carries"]
        ys = len(loop.attrs["body"].outputs) - c
        name = f"L{m}.s{k + 1}[T]" if k < c else f"L{m}.y{k - c + 1}" if k < c + ys \
            else f"L{m}.s{k - c - ys + 1}[t-1]"
        names[id(n)] = sp.MatrixSymbol(name, *dims(n.shape)) if matrix and n.ndim \
            else sp.Symbol(name, real=True)
    return names


def recurrence(loop: Node, m: int, items: dict[int, object]) -> tuple[list[str], list[str]]:
    """Lines of loop L<m>: where it starts and what it reads, then one step's formulas in the
    body's terms (`items`: names of loop results, which are not explained again)."""
    from graphc.scan import inline, loop_parts
    a = loop.attrs
    body, c = a["body"], a["carries"]
    init, seqs, caps = loop_parts(loop.inputs, c, a["xs"])
    reads, given, labels = [], [], []
    for j, x in enumerate(seqs + caps):
        name = x.name if x.op in ("placeholder", "variable") and x.name else \
            str(items[id(x)]) if id(x) in items else None
        if name is None:               # a computed value: named, explained once
            name = f"L{m}.x{j + 1}" if j < len(seqs) else f"L{m}.w{j - len(seqs) + 1}"
            given.append(x)
            labels.append(name)
            items[id(x)] = sp.MatrixSymbol(name, *dims(x.shape)) if x.ndim \
                else sp.Symbol(name, real=True)
        reads.append(name if j >= len(seqs) or name.endswith("]") else f"{name}[t]")
    steps = [Node("placeholder", (), {}, p.shape, p.dtype, name) for p, name in
             zip(body.inputs, [f"s{k + 1}[t-1]" for k in range(c)] + reads)]
    outs = inline(body, steps)
    span = "t = T, ..., 1" if a["reverse"] else "t = 1, ..., T"
    head = f"loop L{m}, {span}" + (f" over {', '.join(reads[:len(seqs)])}" if seqs
                                   else f" ({a['length']} steps)")
    parts = [explanation(init, [f"s{k + 1}[0]" for k in range(c)], False, items) if init
             else None,
             explanation(given, labels, False,
                         {k: v for k, v in items.items() if k not in map(id, given)})
             if given else None,
             explanation(outs, [f"s{k + 1}[t]" for k in range(c)]
                         + [f"y{j + 1}[t]" for j in range(len(outs) - c)], False, items)]
    parts = [p for p in parts if p]
    plain = [head + ":"] + ["  " + ln for p in parts for ln in p.splitlines()]
    typeset = [f"\\text{{{head}:}} &"] + [ln for p in parts for ln in p.latex.split(" \\\\\n")]
    return plain, typeset


def expanded_size(order: list[Node], nodes: list[Node]) -> int:
    """How many nodes the whole formulas of `nodes` have, a shared value counted once per
    path to it (2^depth for a residual stack, where the graph has 4·depth nodes)."""
    size: dict[int, int] = {}
    for n in order:
        size[id(n)] = min(1 + sum(size[id(i)] for i in n.inputs), WHOLE_FORMULAS + 1)
    return sum(size[id(n)] for n in nodes)


def whole_with_lets(nodes: list[Node], items: dict, matrix: bool):
    """(id -> whole formula, lets, whole formula -> let name): shared values are named after
    the whole formulas are tidied, so sympy cancels across them (the textbook σ - y of a
    logistic loss's gradient)."""
    env = build(nodes, items)
    names: dict[object, object] = {}       # whole formula (raw and tidy) -> its let name
    lets: list[tuple[Node, object, object]] = []
    for n in shared(nodes):
        raw = env[id(n)]
        if isinstance(raw, (sp.Symbol, sp.MatrixSymbol, sp.Number)) or raw in names:
            continue
        sym = let_symbol(n, len(lets) + 1, matrix)
        lets.append((n, sym, tidy(raw).xreplace(names)))
        names[raw] = names[tidy(raw)] = sym
    return env, lets, names


def with_lets(order: list[Node], nodes: list[Node], items: dict, matrix: bool):
    """(id -> formula, lets, {}): each shared value is built once and named, and the values built
    on it read its name: for graphs whose whole formulas are too big for sympy. Built whole
    and named afterwards, a residual stack's formula reads each block's input twice per block,
    and sympy's sorting, xreplace and tidy walked it once per path: 2^depth (explain took 50 s
    for 20 blocks; `graphc formula` of a 1,200-block model never ended). A repeated scalar
    stays itself: sum(c) of it is n·c, as in a whole formula."""
    share = {id(n) for n in shared(nodes)}
    names = leaf_names(order)
    env: dict[int, object] = {}
    seen: dict[object, object] = {}        # a shared value's formula -> its let name
    lets: list[tuple[Node, object, object]] = []
    for n in order:
        if id(n) in items:
            env[id(n)] = items[id(n)]
            continue
        expr = node_sym(n, [env[id(i)] for i in n.inputs], matrix, names.get(id(n)))
        if id(n) in share and not isinstance(expr, (sp.Symbol, sp.MatrixSymbol, sp.Number)) \
                and not is_scalar_broadcast(expr):
            if expr not in seen:
                sym = let_symbol(n, len(lets) + 1, matrix)
                lets.append((n, sym, tidy(expr)))
                seen[expr] = sym
            expr = seen[expr]
        env[id(n)] = expr
    return env, lets, {}


def let_symbol(n: Node, k: int, matrix: bool):
    """The name of shared value n, the k-th let: its own name or z<k>."""
    name = n.name or f"z{k}"
    return sp.MatrixSymbol(name, *dims(n.shape)) if matrix and n.ndim else \
        sp.Symbol(name, real=True)


def inline_single_use(lets: list, outs: list) -> list:
    """Drop lets nobody reads; put back unnamed lets read only once."""
    kept = list(lets)
    for k in reversed(range(len(kept))):
        n, sym, body = kept[k]
        readers = [b for _, _, b in kept[k + 1:]] + outs
        count = sum(list(sp.preorder_traversal(r)).count(sym) for r in readers)
        if count == 0 or (count == 1 and not n.name):
            del kept[k]
            for j in range(k, len(kept)):
                kept[j] = (kept[j][0], kept[j][1], kept[j][2].xreplace({sym: body}))
            for j, o in enumerate(outs):
                outs[j] = o.xreplace({sym: body})
    return renumber(kept, outs)


def renumber(lets: list, outs: list) -> list:
    """z1, z2, ... in order after some lets were put back."""
    rename, k = {}, 0
    for n, sym, _ in lets:
        if not n.name:
            k += 1
            new = f"z{k}"
            rename[sym] = sp.MatrixSymbol(new, *sym.shape) if isinstance(sym, sp.MatrixSymbol) \
                else sp.Symbol(new, real=True)
    outs[:] = [o.xreplace(rename) for o in outs]
    return [(n, rename.get(s, s), b.xreplace(rename)) for n, s, b in lets]
