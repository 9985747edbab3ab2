"""Loops in compiled plans: a scan's body is compiled once into a Function of its own, whose
plan (and buffers) every step reuses; the scan kernel calls it once per step. The body runs as
it is in the graph: `optimize` has already optimized the bodies of an optimized graph."""
from __future__ import annotations

import time


class BodyStep:
    """step(values) -> the body's outputs, through the body's own compiled plan; counts the
    steps it ran and their time (what `Function.profile` shows per loop)."""

    def __init__(self, body, check_numerics: bool = False):
        from graphc.runtime.function import Function     # function.py imports this module
        # "steps": a body checks its steps only; its inputs are the loop's, checked outside
        self.fn = Function(list(body.inputs), list(body.outputs), optimize=False,
                           check_numerics="steps" if check_numerics else False)
        self.steps, self.seconds = 0, 0.0

    def __call__(self, values: list) -> list:
        start = time.perf_counter()
        out = self.fn.call(values)   # the enclosing call holds the locks: none per step
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return out


def body_step(body, check_numerics: bool = False) -> BodyStep:
    return BodyStep(body, check_numerics)
