"""The compiled `Function`: checks feeds, picks the plan for their shapes, runs it, updates.

A plan is built on the first call with each feed-shape signature (the shape rules resolve
every shape -- a dry run of the kernels when a shape needs values -- then the graph is lowered
to generated NumPy code) and cached for later calls: the PLAN_CACHE most recently used
signatures (a plan holds its buffers; a loop over many batch sizes must not grow forever).
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Sequence

import numpy as np

from graphc.guards import call_lock
from graphc.ir import (Graph, GraphcError, Node, check_feed, format_node, format_shape,
                       paused_gc, storage_locks, _repr_svg)
from graphc.runtime import atomic
from graphc.runtime.entry import _ERRSTATE, _QUIET, MISS, entries, no_entry, reentered, \
    step_error
from graphc.runtime.instrument import Table, profile_run, profile_table
from graphc.runtime.plan import Plan
from graphc.runtime.program import lower
from graphc.runtime.shapes import resolve
from graphc.scope import frame_line, user_line


# plans kept per Function, least recently used evicted first (documented in the README)
PLAN_CACHE = 32


def optimize_graph(graph: Graph, optimize):
    """(optimized graph, report) from the pass pipeline (default, or the given list of
    passes); the graph itself and report None when not optimizing."""
    if optimize is False or optimize is None:
        return graph, None
    try:
        from graphc.passes import optimize as run_passes
    except ImportError:        # the passes package is not there yet: run as built
        return graph, None
    passes = None if optimize is True else optimize     # passes.pass_list checks it
    return run_passes(graph, passes=passes, report=True)


class Function:
    """A compiled graph: call it with one array per input; returns the outputs' values.

    `graph` is the optimized graph it runs, `original` the graph as built, `report` what the
    passes did (rules fired, nodes per pass; None when compiled with optimize=False)."""

    def __init__(self, inputs: Sequence[Node], outputs, updates=(), optimize=True,
                 check_numerics: bool = False, cast_feeds: bool = False):
        single = isinstance(outputs, Node)
        try:
            outs = [outputs] if single else list(outputs)
        except TypeError:
            raise GraphcError(f"function outputs must be a graph node or a list of them, got "
                              f"{outputs!r}") from None
        inputs = [inputs] if isinstance(inputs, Node) else list(inputs)
        for k, x in enumerate(inputs):
            if not isinstance(x, Node) or x.op != "placeholder":
                raise GraphcError(f"function inputs must be placeholders, got {x!r}")
            if any(x is y for y in inputs[:k]):
                raise GraphcError(f"placeholder {x.label()} is an input twice (built at "
                                  f"{x.where})")
        for o in outs:
            if not isinstance(o, Node):
                raise GraphcError(f"function outputs must be graph nodes, got {o!r}")
        if updates is None:
            updates = ()
        try:
            updates = list(updates.items()) if isinstance(updates, dict) else list(updates)
        except TypeError:
            raise GraphcError(f"updates must be a dict or a list of (variable, new value) "
                              f"pairs, got {updates!r}") from None
        seen: set[int] = set()
        for pair in updates:
            check_update(pair)
            if id(pair[0]) in seen:
                raise GraphcError(f"variable {pair[0].label()} is updated twice (built at "
                                  f"{pair[0].where})")
            seen.add(id(pair[0]))
        self.inputs, self.single = inputs, single
        self.form = tuple if isinstance(outputs, tuple) else list   # returned as given
        self.check_numerics, self.cast_feeds = check_numerics, cast_feeds
        self.original = Graph(outs, updates)        # as built: render(fn, compare=True)
        self.graph, self.report = optimize_graph(self.original, optimize)
        missing = [p for p in self.graph.placeholders if not any(p is x for x in inputs)]
        if missing:
            p = missing[0]
            raise GraphcError(f"placeholder {p.label()} {format_shape(p.shape)} is needed "
                              f"but is not an input of the function (built at {p.where})")
        self.plans: OrderedDict[tuple, Plan] = OrderedDict()   # LRU, at most PLAN_CACHE
        self.rngs: dict[int, np.random.Generator] = {}
        self.last_plan: Plan | None = None
        self.entry = no_entry              # the last plan's own call (`entries`)
        # a call holds its variables' storage locks, in one global order (atomic.py), and so
        # also excludes other calls of this Function (its plans' buffers); without variables,
        # a lock of its own. Variables compiled together share one lock (ir.storage_locks).
        # Feeds that share memory with an updated variable are copied first (every update is
        # computed before any is written)
        self.locks = storage_locks(self.graph.variables) or [call_lock()]
        self.takes = [lock.acquire for lock in self.locks]
        self.gives = [lock.release for lock in reversed(self.locks)]
        self.updated = {id(v.data[0]) for v, _ in self.graph.updates}
        self.updated_shapes = {v.data[0].shape for v, _ in self.graph.updates}
        self.dtypes = tuple(ph.dtype for ph in inputs)

    # feeds -----------------------------------------------------------------------------
    def feeds(self, args) -> list[np.ndarray]:
        if len(args) != len(self.inputs):
            names = ", ".join(ph.label() for ph in self.inputs)
            raise GraphcError(f"function takes {len(self.inputs)} inputs ({names}), "
                              f"got {len(args)}\n  at {user_line()}")
        out = []
        for ph, value in zip(self.inputs, args):
            if self.cast_feeds and isinstance(value, np.ndarray) and value.dtype != ph.dtype \
                    and np.can_cast(value.dtype, ph.dtype, "same_kind"):
                value = value.astype(ph.dtype)
            out.append(check_feed(ph, value))
        sizes: dict = {}
        for ph, arr in zip(self.inputs, out):
            for d, n in zip(ph.shape, arr.shape):
                if isinstance(d, str):     # a named dim must be the same size everywhere
                    if sizes.setdefault(d, n) != n:
                        raise GraphcError(f"feed for placeholder {ph.label()}: dimension "
                                          f"{d!r} is {n} here but {sizes[d]} in another feed"
                                          f"\n  at {user_line()}")
        return out

    def fast_plan(self, args) -> Plan | None:
        """The cached plan when every feed already is an array of the right dtype and of a
        signature seen before (so it passed the full check then)."""
        dtypes = self.dtypes
        if len(args) != len(dtypes):
            return None
        for a, dt in zip(args, dtypes):
            if type(a) is not np.ndarray or (a.dtype is not dt and a.dtype != dt):
                return None
        sig = tuple([a.shape for a in args])
        plan = self.plans.get(sig)
        if plan is not None:
            self.plans.move_to_end(sig)
            self.last_plan, self.entry = plan, plan.entry
        return plan

    def plan_for(self, feeds: list[np.ndarray]) -> Plan:
        sig = tuple(a.shape for a in feeds)
        plan = self.plans.get(sig)
        if plan is None:
            atomic.install()
            with paused_gc():      # a big plan makes many small objects and no cycles
                shapes = resolve(self.graph, {id(p): a for p, a in zip(self.inputs, feeds)})
                try:
                    plan = lower(self.graph, self.inputs, shapes, self.check_numerics,
                                 self.rngs, tag=" x ".join(map(format_shape, sig)))
                except MemoryError:
                    raise out_of_memory(self.graph, shapes, sig) from None
                del shapes    # freed before the collector is back on: not walked at its end
            plan.accepts, plan.entry = entries(self, plan, sig)
            self.plans[sig] = plan
            while len(self.plans) > PLAN_CACHE:
                self.plans.popitem(last=False)      # the least recently used
        else:
            self.plans.move_to_end(sig)
        self.last_plan, self.entry = plan, plan.entry
        return plan

    # calling ---------------------------------------------------------------------------
    def __call__(self, *args):
        out = self.entry(args)      # the last plan's whole call when the feeds fit it
        if out is MISS:
            out = self.locked_call(args)
        return out

    def locked_call(self, args):
        """A call by the general path: feeds converted and checked, the plan for their
        shapes found or built, under the locks."""
        # atomic.acquire / release / give_back, inlined
        main, state = atomic.get_ident() == atomic.MAIN, atomic.STATE
        if main:
            state.held = True          # a Ctrl-C between two acquires would leak the first
        for k, take in enumerate(self.takes):
            if not take(False):              # another thread's call holds it: a Ctrl-C
                atomic.wait(self.locks, k)   # while waiting is raised, not kept until then
        try:
            if main:
                state.held = False
                if state.pending is not None:
                    atomic.raise_pending()     # a Ctrl-C that came while taking the locks
            result = self.call(args)
        finally:
            if main:
                state.held = True
            for give in self.gives:
                give()
            if main:
                state.held = False
                if state.pending is not None:
                    atomic.raise_pending()
        return result[0] if self.single else self.form(result)

    def call(self, args) -> list:
        """One call without taking locks (the caller holds them, or, for a loop body called
        by its scan step, the enclosing call does): the list of outputs."""
        plan = self.last_plan
        if plan is None or not plan.accepts(args):     # the usual call is as the last one
            plan = self.fast_plan(args)
            if plan is None:
                args = self.feeds(args)
                plan = self.plan_for(args)
            if self.updated:
                args = self.unshared(args)
        busy = plan.busy
        if busy is not None:
            if busy[0]:
                raise reentered()
            busy[0] = True
        try:
            if _ERRSTATE is None:
                with np.errstate(all="ignore"):
                    return plan.run(*args)       # holds Ctrl-C from its first update write
            token = _ERRSTATE.set(_QUIET)
            try:
                return plan.run(*args)
            finally:
                _ERRSTATE.reset(token)
        except GraphcError:
            raise
        except Exception as e:
            raise self.step_error(plan, e) from None
        finally:
            if busy is not None:
                busy[0] = False

    def unshared(self, feeds) -> list:
        """The feeds, each copied when it is (a view of) a variable this call updates."""
        updated = self.updated
        for a in feeds:              # the usual case: arrays that own their memory
            if a.base is not None or id(a) in updated:
                break
        else:
            return feeds
        out = list(feeds)
        for k, a in enumerate(out):
            base = a
            while isinstance(base, np.ndarray):
                if id(base) in self.updated:
                    out[k] = a.copy()
                    break
                base = base.base
            else:
                if base is not None and any(np.may_share_memory(a, v.data[0])
                                            for v, _ in self.graph.updates):
                    out[k] = a.copy()       # a view of foreign memory: compare bounds
        return out

    def step_error(self, plan: Plan, e: Exception) -> GraphcError:
        return step_error(self.graph, plan.steps, e)

    # looking inside --------------------------------------------------------------------
    @property
    def source(self) -> str:
        """The generated code of the latest plan (a plan for batch size 1 if never called)."""
        if self.last_plan is None:
            with self.locks[0]:
                try:
                    self.plan_for([dummy_feed(p) for p in self.inputs])
                except GraphcError as e:   # x + c of (None, 3), (5, 3): size 1 is refused
                    raise GraphcError(f"{e}\n(Function.source and plan_report show the plan of "
                                      "the latest call; before any call, the plan of size 1 "
                                      "for each unknown dim, which this Function cannot run: "
                                      "call it once first)") from None
        return self.last_plan.source

    def export(self, path, *example) -> str:
        """Write the plans of the shapes it has run (and of the example feeds' shapes) as a
        Python module at `path` that needs only NumPy, its arrays in an .npz beside it:
        `import step; step.run(x, y)`, `step.state` (runtime/export.py)."""
        from graphc.runtime.export import export
        return export(self, path, example)

    def plan_report(self) -> str:
        """How the latest plan runs each step: steps per kind (buffer: NumPy calls writing a
        planned buffer; view; kernel: a call of the op's kernel), and every kernel step with
        the reason it is not compiled (a fused group through the interpreter is one)."""
        if self.last_plan is None:
            self.source            # noqa: B018  (makes a plan for batch size 1)
        plan = self.last_plan
        names = {id(n): f"%{i}" for i, n in enumerate(self.graph.nodes)}
        counts: dict[str, int] = {}
        rows = []
        for k, ((node, _, _), (kind, why)) in enumerate(zip(plan.steps, plan.kinds)):
            counts[kind] = counts.get(kind, 0) + 1
            if why:
                rows.append(f"  step {k}: {format_node(node, names)[:70]}\n    {kind}: {why}")
        head = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        return Table(f"{len(plan.steps)} steps: {head}" + ("\n" + "\n".join(rows) if rows
                                                         else ""))

    def profile(self, *args, repeat: int = 1) -> str:
        """Run (updates included) with a timer around every step; a table per step and per
        op kind. With repeat > 1, each step's best time over the runs."""
        feeds = self.feeds(args)
        atomic.acquire(self.locks)
        try:
            atomic.release()
            plan = self.plan_for(feeds)
            feeds = self.unshared(feeds) if self.updated else feeds
            runs = []
            for body in plan.loops.values():      # loop bodies count steps from here
                body.steps, body.seconds = 0, 0.0
            for _ in range(max(1, repeat)):
                with np.errstate(all="ignore"):
                    runs.append(profile_run(plan, feeds))
                atomic.release()       # each run holds Ctrl-C in its write phase
        finally:
            atomic.give_back(self.locks)
        return profile_table(self.graph, plan, [min(ts) for ts in zip(*runs)], len(runs))

    def _repr_svg_(self) -> str | None:
        return _repr_svg(self)                    # Jupyter: None shows the text repr

    def __reduce_ex__(self, protocol):
        """A Function holds generated code, plans and locks, none of which pickles: pickle
        failed on "attribute lookup run on __main__", deepcopy on "_thread.RLock". What
        travels is its graph (gc.save, as graphc.distributed ships it) or its plans as a
        module (Function.export)."""
        frame = sys._getframe(1)        # the user's line: below copy.deepcopy's frames
        while frame is not None and frame.f_globals.get("__name__") in ("copy", "copyreg"):
            frame = frame.f_back
        raise GraphcError("a compiled Function cannot be pickled or deep-copied: save its "
                          "graph (gc.save) and compile it again, or export its plans "
                          f"(Function.export)\n  at {frame_line(frame)}")

    def __copy__(self) -> Function:
        """copy.copy: another handle on the same plans, locks and variables, as before."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __repr__(self) -> str:
        return (f"<Function {len(self.inputs)} inputs, {len(self.graph.outputs)} outputs, "
                f"{len(self.graph.updates)} updates, {len(self.graph.nodes)} nodes>")


def check_update(pair) -> None:
    try:
        var, new = pair
    except (TypeError, ValueError):
        raise GraphcError(f"updates must be (variable, new value) pairs, got {pair!r}") from None
    if not isinstance(var, Node) or var.op != "variable":
        raise GraphcError(f"update target must be a variable, got {var!r}")
    if not isinstance(new, Node):
        raise GraphcError(f"update of {var.label()}: the new value must be a node, got {new!r}")
    if new.shape != var.shape or new.dtype != var.dtype:
        raise GraphcError(f"update of {var.label()} {format_shape(var.shape)} "
                          f"{var.dtype.name}: new value has {format_shape(new.shape)} "
                          f"{new.dtype.name} (built at {new.where})")


def out_of_memory(graph: Graph, shapes: dict, sig: tuple) -> GraphcError:
    """A plan whose buffers do not fit in memory (a huge batch): NumPy's MemoryError named an
    array of uint8 (the buffers' arena), not a value; name the largest value and its line."""
    def size(n: Node) -> int:
        shape, dtype = shapes[id(n)]
        return int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize

    big = max((n for n in graph.nodes if id(n) in shapes), key=size)
    names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
    shape = format_shape(shapes[id(big)][0])
    return GraphcError(f"the plan for feeds {', '.join(map(format_shape, sig))} does not fit "
                       f"in memory: its largest value is {shape} {big.dtype.name} "
                       f"({size(big) / 2 ** 30:.3g} GiB)\n  {format_node(big, names)}\n"
                       f"  at {big.where}\n  (called at {user_line()})")


def dummy_feed(ph: Node) -> np.ndarray:
    return np.zeros([d if isinstance(d, int) else 1 for d in ph.shape], ph.dtype)


def function(inputs, outputs, updates=(), optimize=True, check_numerics: bool = False,
             cast_feeds: bool = False) -> Function:
    """Compile `outputs` (a node or a list) and `updates` into a callable Function."""
    with paused_gc():          # graphs and locks of a big graph: no cycles to collect
        return Function(inputs, outputs, updates, optimize, check_numerics, cast_feeds)
