"""A plan's generated entry: the Function's whole call by one plan when the feeds fit it (the
feed guard, the locks, NumPy's errors off, the plan's code inlined, a failing step named), and
the errors of a call's steps. Made per plan by `entries`; runtime/function.py calls it first.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import TYPE_CHECKING

import numpy as np

from graphc.ir import Graph, GraphcError, format_node
from graphc.runtime import atomic
from graphc.runtime.plan import Plan
from graphc.scope import frame_line

if TYPE_CHECKING:
    from graphc.runtime.function import Function

try:    # np.errstate(all="ignore") made once: NumPy >= 2 keeps it in a context variable, and
    # building an errstate per call costs ~2 us of a ~80 us small step
    from numpy._core._ufunc_config import _extobj_contextvar as _ERRSTATE
    with np.errstate(all="ignore"):
        _QUIET = _ERRSTATE.get()
except (ImportError, AttributeError):    # another NumPy: a fresh errstate per call
    _ERRSTATE = _QUIET = None


def step_error(graph: Graph, steps: list, e: Exception, entry=None,
               offset: int | None = None) -> GraphcError:
    """graphc's error for a plan step that raised: the step, its node, the user's line. The
    step is found by the line of run's frame (a step's shared code is a call), or of the
    plan's entry code `entry`, whose line offset + k is run's line k."""
    tb, line = e.__traceback__, None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename.startswith("<graphc plan") and code.co_name == "run":
            line = tb.tb_lineno
        elif code is entry:
            line = tb.tb_lineno - offset
        tb = tb.tb_next
    names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
    for k, (node, first, last) in enumerate(steps):
        if line is not None and first <= line <= last:
            return GraphcError(f"step {k} failed at run time: {type(e).__name__}: {e}\n"
                               f"  {format_node(node, names)}\n  at {node.where}")
    return GraphcError(f"compiled function failed: {type(e).__name__}: {e}")


MISS = object()        # an entry's answer to feeds that are not its plan's usual ones


def no_entry(args):
    """A Function's entry before its first plan: every call takes the general path."""
    return MISS


def feed_guard(sig: tuple, dtypes: tuple, fn: Function, names: dict) -> str:
    """A test made for one plan that a call's feeds `_a` can run it as they are: arrays of
    exactly its shapes and dtypes, none of them (a view of) a variable the call updates (a
    feed of a shape no updated variable has cannot be one's own array). One generated
    expression: a loop over the feeds costs a small step several us more, most of it cache
    misses after the step's own arrays have gone through the cache."""
    names.update(_nd=np.ndarray, _updated=fn.updated)
    tests = [f"len(_a) == {len(sig)}"]
    for k, (dt, shape) in enumerate(zip(dtypes, sig)):
        names[f"_d{k}"] = dt
        a = f"_a[{k}]"
        tests.append(f"type({a}) is _nd and {a}.dtype is _d{k} and {a}.shape == {shape}")
        if fn.updated:
            tests.append(f"{a}.base is None")
            if shape in fn.updated_shapes:
                tests.append(f"id({a}) not in _updated")
    return " and ".join(tests)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reentered() -> GraphcError:
    """A call of a plan's Function from inside a call of that plan (a user's kernel calling
    it): the locks let the same thread in, and the call wrote over the buffers the first
    call was still reading (its results silently wrong)."""
    frame = sys._getframe(1)      # past graphc's frames and its generated code's (entries)
    while frame is not None and frame.f_code.co_filename.startswith(("<graphc", _PACKAGE)):
        frame = frame.f_back
    where = frame_line(frame)
    return GraphcError(f"a Function was called from inside its own call (by a user's "
                       f"kernel it runs) with feeds of the same shapes: that call would write "
                       f"over the buffers the first one is using; call another Function "
                       f"(gc.function of the same graph) there\n  at {where}")


INLINE_LINES = 400    # a plan this short gets its run's code inlined into its entry


