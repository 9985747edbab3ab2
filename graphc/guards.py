"""Guards around graph work: the locks of variables' storage (compiled calls and `.value`
assignment hold them) and the garbage collector's pause over big graph transformations.
Part of the IR layer (re-exported by graphc.ir)."""
from __future__ import annotations

import contextlib
import gc
import itertools
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphc.ir import Node


_storage_locks: dict[int, tuple[int, threading.RLock]] = {}   # array id -> (rank, lock)
_storage_guard = threading.Lock()
_lock_ranks = itertools.count()        # the one global order in which calls take locks
_ranked: weakref.WeakValueDictionary = weakref.WeakValueDictionary()   # rank -> every lock
_fork = {"watching": False, "held": [], "missed": []}   # locks over a fork (_before_fork)
FORK_WAIT = 10.0     # seconds a fork waits for running calls; their locks are then reset


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
            ranked(*entry)
            for a in fresh:
                _storage_locks[id(a)] = entry
                weakref.finalize(a, _storage_locks.pop, id(a), None)
        entries = {e[0]: e[1] for e in (_storage_locks[k] for k in arrays)}
    return [entries[rank] for rank in sorted(entries)]


def call_lock() -> threading.RLock:
    """The lock of a Function without variables (its plans' buffers), ranked and carried over
    a fork as the storage locks are."""
    with _storage_guard:
        lock = threading.RLock()
        ranked(next(_lock_ranks), lock)
    return lock


def ranked(rank: int, lock) -> None:
    """Note a lock (caller holds _storage_guard); the first one starts watching forks."""
    if not _fork["watching"] and hasattr(os, "register_at_fork"):
        _fork["watching"] = True
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                            after_in_child=lambda: _after_fork(child=True))
    _ranked[rank] = lock


def _before_fork() -> None:
    """Take every lock, in rank order, so no call is half way when the process forks: a lock
    held by another thread at the fork stayed held in the child for ever (its first call
    hung), and its variables could be half updated. The guard is taken last (a call building a
    plan may need it while holding a lock) and held into the fork, so no lock is new. A lock
    not free within FORK_WAIT (a fork from inside a call, another call waiting on it) is reset
    in the child instead: its holder is not there."""
    taken: dict = {}
    missed: list = []
    deadline = time.monotonic() + FORK_WAIT
    while True:
        _storage_guard.acquire()
        new = sorted((r, lock) for r, lock in _ranked.items() if r not in taken)
        if not new:
            break
        _storage_guard.release()
        for r, lock in new:           # ranks only grow: later ones come after, in order
            if lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                taken[r] = lock
            else:
                taken[r] = None
                missed.append(lock)
    _fork["held"] = [lock for _, lock in sorted(taken.items()) if lock is not None]
    _fork["missed"] = missed


def _after_fork(child: bool = False) -> None:
    """Give back what _before_fork took (parent and child); reset what it missed (child)."""
    for lock in reversed(_fork["held"]):
        lock.release()
    if child:
        for lock in _fork["missed"]:
            lock._at_fork_reinit()
    _fork["held"], _fork["missed"] = [], []
    _storage_guard.release()


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
