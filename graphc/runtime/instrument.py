"""Instruments for compiled plans: the numerics check and the per-step profiler."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from graphc.ir import GraphcError, format_node, format_shape

if TYPE_CHECKING:                 # program.py imports this module
    from graphc.ir import Graph
    from graphc.runtime.plan import Plan


def check_step(steps: list, names: dict):
    """The check(value, k) function of check_numerics mode: k is the step, or a string
    naming the feed or variable checked before the first step."""
    def check(value, k):
        if not np.all(np.isfinite(value)):
            kind = "NaN" if np.isnan(value).any() else "Inf"
            if isinstance(k, str):
                raise GraphcError(f"check_numerics: {k} holds {kind}")
            raise GraphcError(f"check_numerics: step {k} produced {kind}: "
                              f"{step_text(steps[k][0], names)}")
    return check


def step_text(node, names: dict) -> str:
    """A step as check_numerics names it: the node, the non-finite constants it reads (a NaN
    the user wrote is not the step's fault; a fused step's constants are in its body), and
    the user's line."""
    text = format_node(node, names)
    body = node.attrs.get("body") if node.op == "fused" else None
    for c in dict.fromkeys(list(node.inputs) + (body.nodes if body is not None else [])):
        if c.op == "constant" and c.dtype.kind in "fc" and not np.all(np.isfinite(c.data)):
            kind = "NaN" if np.isnan(c.data).any() else "Inf"
            text += (f"\n  reading a constant {format_shape(c.shape)} {c.dtype.name} that "
                     f"holds {kind} (built at {c.where})")
    return f"{text}\n  at {node.where}"


def holder(n) -> str:
    """A feed or a variable as check_numerics names it."""
    what = "the feed for placeholder" if n.op == "placeholder" else "variable"
    return f"{what} {n.label()} {format_shape(n.shape)} {n.dtype.name} (built at {n.where})"


def profile_run(plan: Plan, args: list) -> list[float]:
    """Run the plan once with a timer around every step; seconds per step."""
    if plan.profile_run is None:
        lines = plan.source.splitlines()
        out, marks = [], {}
        for k, (node, first, stop) in enumerate(plan.steps):
            marks[first] = k
        k_open = None
        for ln, text in enumerate(lines, start=1):
            if ln in marks:
                if k_open is not None:
                    out.append(f"    T[{k_open}] += clock() - t0")
                k_open = marks[ln]
                out.append("    t0 = clock()")
            if text.startswith(("    # updates", "    return", "    result =")):
                if k_open is not None:
                    out.append(f"    T[{k_open}] += clock() - t0")
                    k_open = None
            out.append(text)
        ns = dict(plan.ns)
        ns["clock"] = time.perf_counter
        plan.profile_source = "\n".join(out) + "\n"
        exec(compile(plan.profile_source, "<graphc profile>", "exec"), ns)
        plan.profile_run = ns["run"]
        plan.profile_ns = ns
    T = [0.0] * len(plan.steps)
    plan.profile_ns["T"] = T
    plan.profile_run(*args)
    return T


def profile_table(graph: Graph, plan: Plan, times: list[float], runs: int = 1) -> str:
    names = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
    total = sum(times) or 1e-12
    rows = [f"{'step':>4}  {'ms':>8}  {'%':>5}  node"]
    kinds: dict[str, float] = {}
    for k, ((node, _, _), t) in enumerate(zip(plan.steps, times)):
        kinds[node.op] = kinds.get(node.op, 0.0) + t
        line = format_node(node, names)
        rows.append(f"{k:>4}  {t * 1e3:8.3f}  {100 * t / total:5.1f}  {line[:90]}")
        body = plan.loops.get(id(node))
        if body is not None and body.steps:       # counted over the profiled runs
            rows.append(f"{'':>4}  {'':>8}  {'':>5}    {body.steps // runs} steps of its body, "
                        f"{body.seconds / body.steps * 1e3:.3f} ms per step")
    rows += ["", f"{'op':<28}  {'ms':>8}  {'%':>5}"]
    for op, t in sorted(kinds.items(), key=lambda kv: -kv[1]):
        rows.append(f"{op:<28}  {t * 1e3:8.3f}  {100 * t / total:5.1f}")
    rows.append(f"{'total':<28}  {total * 1e3:8.3f}")
    return Table("\n".join(rows))


class Table(str):
    """Text that shows itself as the table it is at the prompt, not as an escaped string."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        """Jupyter: each block of the text as an HTML table (columns split at 2+ spaces)."""
        import html
        import re
        out = []
        for block in str(self).split("\n\n"):
            lines = [line.strip() for line in block.split("\n") if line.strip()]
            width = len(re.split(r"\s{2,}", lines[0])) if lines else 1
            rows = [re.split(r"\s{2,}", line, maxsplit=width - 1) for line in lines]
            cells = ["<tr>" + "".join(f"<t{'h' if k == 0 else 'd'}>{html.escape(c)}</t"
                                      f"{'h' if k == 0 else 'd'}>" for c in row) + "</tr>"
                     for k, row in enumerate(rows)]
            out.append("<table>" + "".join(cells) + "</table>")
        return "".join(out)
