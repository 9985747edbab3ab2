"""Fusion passes: elementwise groups into one `fused` node, matmul + bias + activation into `dense`.

Both need to know a node's users, so they are one walk each over the graph, not driver rules.
"""
from __future__ import annotations

import itertools

import numpy as np

from graphc.ir import OPS, Graph, GraphcError, Node, apply, constant, context_grad_of
from graphc.ops.fused import ACTIVATIONS, Body   # the activations dense may end with
from graphc.passes.patterns import is_value
from graphc.passes.rewrite import _stats, rebuild_node, same_shape, substitute

INLINE_CONSTANT = 16     # constants up to this size live inside a fused body


def count_users(graph: Graph) -> dict[Node, list[Node]]:
    """node -> its distinct users in graph order; outputs and update values get a None user."""
    users: dict[Node, list[Node]] = {n: [] for n in graph.nodes}
    for n in graph.nodes:
        for i in dict.fromkeys(n.inputs):
            users[i].append(n)
    for root in graph.outputs + tuple(u for _, u in graph.updates):
        users[root].append(None)
    return users


def note(name: str) -> None:
    stats = _stats.get()
    if stats is not None:
        stats[name] += 1


def rebuilt(n: Node, op: str, *inputs: Node, new: dict[Node, Node], **attrs) -> Node:
    """A node of `op` standing for n: n's name, line, scope and (remapped) grad_of tag."""
    tag = new.get(n.grad_of, n.grad_of) if n.grad_of is not None else None
    return apply(op, *inputs, _where=n.where, _name=n.name, _scope=n.scope, _grad_of=tag,
                 **attrs)


# elementwise fusion ---------------------------------------------------------------------

def fusible(n: Node) -> bool:
    return bool(n.inputs) and OPS[n.op].elementwise and not OPS[n.op].random


def find_groups(graph: Graph, users) -> dict[Node, int]:
    """node -> group number. A node joins its users' group when all its users are in one group,
    so only a group's root is read from outside: no path can leave and re-enter (convex)."""
    group: dict[Node, int] = {}
    for n in reversed(graph.nodes):
        if not fusible(n):
            continue
        us = users[n]
        owners = {group.get(u, -1) if u is not None else -1 for u in us}
        if us and len(owners) == 1 and -1 not in owners:
            group[n] = owners.pop()
        else:
            group[n] = len(group)
    return group


def inlined(x: Node) -> bool:
    return x.op == "constant" and x.data.size <= INLINE_CONSTANT


def make_body(members: list[Node]) -> tuple[list[Node], Body]:
    """The members rebuilt on placeholders in0, in1, ... for their external inputs. The body's
    order and form number are found once per form as the members list it (`ORDERS`): a big
    graph's thousands of bodies skip the toposort and the form's walk."""
    inside = set(members)
    external, inner = [], {}
    made, form, at = [], [], {}   # body nodes as made, their form in that order, node -> index
    for m in members:
        for i in m.inputs:
            if i in inside or i in inner:
                continue
            if inlined(i):
                inner[i] = i
                form.append((i.op, i.dtype, i.shape, i.data.tobytes()))
            else:
                inner[i] = Node("placeholder", (), {}, i.shape, i.dtype, f"in{len(external)}")
                external.append(i)
                form.append((i.shape, i.dtype))
            at[i] = len(made)
            made.append(inner[i])
    for m in members:
        b = inner[m] = rebuild_node(m, [inner[i] for i in m.inputs], {})
        form.append((b.op, b.dtype, b.key()[2] if b.attrs else (),
                     tuple([at[i] for i in m.inputs])))
        at[m] = len(made)
        made.append(b)
    placeholders, out = [inner[x] for x in external], inner[members[-1]]
    form = tuple(form)
    known = ORDERS.get(form)
    if known is None:
        body = Body(placeholders, out)
        body.structure = structure(body)
        index = {id(b): j for j, b in enumerate(made)}
        if len(ORDERS) >= 1 << 16:          # bounded as STRUCTURES
            ORDERS.clear()
        ORDERS[form] = (tuple([index[id(b)] for b in body.nodes]), body.structure)
    else:
        body = Body.ordered(placeholders, out, [made[j] for j in known[0]])
        body.structure = known[1]
    return external, body


# a body's form as make_body lists it (members in graph order, each external input and inlined
# constant where first read) -> (its nodes' indices in Graph order, its number in STRUCTURES).
# Equal lists give equal bodies up to names and lines: the same toposort and the same form.
ORDERS: dict[tuple, tuple[tuple[int, ...], int]] = {}


STRUCTURES: dict[tuple, int] = {}    # a body's form -> its number (runtime answers per form)


