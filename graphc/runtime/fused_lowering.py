"""How a fused elementwise group is lowered: its spine (the body nodes that run in place in
the output buffer), which dying input it may overwrite, whether its body compiles to ufunc
calls, and its code. A part of `program.Lowering` (its memory, names and shapes), kept apart
for size.
"""
from __future__ import annotations

import math

from graphc.ir import Graph, Node
from graphc.runtime import emit, rules, stamps


class FusedLowering:
    """The fused-group methods of `program.Lowering`."""

    def position(self, body: Graph, ph: Node) -> int:
        """Which fused input a body placeholder stands for; the table is made once per body
        (a scan of the inputs per placeholder is quadratic in a wide group's inputs)."""
        if id(body) not in self.positions:
            self.positions[id(body)] = body_positions(body)
        pos = self.positions[id(body)]
        return int(ph.name[2:]) if pos is None else pos[id(ph)]

    def spine_of(self, n: Node, users: dict) -> tuple[set, Node]:
        """The chain of body nodes from the output down that can all run in place in the
        output buffer (each read only by the next), and its first-computed node (made once
        per fused node: choosing its buffer and emitting it both ask)."""
        spine = self.spines.get(id(n))
        if spine is None:
            spine = self.spines[id(n)] = stamps.spine(self, n, users, self.find_spine)
        return spine

    def find_spine(self, n: Node, users: dict) -> tuple[set, Node]:
        out = n.attrs["body"].outputs[0]
        shape_of = lambda b: self.shapes[(id(n), id(b))][0]  # noqa: E731
        spine, cur = {id(out)}, out
        while rules.inplace_ok(cur, shape_of):
            nxt = next((x for x in cur.inputs if x.inputs and users[id(x)] == 1
                        and self.shapes[(id(n), id(x))] == self.shapes[(id(n), id(out))]),
                       None)
            if nxt is None:
                break
            spine.add(id(nxt))
            cur = nxt
        return spine, cur

    def body_users(self, n: Node) -> dict[int, int]:
        """id(body node) -> how many body nodes read it, for fused node n (made once)."""
        users = self.users_of.get(id(n))
        if users is None:
            users = self.users_of[id(n)] = stamps.users(self, n)
        return users

    def fused_inplace_target(self, n: Node, i: int, owner: dict) -> str | None:
        """A dying input buffer a fused step may run its spine in: only the spine's first
        call reads that input, elementwise, before anything else writes the buffer."""
        if not self.fused_ok(n):
            return None
        for k in stamps.overwritable(self, n, self.overwritable):
            r = id(n.inputs[k])
            if r in owner and self.roots[r] == (r,) and self.last[r] == i \
                    and self.shapes[r] == self.shapes[id(n)] and self.pool.owns(owner[r]) \
                    and self.same_layout(n, owner[r]) \
                    and not any(r in self.roots[id(y)] for j, y in enumerate(n.inputs) if j != k):
                return owner[r]
        return None

    def overwritable(self, n: Node) -> tuple[int, ...]:
        """The inputs (by index) the first call of n's spine alone reads, elementwise."""
        users = self.body_users(n)
        _, bottom = self.spine_of(n, users)
        if not rules.inplace_ok(bottom, lambda b: self.shapes[(id(n), id(b))][0]):
            return ()
        body = n.attrs["body"]
        return tuple([self.position(body, ph) for ph in bottom.inputs
                      if ph.op == "placeholder" and users[id(ph)] == 1])

    def reusable_input(self, n: Node, b: Node, a: list[str], users: dict, shape_of):
        """A buffer of n's inputs that dies at this step and that body node b alone reads:
        b may write its result over it (elementwise) instead of taking a scratch buffer."""
        if not rules.inplace_ok(b, shape_of):
            return None
        body = n.attrs["body"]
        for x in b.inputs:
            if x.op != "placeholder" or users[id(x)] != 1:
                continue
            k = self.position(body, x)
            name, outer = a[k], n.inputs[k]
            if name not in self.dying_now or a.count(name) != 1 \
                    or self.shapes[id(outer)] != self.shapes[(id(n), id(b))]:
                continue
            if any(id(outer) in self.roots[id(y)] for j, y in enumerate(n.inputs) if j != k):
                continue
            self.dying_now.remove(name)
            return name
        return None

    def unbroadcast(self, n: Node, a: list[str]) -> list[str]:
        """The names n's body calls read: a broadcast of one element by that element, which
        each call broadcasts to its output (all of them write a full-shaped buffer): NumPy's
        scalar loop instead of a strided one over a zero-stride view (0.7 against 1.6 us at
        512 floats). Only for reading: `a` itself still names what may be written over."""
        read = a
        for k, x in enumerate(n.inputs):
            src_shape = self.shapes[id(x.inputs[0])][0] if x.op == "broadcast_to" else None
            if src_shape is not None and len(src_shape) <= x.ndim and math.prod(src_shape) == 1:
                src = self.var.get(id(x.inputs[0]))
                if src is not None:
                    read = read if read is not a else list(a)
                    read[k] = src
        return read

    def fused_ok(self, n: Node) -> bool:
        ok = self.compiles.get(id(n))
        if ok is None:                 # the answer depends on the body's form alone
            form = getattr(n.attrs["body"], "structure", None)
            ok = self.form_compiles.get(form) if form is not None else None
            if ok is None:
                ok = self.body_compiles(n)
                if form is not None:
                    self.form_compiles[form] = ok
            self.compiles[id(n)] = ok
        return ok

    def body_compiles(self, n: Node) -> bool:
        body: Graph = n.attrs["body"]
        nid, shapes = id(n), self.shapes
        for b in body.nodes:
            if b.inputs:
                dts = [shapes[(nid, id(x))][1] for x in b.inputs]
                if not emit.ufunc_ok(b, dts, in_group=True):
                    return False
        return bool(body.outputs[0].inputs)

    def emit_fused(self, n: Node, a: list[str], o: str) -> str:
        """The body as a chain of ufunc calls: the chain that leads to the output runs in
        place in o; side branches use scratch buffers. When o is a variable being updated
        (also an input), only the last call writes o."""
        read = self.unbroadcast(n, a)            # names the body's calls read
        code = stamps.stamped(self, n, read, o)  # a body of a form met before, all in o
        if code is not None:
            return code
        body: Graph = n.attrs["body"]
        out = body.outputs[0]
        nid, shapes = id(n), self.shapes
        shape_of = lambda b: shapes[(nid, id(b))][0]  # noqa: E731
        users = self.body_users(n)
        owned = self.pool.owns(o) or id(n) in self.fresh       # not a variable
        spine = self.spine_of(n, users)[0] if owned else {id(out)}
        if id(body) not in self.positions:        # the placeholder table, made once per body
            self.positions[id(body)] = body_positions(body)
        pos = self.positions[id(body)]
        names: dict[int, str] = {}
        left: dict[int, int] = {}     # scratch body node -> its readers still to come
        scratch: list[str] = []
        taken: list[str] = []         # every scratch buffer, in the order taken
        calls: list[tuple[Node, str, str]] = []   # (body node, its buffer, that buffer's slot)
        for j, b in enumerate(body.nodes):
            op, k = b.op, id(b)
            if op == "placeholder":
                names[k] = read[int(b.name[2:]) if pos is None else pos[k]]
                continue
            if op == "constant":
                cname = f"c{self.index[nid]}_{j}"
                self.ns[cname] = b.data
                names[k] = cname
                continue
            if k in spine:
                dst, slot = o, "O"
            else:
                dst = self.reusable_input(n, b, a, users, shape_of)
                if dst is None:
                    dst = self.take(*shapes[(nid, k)], self.scratch_layout(n, b))
                    slot = f"S{len(taken)}"
                    scratch.append(dst)
                    taken.append(dst)
                    left[k] = users[k]
                else:
                    slot = f"A{a.index(dst)}"       # reusable_input: a names it once
            calls.append((b, dst, slot))
            names[k] = dst
            if left:
                for x in b.inputs:
                    xk = id(x)
                    if xk in left:
                        left[xk] -= 1
                        if left[xk] == 0:
                            del left[xk]
                            if names[xk] in scratch and names[xk] != dst:
                                scratch.remove(names[xk])
                                self.give(names[xk])
        for s in scratch:
            if s != o:
                self.give(s)
        code = stamps.replayed(self, n, calls, read, a, o, taken, shape_of)
        if code is not None:
            return code
        return "; ".join([rules.elementwise_code(self, b, [names[id(x)] for x in b.inputs],
                                                 dst, shape_of) for b, dst, _ in calls])


def body_positions(body: Graph) -> dict[int, int] | None:
    """id(placeholder) -> which fused input it stands for (Body.inputs); None for a body
    without `inputs`, whose placeholders are named inK."""
    inputs = getattr(body, "inputs", None)
    return None if inputs is None else {id(x): k for k, x in enumerate(inputs)}
