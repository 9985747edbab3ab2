"""Standalone export: a compiled plan as one Python module that needs only NumPy, plus an .npz
beside it with the plan's constants and the variables' values.

The module is the plan's generated code as it is, with everything its names stand for written
out: the backend namespace `xp` (NumPy's functions and the runtime kernels the code calls,
their source inlined with what they reference), the op kernels some steps call (inlined the
same way), buffers, workspaces, views made once per plan, random generators (their state at
export time) and loop bodies (each its own plan, made by a factory function). Whatever cannot
be written out (a function without source, an object of an unknown kind) is a GraphcError
naming it.
"""
from __future__ import annotations

import functools
import keyword
import os
import re
import textwrap

import numpy as np

from graphc.ir import OPS, GraphcError, checked_kernel, fits, format_node, format_shape
from graphc.runtime import atomic, backend, blas
from graphc.runtime.inline import Writer
from graphc.runtime.instrument import step_text
from graphc.runtime.loop import BodyStep
from graphc.scan import run_steps

# names the module defines around the plans' own names
OWN_NAMES = ("run", "plan", "state", "xp", "check", "ARRAYS", "INPUTS", "UPDATED", "LOCK",
             "PLANS")       # and the functions and the class bound below
BUFFER = re.compile(r"b\d+\Z")


# the module's own helpers: plain functions whose source is written into every export ------

def hold():
    """graphc holds Ctrl-C from a call's first variable write on; this module does not."""


def make_check(steps):
    """check(value, k) of check_numerics mode: stops at the first step that made a NaN/Inf
    (k a string: the feed or variable it names held it)."""
    def check(value, k):
        if not np.all(np.isfinite(value)):
            kind = "NaN" if np.isnan(value).any() else "Inf"
            if isinstance(k, str):
                raise GraphcError(f"check_numerics: {k} holds {kind}")
            raise GraphcError(f"check_numerics: step {k} produced {kind}: {steps[k]}")
    return check


def take_feed(value, name, dtype, updated, cast_feeds=False):
    """A feed as the plans need it: an array of its dtype (with cast_feeds, as the Function
    was compiled, a same-kind cast too); a copy when it shares memory with a variable the
    call updates (every update is computed before any is written)."""
    arr = np.asarray(value)
    if arr.dtype != dtype:
        rule = "same_kind" if cast_feeds else "safe"
        if isinstance(value, np.ndarray) and not np.can_cast(arr.dtype, dtype, rule):
            raise GraphcError(f"feed for {name}: expected dtype {dtype}, got {arr.dtype} "
                              f"(cast it first)")
        with np.errstate(all="ignore"):
            cast = arr.astype(dtype)
        if not isinstance(value, np.ndarray) and not fits(arr, cast):
            raise GraphcError(f"feed for {name}: {value!r} does not fit dtype {dtype}")
        arr = cast
    if any(np.may_share_memory(arr, v) for v in updated):
        arr = arr.copy()
    return arr


def pick_plan(plans, feeds, names):
    """The plan exported for the feeds' shapes (the Function's plan for them)."""
    plan = plans.get(tuple(a.shape for a in feeds))
    if plan is None:
        def shapes(sig):
            return ", ".join(f"{n} {s}" for n, s in zip(names, sig))
        raise GraphcError(f"feeds {shapes([a.shape for a in feeds])}: this module runs "
                          f"{'; '.join(shapes(sig) for sig in plans)} (the shapes the Function "
                          f"had run when exported: export again after a call with these)")
    return plan


