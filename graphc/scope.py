"""Where nodes are being built: the layer name scope, the forward node whose gradient is being
built, and the user's own file:line (every node records it, so errors point at user code).
Part of the IR layer (re-exported by graphc.ir)."""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphc.ir import Node

_context = contextvars.ContextVar("graphc_context", default=((), None))
_PKG_DIR = os.path.dirname(os.path.abspath(__file__))   # the graphc package
_line_mark = contextvars.ContextVar("graphc_line_mark", default=(None, ""))


def name_scope(name: str):
    """Nodes built inside get `name` appended to their scope (layers use this for grouping).
    A str: name_scope(3) or (None) saved a graph gc.load refused, and broke render(collapse)
    and inspect."""
    if not isinstance(name, str):
        from graphc.opdef import GraphcError
        raise GraphcError(f"name_scope: the name must be a str, got {name!r}\n"
                          f"  at {user_line()}")
    return _name_scope(name)


@contextlib.contextmanager
def _name_scope(name: str):
    scope, grad_of = _context.get()
    token = _context.set((scope + (name,), grad_of))
    try:
        yield
    finally:
        _context.reset(token)


class backward_of:  # noqa: N801 (used as a function: `with backward_of(node):`)
    """Nodes built inside are gradient nodes of the forward node `node`. (A class, not a
    generator context manager: grad enters one per forward node, at a third of the cost.)"""
    __slots__ = ("node", "token")

    def __init__(self, node: Node):
        self.node = node

    def __enter__(self) -> None:
        scope, _ = _context.get()
        self.token = _context.set((scope, self.node))

    def __exit__(self, *exc) -> None:
        _context.reset(self.token)


_BASENAMES: dict[str, str] = {}    # file path -> its base name (every node built asks)


def context_grad_of() -> Node | None:
    """The forward node that nodes built now are gradient nodes of (`backward_of`), or None."""
    return _context.get()[1]


def user_line() -> str:
    """file:line of the innermost frame outside the graphc package."""
    frame = sys._getframe(1)
    mark, line = _line_mark.get()
    while frame is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
        if frame is mark:
            return line
        frame = frame.f_back
    return frame_line(frame)


def frame_line(frame) -> str:
    """file:line of a frame; "<unknown>" for None (no frame outside graphc)."""
    if frame is None:
        return "<unknown>"
    path = frame.f_code.co_filename
    base = _BASENAMES.get(path)
    if base is None:
        base = _BASENAMES[path] = os.path.basename(path)
    return f"{base}:{frame.f_lineno}"


class lines_below:  # noqa: N801 (used as a function: `with lines_below(frame):`)
    """Inside, user_line() reaching `frame` (a graphc frame) answers that frame's user line,
    found once on entry: a gradient walk builds thousands of nodes, and each one walked the
    same frames above the walk and formatted the same text."""
    __slots__ = ("frame", "token")

    def __init__(self, frame):
        self.frame = frame

    def __enter__(self) -> None:
        frame = self.frame
        while frame is not None and frame.f_code.co_filename.startswith(_PKG_DIR):
            frame = frame.f_back          # user_line's walk, from self.frame
        self.token = _line_mark.set((self.frame, frame_line(frame)))

    def __exit__(self, *exc) -> None:
        _line_mark.reset(self.token)
        self.frame = None
