"""Lowering: a graph and its concrete shapes -> one generated Python function (a Plan).

Each non-leaf node becomes one step, one line of code, with the printed node as a comment
above it. Steps that can write into a buffer (`out=`) get one from the memory planner, which
reuses a buffer once the last reader of every value that may alias it has run.
"""
from __future__ import annotations

import functools
import math
import types

import numpy as np

from graphc.ir import OPS, USER_OPS, Graph, Node, checked_kernel, rule_shape
from graphc.runtime import atomic, backend, blas, emit, layout, loop, lowering, planner, rules
from graphc.runtime.fused_lowering import FusedLowering
from graphc.runtime.instrument import check_step, holder
from graphc.runtime.plan import Plan, step_comment

FRESH, RAISING = lowering.FRESH, lowering.RAISING   # facts of the lowering table
# the nodes that are not steps (an op node may have no inputs: a user's op)
LEAVES = ("placeholder", "variable", "constant")


class Lowering(FusedLowering):
    """Builds the source of one plan: names, buffers, and one emitted line per step."""

    def __init__(self, graph: Graph, inputs: list[Node], shapes: dict, check_numerics: bool,
                 rngs: dict):
        self.graph, self.inputs, self.shapes, self.rngs = graph, inputs, shapes, rngs
        self.loops: dict = {}              # id(scan node) -> its body's BodyStep
        self.check = check_numerics
        self.index = {id(n): i for i, n in enumerate(graph.nodes)}
        self.names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
        self.ns: dict = {backend.NAME: backend.xp, "hold": atomic.hold}
        self.var: dict[int, str] = {}      # id(node) -> python name of its value
        self.pool = planner.Pool(self.ns)
        self.nconst = 0
        self.fresh: dict[int, str] = {}          # output id -> its new array's name, per call
        # ids of the values fixed for the plan: constants, sizes, steps made once from them
        self.known: set[int] = {id(n) for n in graph.nodes if n.op == "constant"}
        self.cache: dict = {}                  # plan constants shared by steps
        # per fused node (by id), made once: its spine, body users, whether its body compiles
        self.spines: dict[int, tuple] = {}
        self.users_of: dict[int, dict] = {}
        self.compiles: dict[int, bool] = {}
        self.form_compiles: dict[int, bool] = {}   # body form (fuse.structure) -> compiles
        self.form_keys: dict[int, tuple] = {}      # fused id -> (form, input types) (stamps.py)
        self.form_facts: dict[tuple, object] = {}  # (what, form key) -> by body position
        self.stamps: dict[tuple, object] = {}      # form key -> its code's stamp, or None
        self.extra_reads: dict[int, tuple] = {}  # step id -> nodes it reads besides inputs
        # per-plan state of the op families that lower together (lowering.FAMILIES)
        self.families = {name: cls() for name, cls in lowering.FAMILIES.items()}
        self.kinds_of: dict[int, str] = {}       # step id -> "buffer", "view" or "kernel"
        self.kinds: list[tuple[str, str]] = []   # (kind, why a kernel) per step
        self.kernel_calls: list[str] = []        # ops of the current step run by kernel call
        self.positions: dict[int, dict] = {}     # id(body) -> id(placeholder) -> input index
        self.views: dict[str, str] = {}          # hoisted view name -> its expression
        self.layouts: dict[int, str] = {}        # id -> layout of its buffer (runtime/layout)
        self.gemms: dict[int, tuple] = {}        # step id -> its GEMM (rules.gemm_steps)
        self.absorbed: dict[int, Node] = {}      # product id -> the step whose GEMM makes it
        self.notes: list[int] = []               # per step, its listing comment's line

    # memory: the planner's pool and liveness over this graph's steps --------------------
    def take(self, shape, dtype, layout_=None) -> str:
        return self.pool.take(shape, dtype, layout_)

    def same_layout(self, n: Node, buffer: str) -> bool:
        """A buffer may hold n's value only in n's layout (runtime/layout.py)."""
        return self.pool.layouts.get(buffer) == self.layouts.get(id(n))

    def scratch_layout(self, n: Node, b: Node) -> str | None:
        """A fused group's scratch buffer of the group's shape takes the group's layout (a
        ufunc over mixed layouts runs transposed)."""
        same = self.shapes[(id(n), id(b))][0] == self.shapes[id(n)][0]
        return self.layouts.get(id(n)) if same else None

    def give(self, name: str) -> None:
        self.pool.give(name)

    def plan_steps(self, writes: set[int]) -> list[planner.Step]:
        """Every node as a planner step (leaves too, so step indices are node indices). A
        product computed by its reader's GEMM is a view of its operands: they live as long
        as it does, and a write over memory it reads is seen as one."""
        out, absorbed, extra, step = [], self.absorbed, self.extra_reads, planner.Step
        for n in self.graph.nodes:
            k = id(n)
            kind = "buffer" if k in writes else "view" if k in absorbed else \
                "fresh" if n.op in LEAVES or n.op in FRESH else "view"
            reads = n.inputs + extra[k] if k in extra else n.inputs
            out.append(step(k, tuple(map(id, reads)), kind))
        return out

    def const(self, arr: np.ndarray) -> str:
        """A plan constant (zeros for relu, ones for column sums, sizes) by name."""
        name = f"k{self.nconst}"
        self.nconst += 1
        self.ns[name] = arr
        return name

    def dtype_name(self, dtype) -> str:
        """A plan name for a dtype object: NumPy parses a dtype string like '<f4' on every
        call, ~5 us of code out of the caches after a step (bench/cold_call.py)."""
        dtype = np.dtype(dtype)
        text = dtype.name if dtype.isnative and dtype.name.isidentifier() else dtype.str
        name = "dt_" + "".join(c if c.isalnum() else "_" for c in text)
        self.ns[name] = dtype
        return name

    # the whole function ----------------------------------------------------------------
    def build(self) -> tuple[str, list]:
        g = self.graph
        args, head = [], []
        for k, ph in enumerate(self.inputs):
            self.var[id(ph)] = f"x{k}"
            args.append(f"x{k}")
        for i, n in enumerate(g.nodes):
            if n.op == "variable":
                self.ns[f"box{i}"] = n.data
                self.var[id(n)] = f"w{i}"
                head.append(f"    w{i} = box{i}[0]   # {n.label()}")
            elif n.op == "constant":
                self.ns[f"c{i}"] = n.data
                self.var[id(n)] = f"c{i}"
        for fam in self.families.values():      # pairs that decide how steps lower
            fam.before(self)
        kinds = {id(n): lowering.classify(self, n) for n in g.nodes if n.op not in LEAVES}
        for fam in self.families.values():
            fam.after(self, kinds)
        self.kinds_of = kinds
        self.layouts = layout.choose(self, kinds)
        self.gemms = {} if self.check else rules.gemm_steps(self, kinds)
        self.absorbed = {id(d): n for n, d, *_ in self.gemms.values() if d is not n}
        writes = {k for k, v in kinds.items() if v == "buffer" and k not in self.absorbed}
        self.steps = self.plan_steps(writes)
        kept = [id(o) for o in g.outputs] + [id(u) for _, u in g.updates]
        self.roots, self.last = planner.liveness(self.steps, kept)
        direct = self.direct_updates(kinds)
        self.fresh = self.fresh_outputs(kinds, direct)
        owner: dict[int, str] = {}        # root id -> buffer name
        ends = planner.endings(self.last, len(self.steps))
        lines = [f"def run({', '.join(args)}):"] + head
        if self.check is True:   # a NaN fed in (or stored) is not the first step's fault
            lines += [f"    check({self.var[id(n)]}, {holder(n)!r})"
                      for n in self.inputs + g.variables if n.dtype.kind in "fc"]
        steps, fused_at = [], []
        held = False
        # the loop's lookups bound once: it runs per node (~40k steps at 100k nodes)
        var, shapes, layouts, fresh, known = self.var, self.shapes, self.layouts, self.fresh, \
            self.known
        notes, add, check, give, dying_at = self.notes, lines.append, self.check, self.give, \
            planner.dying
        for i, n in enumerate(g.nodes):
            if n.op in LEAVES:
                continue
            k = id(n)
            dying = dying_at(i, owner, ends)
            o, fold = None, False
            if k in direct:
                o = owner[k] = var[id(direct[k])]
            elif k in fresh:
                o = owner[k] = fresh[k]
            elif fold := k in writes and self.folds(n, kept):   # no owner: never reused
                o = self.const(layout.empty(*shapes[k], layouts.get(k)))
            elif k in writes:
                o = self.inplace_target(n, i, owner) or self.take(*shapes[k], layouts.get(k))
                owner[k] = o
            self.dying_now = [b for b in dying if b != o]
            self.kernel_calls = []
            kind = kinds[k]
            code = self.emit(n, i, o, kind)
            if self.made_once(n, code, fold):
                code = f"pass  # made once per plan: {code}"
            for b in dying:
                if b != o:
                    give(b)
            first = len(lines) + 1
            if k in direct and not held:     # the write phase: no Ctrl-C from here on
                add("    hold()")
                held = True
            notes.append(len(lines))     # the step's comment: printed when asked
            add("")
            if k in fresh:      # its own line: the step's code may still be shared
                shape, dtype = shapes[k]
                add(f"    {o} = xp.empty({tuple(shape)}, {self.dtype_name(dtype)})")
            add(f"    {code}")
            if n.op == "fused" and k not in known:
                fused_at.append(len(lines) - 1)
            if check and n.dtype.kind == "f":
                add(f"    check({var[k]}, {len(steps)})")
            steps.append((n, first, len(lines)))
            calls = self.kernel_calls
            why = lowering.why_kernel(self, n) if kind == "kernel" else \
                f"calls the kernel of {', '.join(sorted(set(calls)))} (no ufunc " \
                f"template)" if calls else ""
            self.kinds.append((kind, why))
        lines += self.epilogue(direct, held)
        shared = emit.share_repeats(lines, fused_at)
        if shared:                  # defined first in run: every step's lines move down
            lines[1:1] = shared
            steps = [(n, first + len(shared), last + len(shared)) for n, first, last in steps]
            self.notes = [at + len(shared) for at in self.notes]
        text = "\n".join(lines) + "\n"
        if text.count("\n") != len(lines):    # a line of several lines: its notes now
            for (n, _, _), at in zip(steps, self.notes):
                lines[at] = step_comment(n, self.names, self.layouts)
            text, self.notes = "\n".join(lines) + "\n", []
        return text, steps

    def direct_updates(self, kinds: dict) -> dict[int, Node]:
        """Updates whose last step may write straight into the variable (planner rules);
        none in check_numerics mode (a later check may still raise)."""
        if self.check:
            return {}
        g = self.graph
        index = {id(n): i for i, n in enumerate(g.nodes)}
        raising = [i for i, n in enumerate(g.nodes)
                   if n.op not in LEAVES and (kinds[id(n)] == "kernel" or n.op in RAISING
                                              or self.may_raise(n))]
        updates = [planner.Update(id(v), id(u), index[id(u)],
                                  u.op not in LEAVES and self.may_write_input(u),
                                  self.shapes[id(u)] == self.shapes[id(v)],
                                  tuple(id(x) for x in u.inputs))
                   for v, u in g.updates]
        ok = planner.direct_updates(updates, self.steps, raising, self.roots, self.last,
                                    [id(o) for o in g.outputs])
        return {id(u): v for v, u in g.updates if id(u) in ok}

    def may_raise(self, n: Node) -> bool:
        """rules.may_raise, answered once per body form for fused steps."""
        form = getattr(n.attrs["body"], "structure", None) if n.op == "fused" else None
        if form is None:
            return rules.may_raise(n)
        hit = self.form_facts.get(("raises", form))
        if hit is None:
            hit = self.form_facts[("raises", form)] = rules.may_raise(n)
        return hit

    def may_write_input(self, u: Node) -> bool:
        """Whether u's code may write its result over one of its inputs (read elementwise)."""
        if u.op == "fused":
            out = u.attrs["body"].outputs[0]
            return rules.inplace_ok(out, lambda b: self.shapes[(id(u), id(b))][0])
        return rules.inplace_ok(u, lambda x: self.shapes[id(x)][0])

    def folds(self, n: Node, kept: list) -> bool:
        """Whether buffer step n computes from values fixed for the plan only (constants, sizes
        of concrete shapes, such steps: `lr / n` of a mean's gradient) and may run once, when
        the plan is made: elementwise or a fused group (no workspace shared with other steps),
        deterministic, raising nothing, no output or update value."""
        return bool(n.inputs) and all(id(x) in self.known for x in n.inputs) \
            and (n.op == "fused" or layout.elementwise(n)) and id(n) not in kept \
            and not OPS[n.op].random and n.op not in RAISING and not rules.may_raise(n)

    def made_once(self, n: Node, code: str, fold: bool) -> bool:
        """Runs a folded step's code now (its buffer is a plan constant); marks the values
        fixed for the plan (a size, a view hoisted from fixed values). False: code runs per
        call."""
        if fold:
            try:
                with np.errstate(all="ignore"):
                    exec(code, self.ns)
            except Exception:      # noqa: BLE001  (it raises at run time, named there)
                return False
            self.known.add(id(n))
            return True
        name = self.var[id(n)]
        if name.startswith("h") and (n.op == "size" or all(id(x) in self.known
                                                           for x in n.inputs)):
            self.known.add(id(n))
        return False

    def fresh_outputs(self, kinds: dict, direct: dict) -> dict[int, str]:
        """id(output) -> the name of the array its step writes, made new by every call and
        returned as it is (instead of a planned buffer copied out at the end, ~2-5 us for a
        512x10 result): outputs written into a planned buffer, not into a variable, each
        once (an output given twice is copied for its second place)."""
        out: dict[int, str] = {}
        for o in self.graph.outputs:
            key = id(o)
            if kinds.get(key) == "buffer" and key not in direct and key not in out \
                    and self.layouts.get(key) is None:
                out[key] = f"r{self.index[key]}"
        return out

    def epilogue(self, direct: dict, held: bool) -> list[str]:
        g = self.graph
        out = []
        updated = {id(v) for v, _ in g.updates}
        writes = []
        for k, (v, u) in enumerate(g.updates):
            if u is v or id(u) in direct:
                continue
            src = self.var[id(u)]
            others = [r for r in self.roots[id(u)] if r in updated and r != id(v)]
            if others:        # the new value may share memory with another updated variable
                out.append(f"    u{k} = xp.array({src})")
                src = f"u{k}"
            writes.append(f"    xp.copyto({self.var[id(v)]}, {src})   # update {v.label()}")
        rets, seen = [], set()
        for o in g.outputs:        # each a fresh array: a plan buffer's value is copied out
            name = self.var[id(o)]
            rets.append(name if id(o) in self.fresh and name not in seen else f"xp.array({name})")
            seen.add(name)
        if writes:        # outputs are copied first: they are values from before the updates
            out.append(f"    result = [{', '.join(rets)}]")
            out.append("    # updates: every new value is computed; write them in place")
            out += [] if held else ["    hold()"]
            out += writes
            out.append("    return result")
        else:
            out.append(f"    return [{', '.join(rets)}]")
        return out

    def inplace_target(self, n: Node, i: int, owner: dict) -> str | None:
        """A dying input's buffer the step may overwrite while reading it (elementwise)."""
        if id(n) in self.gemms:
            return self.gemm_target(n, i, owner)
        if n.op == "fused":
            return self.fused_inplace_target(n, i, owner)
        if not rules.inplace_ok(n, lambda x: self.shapes[id(x)][0]):
            return None
        for x in n.inputs:
            r = id(x)
            if r in owner and self.roots[r] == (r,) and self.last[r] == i \
                    and self.shapes[r] == self.shapes[id(n)] and self.pool.owns(owner[r]) \
                    and self.same_layout(n, owner[r]):
                return owner[r]
        return None

    def gemm_target(self, n: Node, i: int, owner: dict) -> str | None:
        """The buffer of c that a GEMM step c + alpha a @ b may write over: c dies here, has
        the result's shape and shares no memory with a or b (BLAS reads them while it
        writes)."""
        _, d, c, _, _ = self.gemms[id(n)]
        r = id(c)
        if n.op != "div" and r in owner and self.roots[r] == (r,) and self.last[r] == i \
                and self.shapes[r] == self.shapes[id(n)] \
                and self.pool.owns(owner[r]) and self.same_layout(n, owner[r]) \
                and not any(r in self.roots[id(x)] for x in d.inputs[:2]):
            return owner[r]
        return None

    def emit_gemm(self, n: Node, a: list[str], o: str) -> str:
        """c + alpha op(a) @ op(b) in one BLAS call over c's memory (the variable or c's dying
        buffer); into any other buffer, the product then the elementwise step. A sum over
        one axis is a GEMV with a ones vector; a vector's mean one dot product."""
        _, d, c, alpha, beta = self.gemms[id(n)]
        prep = f"g{self.index[id(n)]}"
        if n.op == "div":                   # a mean: x @ (1/k, ..., 1/k)
            x = self.var[id(d.inputs[0])]
            shape = self.shapes[id(d.inputs[0])][0]
            flat = self.flat(x, self.index[id(d)]) if len(shape) != 1 else x
            vector = self.const(np.full(math.prod(shape), alpha, n.dtype))
            note = f"  # {flat} = {x}.reshape(-1), made once per plan" if flat[0] == "h" else ""
            return f"xp.matmul({flat}, {vector}, out={o}){note}"
        if d.op == "sum":
            x = self.var[id(d.inputs[0])]
            ta = rules.vector_sum(self, d)
            rows = self.shapes[id(d.inputs[0])][0][0 if ta else 1]
            if o == self.var[id(c)]:
                ones = self.const(np.ones(rows, d.dtype))
                self.ns[prep] = self.prepared(blas.prepare_gemv, (o, x, ones), ta, alpha, beta)
                return f"xp.gemv({o}, {x}, {ones}, {ta}, {alpha!r}, {beta!r}, {prep})"
            p = self.var[id(d)] = self.product_buffer(n, d, o)
            step = lowering.code(self, n, [self.var[id(v)] for v in n.inputs], o)
            if p != o:
                self.give(p)
            return f"{rules.sum_code(self, d, [x], p)}; {step}"
        x, y = (self.var[id(v)] for v in d.inputs[:2])
        ta, tb = bool(d.attrs.get("transpose_a")), bool(d.attrs.get("transpose_b"))
        if o == self.var[id(c)]:
            self.ns[prep] = self.prepared(blas.prepare, (o, x, y), ta, tb, alpha, beta)
            return f"xp.gemm({o}, {x}, {y}, {ta}, {tb}, {alpha!r}, {beta!r}, {prep})"
        if d is n:                  # a dense whose bias has its shape: its own code
            return lowering.code(self, n, a, o)
        p = self.var[id(d)] = self.product_buffer(n, d, o)
        product = f"xp.matmul({x}{'.T' if ta else ''}, {y}{'.T' if tb else ''}, out={p})"
        step = lowering.code(self, n, [self.var[id(v)] for v in n.inputs], o)
        if p != o:
            self.give(p)
        return f"{product}; {step}"

    def product_buffer(self, n: Node, d: Node, o: str) -> str:
        """Where a GEMM step that cannot write over c puts its product: o when the step is
        one op (c ± d reads d before writing o); a fused body (k * c - d) may write o before
        it reads d, which then read k * c (a momentum velocity as an output came back 0), so
        a scratch buffer, given back at once."""
        return o if n.op != "fused" else self.take(*self.shapes[id(d)])

    def prepared(self, prepare, names: tuple, *flags) -> blas.Prepared:
        """A BLAS step's prepared call, made now when its arrays are the plan's own (variables,
        buffers, constants, views hoisted from them: the ones every call passes), as the first
        call would make it. The first call of a big plan then makes no ctypes objects (~14
        tracked per step: at 100k nodes their count started the collector's walks of every
        young and old object inside that call)."""
        prep = blas.Prepared()
        arrays = [self.plan_array(name) for name in names]
        if all(a is not None for a in arrays):
            prep["seen"] = prepare(*arrays, *flags)
        return prep

    def plan_array(self, name: str):
        """The array a name of the generated code holds on every call, when the plan owns it;
        None for a feed or a step's new value."""
        if name[0] == "w":
            box = self.ns.get(f"box{name[1:]}")
            return None if box is None else box[0]
        value = self.ns.get(name) if name[0] in "bckh" else None
        return value if isinstance(value, np.ndarray) else None

    def flat(self, x: str, i: int) -> str:
        """x.reshape(-1): made once when x is a plan-owned array it views (a hoisted view, as
        view steps make them), else per call."""
        expr = f"{x}.reshape(-1)"
        if x[0] in "bckh" and x in self.ns and np.may_share_memory(eval(expr, self.ns),
                                                                   self.ns[x]):
            self.ns[f"h{i}"], self.views[f"h{i}"] = eval(expr, self.ns), expr
            return f"h{i}"
        return expr

    # code of one step ------------------------------------------------------------------
    def emit(self, n: Node, i: int, o: str | None, kind: str) -> str:
        a = [self.var[id(x)] for x in n.inputs]
        name = f"v{i}"
        self.var[id(n)] = name
        if id(n) in self.absorbed:
            return f"pass  # computed by the step of %{self.index[id(self.absorbed[id(n)])]}"
        if kind == "view":
            expr = rules.view_code(self, n, a)
            if a[0][0] in "bckh" or n.op == "size":   # a view of a plan-owned array (other
                # inputs of a view are read for their shape only), or a size: maybe made once
                value = eval(expr, self.ns)
                if self.true_view(value, a, n):
                    self.var[id(n)] = hoisted = f"h{i}"
                    self.ns[hoisted] = value
                    self.views[hoisted] = expr
                    return f"pass  # {hoisted} = {expr}, made once per plan"
            return f"{name} = {expr}"
        if o is None:
            return f"{name} = {self.kernel_ref(n, i)}({', '.join(a)})"
        self.var[id(n)] = o
        if id(n) in self.gemms:
            return self.emit_gemm(n, a, o)
        return lowering.code(self, n, a, o)

    def true_view(self, value, a: list[str], n: Node) -> bool:
        """Whether a view step's result, made now, stays right on every call: it shares memory
        with the array it views, which a call may write (a reshape of a transpose or a
        broadcast is a copy; made once, it would keep the values of plan build time). Graph
        constants never change, and `size` is a plan constant."""
        if n.op == "size":
            return True
        return a[0].startswith("c") or np.may_share_memory(value, self.ns[a[0]])

    def kernel_ref(self, n: Node, i: int) -> str:
        opdef = OPS[n.op]
        attrs = dict(n.attrs)
        if opdef.random:
            attrs["rng"] = self.rngs.setdefault(id(n), np.random.default_rng(n.attrs.get("seed")))
        if n.op == "scan":        # the body runs through its own plan, made once
            attrs["step"] = self.loops[id(n)] = loop.body_step(n.attrs["body"], self.check)
        fname = f"{n.op}_{i}"
        kernel = functools.partial(opdef.kernel, **attrs) if attrs else opdef.kernel
        if n.op in USER_OPS and not opdef.items:
            ins = [types.SimpleNamespace(shape=self.shapes[id(x)][0]) for x in n.inputs]
            rule = rule_shape(n, ins)      # open dims: the plan's shape is the dry run's
            kernel = functools.partial(checked_kernel, kernel, n, self.shapes[id(n)][0],
                                       rule=None if all(isinstance(d, int) for d in rule)
                                       else rule)
        self.ns[fname] = kernel
        return fname


def lower(graph: Graph, inputs: list[Node], shapes: dict, check_numerics: bool = False,
          rngs: dict | None = None, tag: str = "") -> Plan:
    """The plan for one signature: generated source compiled into a function."""
    low = Lowering(graph, inputs, shapes, check_numerics, {} if rngs is None else rngs)
    source, steps = low.build()
    ns = low.ns
    ns["check"] = check_step(steps, low.names)
    exec(compile(source, f"<graphc plan {tag}>", "exec"), ns)
    return Plan(source, ns["run"], steps, low.kinds, ns=ns, loops=low.loops, views=low.views,
                notes=low.notes, names=low.names, layouts=low.layouts,
                busy=[False] if runs_user_code(graph) else None)


def runs_user_code(graph: Graph) -> bool:
    """Whether a graph's kernels include a user's (in a fused group or loop body too): only
    such code can call the Function back while its plan's buffers are in use."""
    return bool(USER_OPS) and any(   # none registered: no walk (0.15 s at 100k nodes)
        n.op in USER_OPS or any(isinstance(v, Graph) and runs_user_code(v)
                                for v in n.attrs.values()) for n in graph.nodes)
