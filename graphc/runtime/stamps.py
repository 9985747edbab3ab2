"""Fused steps of one body form written once per plan, then stamped with each step's names.

A big graph repeats a few body forms (passes/fuse.structure) thousands of times. A fused step
whose whole body runs in place in its output buffer (every op on the spine: no scratch buffer,
no reused input) has code that depends only on the form and the input types, up to the names
it reads and writes: the first such step of a form is written with slots for those names, the
others fill the slots (string joins instead of a template lookup and format per body op).
The other fused steps (scratch buffers, a dying input reused, the last call writing into a
variable) choose their buffers step by step (`emit_fused`), then their code is stamped the same
way, once per form, input types and choice of buffers (`replayed`).
The facts the lowering asks per fused node (its spine, how many body nodes read each body
node) are kept per form the same way, by position in the body.
"""
from __future__ import annotations

from graphc.ir import USER_OPS
from graphc.runtime import rules

SLOT = "\x00"        # around a slot's name in a stamp: O (the output), A<k> (input k), C<j>


class Stamp:
    """The step's code cut at its slots (even parts: text; odd parts: slot names), the ops
    the step calls a kernel for (the plan report lists them per step) and the positions of
    the body's inlined constants (each step's own plan names, used in the code or not).
    `slots`: per slot, (its part's index, its kind, its number: an int for a list's slot, the
    text after the prefix for C), read once per step by `fill`."""
    __slots__ = ("parts", "kernel_calls", "constants", "slots")

    def __init__(self, code: str, kernel_calls: list[str], constants: list[int]):
        self.parts = code.split(SLOT)
        self.kernel_calls = kernel_calls
        self.constants = constants
        self.slots = tuple([(i, p[0], p[1:] if p[0] in "OC" else int(p[1:]))
                            for i, p in enumerate(self.parts) if i % 2])


def form_key(low, n) -> tuple | None:
    """(the body's form, the input types): what the body's shapes and code depend on."""
    key = low.form_keys.get(id(n), False)
    if key is False:
        form = getattr(n.attrs["body"], "structure", None)
        shapes = low.shapes
        key = low.form_keys[id(n)] = None if form is None else \
            (form, tuple([shapes[id(x)] for x in n.inputs]))
    return key


def spine(low, n, users: dict, find) -> tuple[set, object]:
    """find(n, users) for the form's first node, then the same positions for the others."""
    key = form_key(low, n)
    nodes = n.attrs["body"].nodes
    hit = low.form_facts.get(("spine", key)) if key is not None else None
    if hit is None:
        out = find(n, users)
        if key is not None:
            at = {id(b): j for j, b in enumerate(nodes)}
            low.form_facts[("spine", key)] = (tuple(at[k] for k in out[0]), at[id(out[1])])
        return out
    return {id(nodes[j]) for j in hit[0]}, nodes[hit[1]]


def users(low, n) -> dict[int, int]:
    """id(body node) -> how many body nodes read it (counted once per form)."""
    key = form_key(low, n)
    nodes = n.attrs["body"].nodes
    hit = low.form_facts.get(("users", key)) if key is not None else None
    if hit is None:
        count: dict[int, int] = {}
        for b in nodes:
            for x in b.inputs:
                k = id(x)
                count[k] = count.get(k, 0) + 1
        if key is not None:
            at = {id(b): j for j, b in enumerate(nodes)}
            low.form_facts[("users", key)] = tuple((at[k], c) for k, c in count.items())
        return count
    return {id(nodes[j]): c for j, c in hit}


def overwritable(low, n, find) -> tuple[int, ...]:
    """find(n) (the inputs a fused step may write its spine over, by index) once per form."""
    key = form_key(low, n)
    if key is None:
        return find(n)
    hit = low.form_facts.get(("overwritable", key))
    if hit is None:
        hit = low.form_facts[("overwritable", key)] = find(n)
    return hit