def run_scan(*arrays, carries, xs, reverse, length, saves, like, step):
    """A scan step: the loop body's own plan run once per step, as graphc's scan kernel runs
    it (final carries, stacked ys, stacked carries entering each step when `saves`)."""
    init, seqs, caps = arrays[:carries], arrays[carries:carries + xs], arrays[carries + xs:]
    steps = length if not seqs else seqs[0].shape[0]
    carry, ys, saved = run_steps(step, init, seqs, caps, carries, steps, reverse, saves)
    if steps:
        return tuple(carry) + tuple(np.stack(col) for col in zip(*ys)) \
            + (tuple(np.stack(col) for col in zip(*saved)) if saves else ())
    ys_like = like[0]
    if not all(isinstance(d, int) for shape, _ in ys_like for d in shape):
        # shapes known only now: one step on zeros gives them (graphc's scan does the same)
        outs = step(list(init) + [np.zeros(x.shape[1:], x.dtype) for x in seqs] + list(caps))
        ys_like = [(np.shape(y), np.asarray(y).dtype) for y in outs[carries:]]
    return tuple(carry) + tuple(np.empty((0,) + tuple(s), d) for s, d in ys_like) \
        + (tuple(np.empty((0,) + c.shape, c.dtype) for c in init) if saves else ())


def step_error(plan, error):
    """graphc's message for a step that raised: the step, its node, where it was built."""
    tb, line = error.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code is plan.__code__:
            line = tb.tb_lineno - plan.__code__.co_firstlineno + 1
        tb = tb.tb_next
    for k, (first, last, node) in enumerate(plan.steps):
        if line is not None and first <= line <= last:
            return GraphcError(f"step {k} failed at run time: {type(error).__name__}: "
                               f"{error}\n  {node}")
    return GraphcError(f"compiled function failed: {type(error).__name__}: {error}")


class State(dict):
    """name -> a variable's array, which the plans read and update in place; assigning a
    value copies it into that array (a new array would go unseen by the plans)."""

    def __setitem__(self, name, value):
        if name not in self:
            raise GraphcError(f"{name!r} is not a variable of this module (its variables: "
                              f"{', '.join(map(repr, self))})")
        value = np.asarray(value)
        if value.shape != self[name].shape:
            raise GraphcError(f"state[{name!r}] has shape {self[name].shape}, got "
                              f"{value.shape}")
        np.copyto(self[name], value, casting="same_kind")


# the plans ----------------------------------------------------------------------------