def structure(body: Body) -> int:
    """A number per form of body: equal for bodies equal up to their nodes' identities, names
    and lines (each node's op, dtype, attributes and inputs by position; placeholders by input
    index and declared type; inlined constants by value). The lowering answers per form what
    depends on nothing else (shapes, whether it compiles): a big graph repeats a few forms."""
    place = {id(p): k for k, p in enumerate(body.inputs)}
    pos: dict[int, int] = {}
    form = []
    for j, b in enumerate(body.nodes):
        pos[id(b)] = j
        if b.inputs:
            form.append((b.op, b.dtype, b.key()[2] if b.attrs else (),
                         tuple([pos[id(i)] for i in b.inputs])))
        elif b.op == "placeholder":
            form.append((place[id(b)], b.shape, b.dtype))
        else:                              # an inlined constant
            form.append((b.op, b.dtype, b.shape, b.data.tobytes()))
    form = tuple(form)
    number = STRUCTURES.get(form)
    if number is None:
        if len(STRUCTURES) >= 1 << 16:     # many forms: forget them, numbers stay distinct
            STRUCTURES.clear()
        number = STRUCTURES[form] = next(FORMS)
    return number


FORMS = itertools.count()


def fused_node(n: Node, inputs: list[Node], body: Body, new: dict[Node, Node]) -> Node:
    """`rebuilt(n, "fused", *inputs, body=body)` without the shape rule: make_body gave each
    placeholder its input's shape and dtype, so the node has the type of the body's output."""
    tag = new.get(n.grad_of, n.grad_of) if n.grad_of is not None else context_grad_of()
    out = body.outputs[0]
    return Node("fused", tuple(inputs), {"body": body}, out.shape, out.dtype, n.name, n.where,
                n.scope, tag)


def fuse_elementwise(graph: Graph) -> Graph:
    """Convex groups of two or more elementwise ops -> one `fused` node holding its body."""
    graph = share_softplus_sigmoid(graph)
    users = count_users(graph)
    group = find_groups(graph, users)
    members: dict[int, list[Node]] = {}
    for n in graph.nodes:
        if n in group:
            members.setdefault(group[n], []).append(n)
    for k, ms in list(members.items()):     # constants only: a fused node without inputs
        if not any(i not in ms and not inlined(i) for m in ms for i in m.inputs):
            del members[k]                  # would look like a leaf; folding's job instead
    new: dict[Node, Node] = {}
    for n in graph.nodes:
        ms = members.get(group.get(n, -1), ())
        if len(ms) >= 2 and n is ms[-1]:
            external, body = make_body(ms)
            new[n] = fused_node(n, [new[x] for x in external], body, new)
            note("fuse_elementwise")
        elif len(ms) >= 2:
            continue                        # inner member: read only inside its group
        else:
            new[n] = rebuild_node(n, [new[i] for i in n.inputs], new)
    return Graph([new[o] for o in graph.outputs], [(new[v], new[u]) for v, u in graph.updates])


SHARED_EXP = (np.dtype("float32"), np.dtype("float64"))   # dtypes share_softplus_sigmoid reads


def share_softplus_sigmoid(graph: Graph) -> Graph:
    """softplus(z) and sigmoid(z) of one z (a logistic loss and its gradient) from shared
    parts: m = max(z, 0), n = min(z, 0), l = log1p(exp(n - m)) (n - m is -|z| exactly), then
    softplus = m + l (the lowering's own form) and sigmoid = exp(n - l) (1 / (1 + exp(-z))
    for z >= 0, exp(z) / (1 + exp(z)) below: stable for any z, inf included). Two ufuncs for
    the sigmoid instead of four and no second exp(-|z|); m, n and l become
    group outputs that both groups read. Float32 and float64 only (where this is as exact
    as the ops' own forms)."""
    pairs: dict[Node, dict[str, Node]] = {}
    for n in graph.nodes:
        if n.op in ("softplus", "sigmoid") and n.dtype in SHARED_EXP \
                and n.inputs[0].dtype == n.dtype and n.inputs[0].shape == n.shape:
            pairs.setdefault(n.inputs[0], {})[n.op] = n
    pairs = {z: ops for z, ops in pairs.items() if len(ops) == 2}
    if not pairs:
        return graph
    new: dict[Node, Node] = {}
    parts: dict[Node, tuple[Node, Node, Node]] = {}
    for n in graph.nodes:
        z = n.inputs[0] if n.op in ("softplus", "sigmoid") else None
        if z not in pairs:
            new[n] = rebuild_node(n, [new[i] for i in n.inputs], new)
            continue
        if z not in parts:
            sp, zero = pairs[z]["softplus"], constant(np.zeros((), z.dtype))
            m = rebuilt(sp, "maximum", new[z], zero, new=new)
            lo = rebuilt(sp, "minimum", new[z], zero, new=new)
            e = rebuilt(sp, "exp", rebuilt(sp, "sub", lo, m, new=new), new=new)
            parts[z] = (m, lo, rebuilt(sp, "log1p", e, new=new))
            note("share_softplus_sigmoid")
        m, lo, log1p = parts[z]
        new[n] = rebuilt(n, "add", m, log1p, new=new) if n.op == "softplus" else \
            rebuilt(n, "exp", rebuilt(n, "sub", lo, log1p, new=new), new=new)
    return Graph([new[o] for o in graph.outputs], [(new[v], new[u]) for v, u in graph.updates])


