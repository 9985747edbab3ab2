"""Instruments for compiled plans: the numerics check and the per-step profiler."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from graphc.ir import GraphcError, format_node, format_shape

if TYPE_CHECKING:                 # program.py imports this module
    from graphc.runtime.program import Plan


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
