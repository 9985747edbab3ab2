"""Loops in compiled plans: a scan's body is compiled once into a Function of its own, whose
plan (and buffers) every step reuses; the scan kernel calls it once per step. The body runs as
it is in the graph: `optimize` has already optimized the bodies of an optimized graph."""
from __future__ import annotations

from typing import Callable


def body_step(body, check_numerics: bool = False) -> Callable[[list], list]:
    """step(values) -> the body's outputs, through the body's own compiled plan."""
    from graphc.runtime.function import Function       # function.py imports this module
    fn = Function(list(body.inputs), list(body.outputs), optimize=False,
                  check_numerics=check_numerics)
    return fn.call           # the enclosing call holds the locks: none per step