class Export:
    """One Function's plan (and its loop bodies' plans) as module text and arrays."""

    def __init__(self, fn, plans: list):
        self.fn, self.plans = fn, plans           # (signature, plan), the main one first
        self.w = Writer(OWN_NAMES + tuple(f"make_plan_{k}" for k in range(len(plans)))
                        + tuple(k for _, plan in plans for k in plan.ns if k != "hold"))
        self.state: dict[int, str] = {}           # id(variable box) -> its name in `state`
        self.boxes: list = []                     # the boxes, in state order
        self.loops = 0
        self.name_variables(fn.graph)

    def name_variables(self, graph) -> None:
        """Each variable's key in `state`: its name (made unique), in graph order; loop
        bodies' variables too."""
        taken = set(self.state.values())
        for n in graph.nodes:
            if n.op == "variable" and id(n.data) not in self.state:
                base = n.name if isinstance(n.name, str) and n.name else f"var{len(taken)}"
                name, k = base, 1
                while name in taken:
                    name, k = f"{base}_{k}", k + 1
                taken.add(name)
                self.state[id(n.data)] = name
                self.boxes.append(n.data)
            for body in (n.attrs.get("body"),) if n.op == "scan" else ():
                self.name_variables(body)

    # one plan's names ------------------------------------------------------------------
    def setup(self, plan, graph, prefix: str) -> list[str]:
        """Lines that make the names a plan's code reads (at module level or in a loop
        body's factory); arrays go to the .npz under prefix + name."""
        names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
        lines = []
        for name, value in plan.ns.items():
            if name in ("__builtins__", "run", "xp", "hold"):
                continue
            ctx = self.context(name, graph, names)
            if name == "check":
                if "    check(" not in plan.source:
                    continue              # check_numerics is off
                steps = [step_text(n, names) for n, _, _ in plan.steps]
                self.w.bind("make_check", make_check, ctx)
                lines.append(f"check = make_check({self.w.expr(steps, ctx)})")
            elif name in plan.views:
                lines.append(f"{name} = {plan.views[name]}   # a view, made once")
            elif re.match(r"box\d+\Z", name):
                lines.append(f"{name} = [state[{self.state[id(value)]!r}]]")
            elif isinstance(value, np.ndarray) and BUFFER.match(name):
                lines.append(f"{name} = {buffer_expr(value, self.w.expr(value.dtype, ctx))}")
            elif isinstance(value, np.ndarray):
                lines.append(f"{name} = {self.w.array(value, ctx, prefix + name)}")
            elif isinstance(value, blas.Prepared):
                lines.append(f"{name} = {{}}   # a GEMM step's call, prepared on the first call")
            elif isinstance(value, dict) and all(isinstance(v, np.ndarray)
                                                 for v in value.values()):
                lines.append(f"{name} = {{}}   # a kernel's workspace, filled on the first call")
            elif isinstance(value, functools.partial) \
                    and isinstance(value.keywords.get("step"), BodyStep):
                lines += self.loop(name, value, ctx)
            elif isinstance(value, functools.partial) and value.func is checked_kernel:
                lines.append(f"{name} = {self.w.expr(value.args[0], ctx)}")  # a user's kernel
            else:
                lines.append(f"{name} = {self.w.expr(value, ctx)}")
        return lines

    @staticmethod
    def context(name: str, graph, names: dict) -> str:
        """What a plan name stands for, for error messages: the step of an op kernel."""
        m = re.match(r"(\w+)_(\d+)\Z", name)
        if m and int(m.group(2)) < len(graph.nodes) \
                and graph.nodes[int(m.group(2))].op == m.group(1):
            n = graph.nodes[int(m.group(2))]
            return f"the kernel of {format_node(n, names)} (built at {n.where})"
        if name.startswith("kernel_"):     # kernel_<op>, or kernel_<op>_<k> for a user's op
            op = name[7:] if name[7:] in OPS else re.sub(r"_\d+\Z", "", name[7:])
            return f"the kernel of op {op!r}"
        return f"the plan's name {name!r}"

    def loop(self, name: str, kernel, ctx: str) -> list[str]:
        """A scan step: its body's plan in a factory function, called by run_scan."""
        body: BodyStep = kernel.keywords["step"]
        plan = body.fn.last_plan
        if plan is None:
            raise GraphcError(f"export: {ctx} is a loop whose body has not been compiled yet: "
                              f"call the Function once before exporting it")
        self.loops += 1
        k, attrs = self.loops, kernel.keywords
        lines = self.factory(f"make_loop_{k}", plan, body.fn.graph, f"loop{k}.",
                             f"The body of the loop {name}: its own plan.",
                             "lambda values: plan(*values)")
        self.w.bind("run_scan", run_scan, ctx)
        outs = attrs["body"].outputs[attrs["carries"]:]
        ins = attrs["body"].inputs[:attrs["carries"]]
        like = (tuple((n.shape, n.dtype.name) for n in outs),
                tuple((n.shape, n.dtype.name) for n in ins))
        args = ", ".join(f"{a}={attrs[a]!r}" for a in ("carries", "xs", "reverse", "length",
                                                         "saves"))
        lines.append(f"{name} = functools.partial(run_scan, {args}, "
                     f"like={self.w.expr(like, ctx)}, step=make_loop_{k}())")
        return lines

    def factory(self, fname: str, plan, graph, prefix: str, doc: str, made: str,
                steps: bool = False) -> list[str]:
        """A function that makes a plan's names and returns `made` (of its `plan`); with
        `steps`, plan.steps: each step's lines in the plan's code and its node (step_error)."""
        inner = self.setup(plan, graph, prefix)
        source = "def plan(" + plan.source.split("def run(", 1)[1]
        lines = [f"def {fname}():", f'    """{doc}"""']
        lines += [textwrap.indent(x, "    ") for x in inner]
        lines += [textwrap.indent(source.rstrip(), "    "), ""]
        if steps:
            names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
            table = [(first, last, f"{format_node(n, names)}\n  at {n.where}")
                     for n, first, last in plan.steps]
            lines.append(f"    plan.steps = {self.w.expr(table, 'the plan')}")
        return lines + [f"    return {made}", "", ""]

    # the module ------------------------------------------------------------------------
    def module(self, title: str) -> str:
        """The module's text: docstring and listing, imports, inlined definitions, the
        arrays and `state`, each plan made by a function (its names and code), and `run`."""
        args = self.arguments()
        setup = []
        for k, (sig, plan) in enumerate(self.plans):
            setup += self.factory(f"make_plan_{k}", plan, self.fn.graph, f"plan{k}.",
                                  f"The plan for {self.shapes_text(args, sig)}.", "plan",
                                  steps=True)
        used = set()
        for _, plan in self.plans:
            for source in [plan.source] + self.body_sources(plan):
                used |= set(re.findall(r"\bxp\.(\w+)", source))
        kernels = [f for f in backend.KERNELS if f.__name__ in used]
        for kind in ("gemm", "gemv"):   # the module finds the BLAS of the NumPy it runs with
            if getattr(blas, kind) in kernels:
                self.w.bind("find_gemm", blas.find_gemm, f"the runtime kernel xp.{kind}")
                self.w.bound[kind.upper()] = getattr(blas, kind.upper())
                arg = repr(kind) if kind != "gemm" else ""
                self.w.defs.append(f"{kind.upper()} = find_gemm({arg})")
        for f in kernels:
            self.w.bind(f.__name__, f, f"the runtime kernel xp.{f.__name__}")
        self.w.bind("hold", hold, "the plan")
        self.w.bind("take_feed", take_feed, "run")
        self.w.bind("pick_plan", pick_plan, "run")
        self.w.bind("State", State, "state")
        self.w.bind("step_error", step_error, "run")
        load = ["", "# constants and the variables' values, saved beside this file",
                "with np.load(os.path.splitext(os.path.abspath(__file__))[0] + '.npz') as _f:",
                "    ARRAYS = {k: _f[k] for k in _f.files}"]
        text = "\n".join(self.head(title, args) + self.w.imports + load) + "\n\n\n" \
            + "\n\n\n".join(d.rstrip() for d in self.w.defs) + "\n\n\n" \
            + "\n".join(self.names(kernels, args) + setup + self.tail(args)) + "\n"
        compile(text, title, "exec")   # a bug here must not write a module that does not import
        return text

    def shapes_text(self, args: list[str], sig) -> str:
        return ", ".join(f"{a} {format_shape(s)} {ph.dtype.name}"
                         for a, ph, s in zip(args, self.fn.inputs, sig))

    def head(self, title: str, args: list[str]) -> list[str]:
        shapes = "; ".join(self.shapes_text(args, sig) for sig, _ in self.plans)
        about = textwrap.wrap(
            f"run({', '.join(args)}) returns what the Function returns: "
            f"{self.outputs_text()}. It runs the plans compiled for {shapes} (the shapes the "
            f"Function had run; other shapes need another export). `state` maps each "
            f"variable's name to its array; calls "
            f"update these arrays in place, as the Function updates its variables "
            f"(state[name] = value copies into them). The arrays (constants, the "
            f"variables' values at export time) are read from {title}.npz beside this "
            f"file.", 92, break_long_words=False, break_on_hyphens=False)
        return [
            f'"""{title}: a graphc Function exported as a standalone NumPy module.',
            "",
        ] + about + [
            '"""',
            "# The graph this module runs (graphc's listing):",
        ] + [f"#   {line}" for line in str(self.fn.graph).splitlines()] + [
            "from __future__ import annotations", "",
        ]

    def names(self, kernels: list, args: list[str]) -> list[str]:
        """xp, `state` (arrays from the .npz), the feeds' shapes."""
        state = ", ".join(f"{name!r}: ARRAYS['var{k}']"
                          for k, name in enumerate(self.state.values()))
        updated = [self.state[id(v.data)] for v, _ in self.fn.graph.updates]
        inputs = tuple((a, ph.dtype.name) for a, ph in zip(args, self.fn.inputs))
        more = "".join(f",\n                           {f.__name__}={f.__name__}"
                       for f in kernels)
        return [
            "# the backend namespace the generated code reaches arrays through (graphc's xp)",
            "xp = types.SimpleNamespace(**{k: v for k, v in vars(np).items() "
            "if isinstance(v, np.ufunc)},",
            "                           array=np.array, broadcast_to=np.broadcast_to, "
            f"copyto=np.copyto, empty=np.empty{more})",
            "",
            "# the variables: name -> array, updated in place by run",
            f"state = State({{{state}}})",
            f"UPDATED = [{', '.join(f'state[{u!r}]' for u in updated)}]",
            f"INPUTS = {inputs!r}",
            "LOCK = threading.Lock()   # a call at a time: the plan's buffers are shared",
            "",
            "# each plan (graphc's Function.source) with the names its code reads: variable",
            "# boxes, buffers, plan constants, views made once, kernels with their attributes",
        ]

    def tail(self, args: list[str]) -> list[str]:
        """The plan's code, and `run`: the Function's call."""
        fn = self.fn
        ret = "out[0]" if fn.single else "tuple(out)" if fn.form is tuple else "out"
        feeds = ", ".join(args) + ("," if len(args) == 1 else "")
        plans = ", ".join(f"{sig!r}: make_plan_{k}()" for k, (sig, _) in enumerate(self.plans))
        return [
            "# feeds' shapes -> the plan for them",
            f"PLANS = {{{plans}}}",
            "", "",
            f"def run({', '.join(args)}):",
            '    """The Function\'s call: checks the feeds, runs the plan for their shapes, '
            'updates `state`."""',
            "    with LOCK, np.errstate(all='ignore'):",
            f"        feeds = [take_feed(v, *spec, UPDATED, {fn.cast_feeds!r}) "
            f"for v, spec in zip(({feeds}), INPUTS)]",
            "        plan = pick_plan(PLANS, feeds, [name for name, _ in INPUTS])",
            "        try:",
            "            out = plan(*feeds)",
            "        except GraphcError:",
            "            raise",
            "        except Exception as e:",
            "            raise step_error(plan, e) from None",
            f"    return {ret}",
        ]

    def body_sources(self, plan) -> list[str]:
        out = []
        for body in plan.loops.values():
            if body.fn.last_plan is not None:
                out += [body.fn.last_plan.source] + self.body_sources(body.fn.last_plan)
        return out

    def arguments(self) -> list[str]:
        """run's parameter names: the placeholders' names where they are free identifiers."""
        out = []
        for k, ph in enumerate(self.fn.inputs):
            name = ph.name if isinstance(ph.name, str) else ""
            taken = set(out) | set(self.w.bound) | {"feeds", "out", "v", "spec"}
            if not name.isidentifier() or keyword.iskeyword(name) or name in taken:
                name, j = f"x{k}", k
                while name in taken:             # x<k> may be another placeholder's name
                    j += 1
                    name = f"x{j}"
            out.append(name)
        return out

    def outputs_text(self) -> str:
        g = self.fn.graph
        names = {id(n): f"%{i}" for i, n in enumerate(g.nodes)}
        items = [f"{names[id(o)]} {format_shape(o.shape)} {o.dtype.name}" for o in g.outputs]
        return items[0] if self.fn.single else f"[{', '.join(items)}]"

    def arrays(self) -> dict[str, np.ndarray]:
        out = {f"var{k}": np.array(box[0]) for k, box in enumerate(self.boxes)}
        out.update(self.w.arrays)
        return out