def stamped(low, n, a: list[str], o: str) -> str | None:
    """The code of fused step n into o from a when its body runs wholly in place in o (None:
    the lowering writes it op by op, `emit_fused`). A form whose code makes plan constants of
    its own (relu's zeros) is not stamped."""
    key = form_key(low, n)
    if key is None or not low.pool.owns(o) or o in low.pool.layouts:
        return None
    stamp = low.stamps.get(key, False)
    if stamp is None:
        return None
    body = n.attrs["body"]
    if stamp is False:
        inner = [b for b in body.nodes if b.inputs]
        if len(low.spine_of(n, low.body_users(n))[0]) != len(inner):
            low.stamps[key] = None          # a scratch buffer or a reused input: op by op
            return None
        stamp = record(low, key, n, lambda: in_place(
            low, n, [f"{SLOT}A{k}{SLOT}" for k in range(len(a))], f"{SLOT}O{SLOT}"))
    else:
        low.kernel_calls += stamp.kernel_calls
    prefix, nodes = f"c{low.index[id(n)]}_", body.nodes
    for j in stamp.constants:                   # as emit_fused names them
        low.ns[f"{prefix}{j}"] = nodes[j].data
    return fill(stamp, prefix, o, {"A": a})


def record(low, key, n, write) -> Stamp:
    """The stamp of the code write() gives (slots for names), kept under key unless that
    code made plan constants of its own (beyond the shared scalars) or calls a user's kernel
    (checked against its own body node, which the error names): such a form is then written
    op by op."""
    before, calls = low.nconst, len(low.kernel_calls)
    stamp = Stamp(write(), low.kernel_calls[calls:],
                  [j for j, b in enumerate(n.attrs["body"].nodes) if b.op == "constant"])
    made = {f"k{i}" for i in range(before, low.nconst)}
    scalars = {name for k, v in low.cache.items() if k[0] == "scalars" for name in v.values()}
    user = any(op in USER_OPS for op in stamp.kernel_calls)    # names its body node
    low.stamps[key] = stamp if made <= scalars and not user else None
    return stamp


def fill(stamp: Stamp, prefix: str, o: str, slots: dict[str, list[str]]) -> str:
    """The stamp's code with one step's names: O its output, C<j> its constants (prefix),
    any other slot a name from the list of that kind (A inputs, R what is read, S scratch)."""
    parts = list(stamp.parts)
    for i, kind, k in stamp.slots:
        parts[i] = o if kind == "O" else prefix + k if kind == "C" else slots[kind][k]
    return "".join(parts)


def in_place(low, n, a: list[str], o: str) -> str:
    """What `emit_fused` writes for a body wholly on its spine (every op into o), inlined
    constants as slots."""
    body = n.attrs["body"]
    nid, shapes = id(n), low.shapes
    shape_of = lambda b: shapes[(nid, id(b))][0]  # noqa: E731
    names: dict[int, str] = {}
    code = []
    for j, b in enumerate(body.nodes):
        op = b.op
        if op == "placeholder":
            names[id(b)] = a[low.position(body, b)]
        elif op == "constant":
            names[id(b)] = f"{SLOT}C{j}{SLOT}"
        else:
            code.append(rules.elementwise_code(low, b, [names[id(x)] for x in b.inputs], o,
                                               shape_of))
            names[id(b)] = o
    return "; ".join(code)


def replayed(low, n, calls: list, read: list[str], a: list[str], o: str, taken: list[str],
             shape_of) -> str | None:
    """The code of fused step n whose body calls (body node, buffer, slot) `calls` made, the
    buffers chosen (spine in o, a dying input reused, scratch taken: `emit_fused`): written
    once per form, input types and choice of buffers, then stamped with this step's names
    (read: the names the calls read, a: the inputs' buffers). None: written op by op (a
    buffer of another layout, or a form whose code makes plan constants of its own)."""
    key = form_key(low, n)
    layouts = low.pool.layouts
    if key is None or o in layouts or any(dst in layouts for _, dst, _ in calls):
        return None
    key = ("replay", key, tuple([slot for _, _, slot in calls]))
    stamp = low.stamps.get(key, False)
    if stamp is None:
        return None
    body = n.attrs["body"]
    if stamp is False:
        def write() -> str:
            names: dict[int, str] = {}
            for j, b in enumerate(body.nodes):
                if b.op == "placeholder":
                    names[id(b)] = f"{SLOT}R{low.position(body, b)}{SLOT}"
                elif b.op == "constant":
                    names[id(b)] = f"{SLOT}C{j}{SLOT}"
            code = []
            for b, _, slot in calls:
                dst = names[id(b)] = f"{SLOT}{slot}{SLOT}"
                code.append(rules.elementwise_code(low, b, [names[id(x)] for x in b.inputs],
                                                   dst, shape_of))
            return "; ".join(code)
        stamp = record(low, key, n, write)
    else:
        low.kernel_calls += stamp.kernel_calls
    return fill(stamp, f"c{low.index[id(n)]}_", o, {"A": a, "R": read, "S": taken})
