"""Calls that other threads and Ctrl-C cannot tear: locks and a deferred KeyboardInterrupt.

A compiled call holds its Function's lock (plan buffers are shared by calls) and the storage
lock of every variable it reads or writes, taken in one global order so two Functions that share
variables never deadlock. The write phase of the updates (from the first write into a variable
to the last) and the taking and giving back of locks run "held": a Ctrl-C that arrives then is
kept and raised when the phase is over, so variables are all old or all new; one that comes
while a lock is waited for (another thread's call holds it) gives back the locks taken.

Python runs signal handlers in the main thread only, so only the main thread holds interrupts.
The SIGINT handler is wrapped (once, the first time a plan is built in the main thread) by one
that defers while held and otherwise calls the handler it replaced; a handler installed later
by the user replaces it and the write phase is then as interruptible as any Python code.
"""
from __future__ import annotations

import signal
import threading

MAIN = threading.main_thread().ident
_MAIN = MAIN
get_ident = threading.get_ident


class _State:
    held = False          # the main thread is in a phase that must not be interrupted
    pending = None        # (signum, frame) of an interrupt that came while held


STATE = _State()


def hold() -> None:
    """From here until `release`, a Ctrl-C waits (main thread; other threads get none)."""
    if get_ident() == _MAIN:
        STATE.held = True


def release() -> None:
    """End of a held phase: raise the interrupt that came during it, if any."""
    if get_ident() == _MAIN:
        STATE.held = False
        if STATE.pending is not None:
            raise_pending()


def raise_pending() -> None:
    """Hand the deferred interrupt to the handler it was meant for (raises KeyboardInterrupt
    with Python's default handler)."""
    signum, frame = STATE.pending
    STATE.pending = None
    _deferring.previous(signum, frame)


def _deferring(signum, frame):
    if STATE.held:
        STATE.pending = (signum, frame)
    else:
        _deferring.previous(signum, frame)


_deferring.previous = signal.default_int_handler


def install() -> None:
    """Wrap the current Python SIGINT handler (nothing to do in other threads, or when SIGINT
    is ignored or left to the system)."""
    if get_ident() != _MAIN:
        return
    current = signal.getsignal(signal.SIGINT)
    if current is _deferring or not callable(current):
        return
    _deferring.previous = current
    try:
        signal.signal(signal.SIGINT, _deferring)
    except ValueError:       # not the main interpreter
        _deferring.previous = signal.default_int_handler


def acquire(locks: list) -> None:
    """Take the locks in order and stay held (a Ctrl-C between two of them would leak the
    first): the caller calls `release` inside the try whose finally calls `give_back`."""
    hold()
    for k, lock in enumerate(locks):
        if not lock.acquire(False):
            wait(locks, k)


POLL = 0.05     # seconds between looks for a Ctrl-C while waiting for another thread's call


def wait(locks: list, k: int) -> None:
    """Take locks[k], held by another thread's call, while locks[:k] are taken and the main
    thread is held: a Ctrl-C that comes meanwhile gives back locks[:k] and is raised. A
    blocking acquire kept it pending until that call ended (never, for a call that hangs)."""
    lock, main = locks[k], get_ident() == _MAIN
    while not lock.acquire(timeout=POLL):
        if main and STATE.pending is not None:
            for taken in reversed(locks[:k]):
                taken.release()
            STATE.held = False
            raise_pending()


def give_back(locks: list) -> None:
    """Release the locks (in reverse order), held; then raise a deferred Ctrl-C, if any."""
    hold()
    for lock in reversed(locks):
        lock.release()
    release()
