"""Memory planning: which values may share memory, when a buffer is free again, which update
may be written straight into its variable.

It works on plain step descriptions (what a step makes, what it reads, whether it writes a
planned buffer or returns a fresh array or a view), so its rules are tested without graphs:
a buffer is reused once the last reader of every value that may alias it has run; views keep
their base alive; feeds, variables and constants are never handed out as buffers; an update
writes into its variable only after every read of the variable and every step that can raise.
"""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from graphc.runtime.layout import empty


class Step(NamedTuple):
    """One step of a plan: the value `key` it makes from the values `reads`. kind: "buffer"
    (writes a planned buffer), "fresh" (returns a new array), "view" (may alias its reads).
    (A named tuple: a plan makes one per node, and a frozen dataclass costs 3x as much.)"""
    key: int
    reads: tuple
    kind: str


def liveness(steps: list[Step], kept) -> tuple[dict, dict]:
    """roots: value -> the values owning memory it may alias (a leaf, a buffer or a fresh
    array is its own root; a view has its reads' roots); last: root -> index of the last step
    reading any value with that root (len(steps) for kept values: outputs, update values)."""
    end = len(steps)
    last_use: dict = {}
    for i, s in enumerate(steps):
        for x in s.reads:
            last_use[x] = i
    for k in kept:
        last_use[k] = end
    roots: dict = {}
    for s in steps:
        for x in s.reads:           # leaves (feeds, variables, constants) own their memory
            roots.setdefault(x, (x,))
        if s.kind == "view" and s.reads:
            roots[s.key] = tuple(sorted({r for x in s.reads for r in roots[x]}))
        else:
            roots[s.key] = (s.key,)
    last: dict = {}
    for key, rs in roots.items():
        for r in rs:
            last[r] = max(last.get(r, -1), last_use.get(key, -1))
    return roots, last


def endings(last: dict, count: int) -> list[list]:
    """Per step index, the roots whose last reader that step is: `dying` of a plan's steps
    without a walk over every read's roots at each step (a root read last at step i is one
    of the roots of a value step i reads)."""
    out: list[list] = [[] for _ in range(count)]
    for r, i in last.items():
        if 0 <= i < count:
            out[i].append(r)
    return out


def by_name(name: str) -> tuple:
    return len(name), name


def dying(i: int, owner: dict, ends: list) -> list[str]:
    """The buffers whose last reader is step i (they may be reused from the next take on), in
    the order of their names (`b2` before `b10`): keys are id()s, whose order differs from run
    to run, and the pool hands the last one given back out first. ends: `endings(last, n)`."""
    return sorted([owner[r] for r in ends[i] if r in owner], key=by_name)


class Pool:
    """Buffers by (shape, dtype, layout): `take` reuses a given-back one or allocates; `give`
    takes back only the pool's own buffers (a feed, variable or constant name is ignored).
    layout: None (C order) or layout.LAST (channels-last memory, runtime/layout.py); a buffer
    goes back only to a value of its own layout (a reshape of a channels-last one copies)."""

    def __init__(self, ns: dict, prefix: str = "b"):
        self.ns, self.prefix = ns, prefix
        self.free: dict[tuple, list[str]] = {}
        self.count = 0
        self.layouts: dict[str, str] = {}     # buffer name -> its layout, when not C order

    def take(self, shape, dtype, layout=None) -> str:
        key = (tuple(shape), np.dtype(dtype).str, layout)
        if self.free.get(key):
            return self.free[key].pop()
        name = f"{self.prefix}{self.count}"
        self.count += 1
        self.ns[name] = empty(shape, dtype, layout)
        if layout is not None:
            self.layouts[name] = layout
        return name

    def owns(self, name: str) -> bool:
        return name.startswith(self.prefix) and name[len(self.prefix):].isdigit()

    def give(self, name: str) -> None:
        if not self.owns(name):
            return
        arr = self.ns[name]
        key = (arr.shape, arr.dtype.str, self.layouts.get(name))
        self.free.setdefault(key, []).append(name)


class Update(NamedTuple):
    """An update as the planner sees it: variable `var` gets the value `value`, made by step
    `index` (a buffer step that may write over its inputs when `elementwise`)."""
    var: int
    value: int
    index: int
    elementwise: bool
    same_shape: bool
    reads: tuple


def direct_updates(updates: list[Update], steps: list[Step], raising: list[int],
                   roots: dict, last: dict, outputs) -> set[int]:
    """The update values whose step may write straight into the variable: the step writes a
    buffer elementwise, comes after every step that can raise (a failing call leaves the
    variables as they were), after every other read of the variable (every update is computed
    before its variable is written), and the value is no output and updates one variable."""
    last_raise = max(raising, default=-1)
    targets = Counter(u.var for u in updates)
    values = Counter(u.value for u in updates)
    outputs = set(outputs)
    direct = set()
    for u in updates:
        i = u.index
        if i < 0 or steps[i].kind != "buffer" or not u.elementwise or not u.same_shape \
                or i <= last_raise or targets[u.var] != 1 or values[u.value] != 1 \
                or u.value in outputs:
            continue
        if last.get(u.var, -1) > i:
            continue
        if last.get(u.var, -1) == i and any(u.var in roots[x] and x != u.var for x in u.reads):
            continue                     # a view of the variable is read by this very step
        direct.add(u.value)
    return direct
