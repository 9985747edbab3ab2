"""A Plan: the generated function for one feed signature, as runtime/program.py's lowering
makes it, with what its lines stand for (steps, kinds, loops, views, layouts) and its listing
printed when a reader asks."""
from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir import Node, format_node
from graphc.runtime import layout


@dataclass
class Plan:
    """The generated function for one feed signature, with what its lines stand for.

    `code` is what was compiled: the source with each step's listing comment left blank
    (same lines). A big plan's ~40k comments cost ~10 us each to print and compile, and
    only a reader of `source` (Function.source, export, the profiler) needs them: they are
    printed when it asks, from the steps' nodes and `notes`."""
    code: str
    run: object
    steps: list                   # (node, first line, last line) per step, in order
    kinds: list = field(default_factory=list)   # (kind, why a kernel) per step
    loops: dict = field(default_factory=dict)   # step node id -> its loop body's BodyStep
    ns: dict = field(default_factory=dict)      # the names the generated code reads
    views: dict = field(default_factory=dict)   # hoisted view name -> its expression
    profile_source: str = ""                    # the same code with a timer per step
    profile_run: object = None
    profile_ns: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)   # per step, its comment's line (from 0)
    names: dict = field(default_factory=dict)   # id(node) -> its name in the comments (%3)
    layouts: dict = field(default_factory=dict)  # id(node) -> its buffer's layout, if not C
    text: str | None = None                     # the source, once printed
    busy: list | None = None     # [True] while a call runs it, for a plan that runs a
                                 # user's code (which may call its Function again)

    @property
    def source(self) -> str:
        """The generated code with every step's printed node above its code."""
        if self.text is None:
            lines = self.code.split("\n")
            names = self.names
            for (n, _, _), at in zip(self.steps, self.notes):
                lines[at] = step_comment(n, names, self.layouts)
            self.text = "\n".join(lines)
        return self.text


def step_comment(n: Node, names: dict, layouts: dict) -> str:
    """A step's listing comment: its printed node, and its buffer's layout when not C order
    (runtime/layout.py)."""
    form = layouts.get(id(n))
    stored = "" if form is None else \
        f"  [stored {'channels-last' if form == layout.LAST else form}]"
    return f"    # {format_node(n, names)}{stored}"