def loops_compiled(plan) -> bool:
    """Every loop body of the plan (nested ones too) has a plan of its own (it has run)."""
    return all(body.fn.last_plan is not None and loops_compiled(body.fn.last_plan)
               for body in plan.loops.values())


def plan_loops(graph, inputs, feeds, plan) -> None:
    """Plans for the bodies of plan's loops that have not run (example feeds of a shape not
    called yet: "shapes only, nothing runs"), from the shapes their inputs have in the plan;
    each body's own loops after it."""
    if loops_compiled(plan):
        return
    from graphc.runtime.shapes import resolve
    shapes = resolve(graph, {id(p): a for p, a in zip(inputs, feeds)})
    for n in graph.nodes:
        body = plan.loops.get(id(n))
        if body is None or body.fn.last_plan is not None and loops_compiled(body.fn.last_plan):
            continue
        carries, xs = n.attrs["carries"], n.attrs["xs"]
        like = []
        for k, x in enumerate(n.inputs):
            shape, dtype = shapes[id(x)]
            like.append(np.zeros(shape[1:] if carries <= k < carries + xs else shape, dtype))
        body.fn.plan_for(like)
        plan_loops(body.fn.graph, body.fn.inputs, like, body.fn.last_plan)


def export(fn, path, example=()) -> str:
    """Write fn's plan as a standalone module at `path` (.py) and its arrays beside it (.npz):
    the plan of the most recent call, or the plan for the shapes of `example` feeds."""
    path = os.fspath(path)
    if not path.endswith(".py"):
        raise GraphcError(f"export: the module path must end with .py, got {path!r}")
    atomic.acquire(fn.locks)
    try:
        atomic.release()
        if example:
            feeds = fn.feeds(list(example))
            plan = fn.plan_for(feeds)
            plan_loops(fn.graph, fn.inputs, feeds, plan)
        elif fn.last_plan is None:
            raise GraphcError("export: the Function has not been called yet: call it once, or "
                              "give example feeds for the shapes to export "
                              "(fn.export(path, x, y))")
        else:
            plan = fn.last_plan
            if not loops_compiled(plan):    # a loop of zero steps ran no step of its body
                sig = next(s for s, p in fn.plans.items() if p is plan)
                plan_loops(fn.graph, fn.inputs, [np.zeros(shape, ph.dtype) for shape, ph
                                                 in zip(sig, fn.inputs)], plan)
        # the plan asked for first, then the Function's other plans whose loops have run
        plans = [(s, p) for s, p in fn.plans.items() if p is plan]
        plans += [(s, p) for s, p in reversed(fn.plans.items())
                  if p is not plan and loops_compiled(p)]
        job = Export(fn, plans)
        title = os.path.splitext(os.path.basename(path))[0]
        text = job.module(title)
        arrays = job.arrays()
    finally:
        atomic.give_back(fn.locks)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)                     # step.export("out/step.py")
    np.savez(os.path.splitext(path)[0] + ".npz", **arrays)
    with open(path, "w") as f:
        f.write(text)
    return path


def buffer_expr(value: np.ndarray, dtype: str) -> str:
    """A planned buffer in its layout: C order, channels-last or transposed (runtime/layout.py)."""
    if value.ndim == 4 and not value.flags.c_contiguous \
            and value.transpose(0, 2, 3, 1).flags.c_contiguous:
        n, c, h, w = value.shape
        return f"np.empty({(n, h, w, c)}, {dtype}).transpose(0, 3, 1, 2)"
    if value.ndim == 2 and not value.flags.c_contiguous and value.flags.f_contiguous:
        return f"np.empty({value.shape[::-1]}, {dtype}).T"      # stored transposed
    return f"np.empty({value.shape}, {dtype})"
