"""Graph-to-graph passes and `optimize`, which runs a pipeline (a plain list) of them.

rewrite.py: the one rule driver (with hash-consing CSE); algebra.py: folding, CSE, dead code,
simplification rules; stability.py: stabilization rules and `stable_grad`; fuse.py: fusion.

Every rewrite pass also merges common subexpressions (the driver hash-conses nodes), and
stabilize/simplify include the folding rules, so fold_constants and
eliminate_common_subexpressions need no slot of their own in the default pipeline.

Default order, and why:
  1. eliminate_dead_code   - work only on what outputs and updates need
  2. stabilize             - first, while naive patterns are intact (simplify rules run too)
  3. simplify              - identities, VJP leftovers, canonical order, folding, CSE
     push_scalar_factors   - a constant factor (the learning rate) rides a gradient's linear
                             chain down to its scalar seed: updates become one subtract
  4. fuse_dense            - before elementwise fusion, which would swallow bias adds;
                             relu masks read the activation so relu joins the dense node
  5. fuse_elementwise      - last: fused bodies hide their ops from every rule (first,
                             softplus(z) and sigmoid(z) of one z get shared parts: the
                             groups then share them as their outputs)
  6. eliminate_dead_code
  7. prune_loops           - last: loops whose carries no gradient reads stop saving them
Every pass also runs inside loop bodies; unroll_loops (first) inlines loops of <= 4 static
steps, which then take part in every later rewrite like any other nodes.
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from graphc.ir import Graph, GraphcError, as_graph, lines_below, paused_gc
from graphc.passes.fuse import fuse_dense, fuse_elementwise
from graphc.passes.rewrite import Rule, RewriteError, counting, rewrite, same_shape
from graphc.passes.algebra import eliminate_common_subexpressions, eliminate_dead_code, \
    fold_constants, simplify
from graphc.passes.stability import stabilize, stable_grad
from graphc.passes.loops import into_bodies, prune_loops, unroll_loops
from graphc.passes.scalars import push_scalar_factors
from graphc.scope import user_line

Pass = Callable[[Graph], Graph]

DEFAULT_PIPELINE: list[Pass] = [eliminate_dead_code, unroll_loops, stabilize, simplify,
                                push_scalar_factors, fuse_dense, fuse_elementwise,
                                eliminate_dead_code, prune_loops]

__all__ = ["optimize", "Report", "DEFAULT_PIPELINE", "Rule", "RewriteError", "rewrite",
           "same_shape", "fold_constants", "eliminate_common_subexpressions",
           "eliminate_dead_code", "simplify", "stabilize", "stable_grad", "fuse_dense",
           "fuse_elementwise", "unroll_loops", "prune_loops", "push_scalar_factors"]


@dataclass
class Report:
    """What `optimize` did: per pass (name, nodes before, nodes after, seconds), rule counts."""
    passes: list[tuple[str, int, int, float]] = field(default_factory=list)
    rules: Counter = field(default_factory=Counter)

    def __str__(self) -> str:
        lines = [f"{'pass':<34} {'nodes':>13} {'ms':>8}"]
        for name, before, after, sec in self.passes:
            lines.append(f"{name:<34} {before:>6} -> {after:<5} {sec * 1e3:>8.1f}")
        lines += [f"  {name}: {n}" for name, n in sorted(self.rules.items())]
        return "\n".join(lines)


def pass_list(passes) -> list[Pass]:
    """The passes given to optimize (gc.function's optimize=[...]): functions Graph -> Graph
    or the names the Report shows them by. optimize=["simplify"] or a bare pass raised a
    TypeError ('str' object is not callable) from inside the pipeline."""
    named = {name: globals()[name] for name in __all__ if name not in NOT_PASSES}
    try:
        items = None if isinstance(passes, str) or callable(passes) else list(passes)
    except TypeError:
        items = None
    if items is None:
        raise GraphcError(f"optimize must be True, False or a list of passes, got {passes!r}"
                          f"; the passes: {', '.join(named)}\n  at {user_line()}")
    out = []
    for p in items:
        p = named.get(p, p) if isinstance(p, str) else p
        if not callable(p):
            raise GraphcError(f"optimize: {p!r} is not a pass (a function Graph -> Graph, or "
                              f"one of {', '.join(named)})\n  at {user_line()}")
        out.append(p)
    return out


NOT_PASSES = {"optimize", "Report", "DEFAULT_PIPELINE", "Rule", "RewriteError", "rewrite",
              "same_shape", "stable_grad"}


def optimize(outputs_or_graph, passes: Sequence[Pass] | None = None, report: bool = False):
    """The optimized Graph (and a Report when report=True); passes=None: DEFAULT_PIPELINE."""
    graph = as_graph(outputs_or_graph, "optimize")
    passes = None if passes is None else pass_list(passes)
    rep = Report()
    # nodes the rules build record the user's line: found once here, not per node
    with counting(rep.rules), paused_gc(), lines_below(sys._getframe()):
        for p in DEFAULT_PIPELINE if passes is None else passes:
            start, before = time.perf_counter(), len(graph.nodes)
            graph = into_bodies(p, graph)      # loop bodies are optimized the same way
            rep.passes.append((getattr(p, "__name__", repr(p)), before, len(graph.nodes),
                               time.perf_counter() - start))
    return (graph, rep) if report else graph