# dense: the GEMM epilogue ---------------------------------------------------------------

def as_dense(m: Node) -> tuple[tuple, dict] | None:
    """(inputs, attrs) of a bare product: a 2-D matmul or a dense without bias and activation."""
    if m.op == "matmul" and m.inputs[0].ndim == 2 and m.inputs[1].ndim == 2:
        return m.inputs, {"transpose_a": False, "transpose_b": False}
    if m.op == "dense" and len(m.inputs) == 2 and m.attrs["activation"] is None:
        return m.inputs, {k: m.attrs[k] for k in ("transpose_a", "transpose_b")}
    return None


def untranspose(x: Node) -> tuple[Node, bool]:
    if x.op == "transpose" and x.ndim == 2 and x.attrs["axes"] == (1, 0):
        return x.inputs[0], True
    return x, False


def dense_for(n: Node, ins: list[Node], users, new) -> tuple[Node | None, Node | None]:
    """(the dense node replacing n, the original product it absorbed) or (None, None)."""
    if n.op == "matmul" and all(x.ndim == 2 for x in ins):
        (a, ta), (b, tb) = untranspose(ins[0]), untranspose(ins[1])
        if ta or tb:                                   # matmul(T(h), dz) -> dense(h, dz, ta)
            return rebuilt(n, "dense", a, b, transpose_a=ta, transpose_b=tb, new=new), None
    if n.op == "add" and n.inputs[0] is not n.inputs[1]:
        for k in (0, 1):
            m, bias = ins[k], ins[1 - k]
            d = as_dense(m) if len(users[n.inputs[k]]) == 1 else None
            if d and bias.ndim <= 2 and m.shape == n.shape:       # a @ b + bias -> dense
                return rebuilt(n, "dense", *d[0], bias, new=new, **d[1]), n.inputs[k]
    if n.op in ACTIVATIONS and len(users[n.inputs[0]]) == 1:
        d, x = None, ins[0]
        if x.op == "dense" and x.attrs["activation"] is None:
            d = (x.inputs, {k: x.attrs[k] for k in ("transpose_a", "transpose_b")})
        d = d or as_dense(x)
        if d:                                          # act(dense) -> dense(activation=act)
            return rebuilt(n, "dense", *d[0], activation=n.op, new=new, **d[1]), n.inputs[0]
    return None, None


def mask_from_relu(graph: Graph) -> Graph:
    """greater(z, 0) -> greater(relu(z), 0) when relu(z) exists: the relu's VJP mask then
    reads the activation, so z has one user and the relu can join z's dense node."""
    users = count_users(graph)
    relu_of = {n.inputs[0]: n for n in graph.nodes if n.op == "relu"}
    mapping = {}
    for n in graph.nodes:
        z = n.inputs[0] if n.op == "greater" else None
        if z is not None and z in relu_of and z.op in ("add", "matmul") \
                and is_value(n.inputs[1], 0) and len(users[z]) > 1:
            mapping[n] = rebuild_node(n, [relu_of[z], n.inputs[1]], {})
    return substitute(graph, mapping) if mapping else graph


def fuse_dense(graph: Graph) -> Graph:
    """matmul + bias add + activation -> one `dense` node, forward and backward."""
    if not any(n.op in ("matmul", "dense", "relu") for n in graph.nodes):
        return graph                        # nothing to fuse, nor a relu mask to move
    graph = mask_from_relu(graph)
    users = count_users(graph)
    new: dict[Node, Node] = {}
    merged: dict[Node, list[Node]] = {}     # dense node -> the original nodes it absorbed
    for n in graph.nodes:
        ins = [new[i] for i in n.inputs]
        try:
            out, absorbed = dense_for(n, ins, users, new)
        except GraphcError:                 # e.g. a bias that would broadcast the product
            out = absorbed = None
        if out is not None and out.dtype == n.dtype and same_shape(out.shape, n.shape):
            note(f"fuse_dense_{n.op}")
            new[n] = out
            if absorbed is not None:        # its only user was n: grad_of tags point here
                merged[out] = merged.pop(new[absorbed], []) + [absorbed]
                for old in merged[out]:
                    new[old] = out
        else:
            new[n] = rebuild_node(n, ins, new)
    return Graph([new[o] for o in graph.outputs], [(new[v], new[u]) for v, u in graph.updates])

