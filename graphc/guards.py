"""Guards around graph work: the locks of variables' storage (compiled calls and `.value`
assignment hold them) and the garbage collector's pause over big graph transformations.
Part of the IR layer (re-exported by graphc.ir)."""
from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphc.ir import Node


_storage_locks: dict[int, tuple[int, threading.RLock]] = {}   # array id -> (rank, lock)
_storage_guard = threading.Lock()
_lock_ranks = itertools.count()        # the one global order in which calls take locks


def storage_lock(var: Node) -> threading.RLock:
    """The lock of a variable's storage (one per array, shared by every rebuilt copy of the
    node): compiled calls reading or updating it and `.value` assignment hold it."""
    entry = _storage_locks.get(id(var.data[0]))
    return entry[1] if entry is not None else storage_locks([var])[0]


def storage_locks(variables) -> list[threading.RLock]:
    """The storage locks of `variables` in the global order calls take them in. Arrays that
    have no lock yet share one new lock: a Function's own variables cost one acquire per call
    (an array keeps its lock, so a later Function sharing some of them takes that one too)."""
    arrays = {id(v.data[0]): v.data[0] for v in variables}
    with _storage_guard:
        fresh = [a for k, a in arrays.items() if k not in _storage_locks]
        if fresh:
            entry = (next(_lock_ranks), threading.RLock())
            for a in fresh:
                _storage_locks[id(a)] = entry
                weakref.finalize(a, _storage_locks.pop, id(a), None)
        entries = {e[0]: e[1] for e in (_storage_locks[k] for k in arrays)}
    return [entries[rank] for rank in sorted(entries)]


_gc_pause = {"depth": 0, "was_enabled": False}
_gc_guard = threading.Lock()


@contextlib.contextmanager
def paused_gc():
    """Python's cyclic collector off while a graph is differentiated, optimized or lowered:
    those make ~10 objects per node and no cycles worth collecting, and the collector's walks
    over every live node were ~20 % of the time on big graphs. Nested and threaded pauses
    share one count, so the collector comes back on (if it was on) when the last one ends."""
    with _gc_guard:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_guard:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()