def entries(fn: Function, plan: Plan, sig: tuple) -> tuple:
    """Two functions generated for a plan: `accepts(feeds)`, whether the feeds can run it as
    they are (`feed_guard`), and `entry(feeds)`, the Function's whole call by this plan --
    the guard (MISS when it fails), the locks in their global order with Ctrl-C held while
    taking and giving them back, NumPy's errors off, the plan's code, a failing step named,
    the result in the Function's form. After a real step's arrays went through the cache,
    each Python frame and object of the call path misses it: one function touches fewest, so
    a short plan's code is inlined (a long one's `run` is called: its compile() would double).
    The entry's own names start with an underscore (the plan's never do)."""
    names: dict = {"_run": plan.run, "_MISS": MISS, "_GraphcError": GraphcError,
                   "_get_ident": atomic.get_ident, "_MAIN": atomic.MAIN,
                   "_state": atomic.STATE, "_raise_pending": atomic.raise_pending,
                   "_form": fn.form, "_wait": atomic.wait, "_locks": fn.locks}
    guard = feed_guard(sig, fn.dtypes, fn, names)
    for k, lock in enumerate(fn.locks):
        names[f"_lock{k}"] = lock
    source = plan.code.splitlines()     # comments blank: a big plan's are not printed
    inline = len(source) <= INLINE_LINES and source[-1].startswith("    return ")
    if inline:
        names.update(plan.ns)
        args = source[0][len("def run("):-2]
        run = [f"            {args}, = _a" if args else "            pass"]   # run's line 1
        for line in source[1:-1]:
            run.append("        " + ("    if _main: _state.held = True"    # the write phase
                                     if line == "    hold()" else line))
        run.append("            _out = " + source[-1][len("    return "):])
    else:
        run = ["            _out = _run(*_a)"]
    if _ERRSTATE is None:
        names["_errstate"] = np.errstate
        body = ["        with _errstate(all='ignore'):", *run]
    else:
        names.update(_quiet=_ERRSTATE.set, _loud=_ERRSTATE.reset, _QUIET=_QUIET)
        body = ["        _token = _quiet(_QUIET)", "        try:", *run, "        finally:",
                "            _loud(_token)"]
    ret = "_out[0]" if fn.single else "_form(_out)" if fn.form is tuple else "_out"
    busy = []
    if plan.busy is not None:      # a plan running a user's code: a call from inside is refused
        names.update(_busy=plan.busy, _reentered=reentered)
        busy = ["    _mine = False", "        if _busy[0]:", "            raise _reentered()",
                "        _busy[0] = _mine = True", "        if _mine:",
                "            _busy[0] = False"]
    lines = ["def accepts(_a):", f"    return {guard}", "",
             "def entry(_a):", f"    if not ({guard}):", "        return _MISS",
             "    _main = _get_ident() == _MAIN", "    if _main:", "        _state.held = True",
             *[f"    if not _lock{k}.acquire(False): _wait(_locks, {k})"
               for k in range(len(fn.locks))], *busy[:1], "    try:",
             "        if _main:", "            _state.held = False",
             "            if _state.pending is not None:", "                _raise_pending()",
             *busy[1:4], *body, "    except _GraphcError:", "        raise",
             "    except Exception as _e:", "        raise _failed(_e) from None", "    finally:",
             *busy[4:], "        if _main:", "            _state.held = True",
             *[f"        _lock{k}.release()" for k in reversed(range(len(fn.locks)))],
             "        if _main:", "            _state.held = False",
             "            if _state.pending is not None:", "                _raise_pending()",
             f"    return {ret}"]
    exec(compile("\n".join(lines) + "\n", "<graphc entry>", "exec"), names)
    entry = names["entry"]
    offset = lines.index(run[0]) if inline else None   # entry's line offset + k: run's k
    names["_failed"] = functools.partial(step_error, fn.graph, plan.steps,
                                         entry=entry.__code__ if inline else None,
                                         offset=offset)
    return names["accepts"], entry
