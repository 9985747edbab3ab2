"""Code templates: how one elementwise node becomes NumPy code that writes into a given buffer.

An elementwise op whose registered kernel is a NumPy ufunc needs nothing here: its template is
derived from the kernel (`xp.log1p({0}, out={o})`; `xp` is the backend namespace, backend.py),
so adding such an op is its declaration and a test row. `SPECIAL` holds the templates of the
elementwise ops whose kernel is not a ufunc. Every template reads each input before it first
writes `{o}`, or reads it only through `{o}`. `{one}`, `{zero}` are 0-d arrays of the
op's dtype (a Python scalar operand costs NumPy a conversion); `{zeros}` is an array of zeros
of the result's shape.
"""
from __future__ import annotations

import re

import numpy as np

from graphc.ir import OPS
from graphc.runtime.backend import xp

SPECIAL = {
    "sigmoid": ("xp.negative({0}, out={o}); xp.exp({o}, out={o}); xp.add({o}, {one}, out={o}); "
                "xp.divide({one}, {o}, out={o})"),
    # {zeros}: zeros of the result's shape (a scalar operand misses NumPy's SIMD loop)
    "relu": "xp.maximum({0}, {zeros}, out={o})",
    "softplus": "xp.logaddexp({zero}, {0}, out={o})",
    "where": "xp.copyto({o}, {2}); xp.copyto({o}, {1}, where={0})",
    "cast": "xp.copyto({o}, {0}, casting='unsafe')",
}

# ops whose template may not write {o} while {o} is one of the inputs
NOT_INPLACE = {"where", "cast"}


def ufunc_of(op: str):
    """The NumPy ufunc an elementwise op's kernel is (one output, reachable as xp.<name>)."""
    opdef = OPS.get(op)
    kernel = getattr(opdef, "kernel", None)
    if opdef is None or not opdef.elementwise or not isinstance(kernel, np.ufunc) \
            or kernel.nout != 1 or getattr(xp, kernel.__name__, None) is not kernel:
        return None
    return kernel


_templates: dict[str, tuple] = {}    # op -> (its OpDef when looked up, template)


def template(op: str) -> str | None:
    """The statements computing op into {o} from {0}, {1}..; None: no compiled form.
    Remembered per op (a plan asks for every body node several times) while the op's
    declaration is the same."""
    opdef = OPS.get(op)
    hit = _templates.get(op)
    if hit is not None and hit[0] is opdef:
        return hit[1]
    out = _templates[op] = (opdef, find_template(op))
    return out[1]


def find_template(op: str) -> str | None:
    if op in SPECIAL:
        return SPECIAL[op]
    uf = ufunc_of(op)
    if uf is None:
        return None
    args = ", ".join(f"{{{k}}}" for k in range(uf.nin))
    return f"xp.{uf.__name__}({args}, out={{o}})"


def inplace_ok(op: str) -> bool:
    """Whether the template may write {o} while {o} is also an input (a pure ufunc pass)."""
    return op not in NOT_INPLACE and template(op) is not None


def kernel_call_ok(node) -> bool:
    """An elementwise op without a template still compiles in a fused group: its kernel
    computes a new array that is copied into {o} (not for random ops or ops with attrs)."""
    opdef = OPS.get(node.op)
    return opdef is not None and opdef.elementwise and not opdef.random and not node.attrs


def ufunc_ok(node, in_dtypes, in_group: bool = False) -> bool:
    """Whether the template computes exactly what the kernel does: inputs that NumPy promotes
    to the result's dtype, so the ufunc picks the kernel's loop (a float32 input of a float64
    product is widened exactly by either); a comparison whose kernel is the ufunc itself
    (NumPy picks its loop from the inputs alone: x32 > y64 compares in float64 either way);
    `where` whose branches copy into the result as NumPy's where converts them. In a fused
    group, an op without a template calls its kernel (`kernel_call_ok`); alone, such a node
    is a kernel step (no copy)."""
    if template(node.op) is None:
        return in_group and kernel_call_ok(node)
    if node.op == "cast":
        return True
    if node.op == "where":
        return np.result_type(*in_dtypes[1:]) == node.dtype
    if node.dtype == bool:
        return len(set(in_dtypes)) == 1 or ufunc_of(node.op) is not None
    return all(d == node.dtype for d in in_dtypes) or np.result_type(*in_dtypes) == node.dtype


def why_not(node, in_dtypes) -> str:
    """Why an elementwise node has no compiled form here (for the plan's report)."""
    if template(node.op) is None:
        if kernel_call_ok(node):
            return f"{node.op} has no ufunc template: its kernel is called"
        return f"{node.op} has no template (its kernel is not a NumPy ufunc) and " \
               f"{'is random' if OPS[node.op].random else 'has attributes'}"
    names = ", ".join(np.dtype(d).name for d in in_dtypes)
    return f"mixed dtypes ({names} -> {node.dtype.name})"


def ufunc(op: str, args: list[str], o: str, scalars: dict) -> str:
    return template(op).format(*args, o=o, **scalars)


# sharing the code of repeated fused steps --------------------------------------------------

SHARED_MIN = 16     # a step's code repeated this often becomes one local function
# a plan's own names (x0, w3, b12, c7_2, k4, h9, v5): not an attribute, keyword or in a string
PLAN_NAME = re.compile(r"(?<![\w.'\"])([a-z]\d+(?:_\d+)?)\b(?![\w'\"=(])")
PARAMS = tuple(f"p{k}" for k in range(64))     # a shared function's parameters


def share_repeats(lines: list[str], at: list[int]) -> list[str]:
    """Steps (their code at lines[i] for i in `at`, several statements each) whose code is
    the same up to the plan names it reads and writes, SHARED_MIN times or more, call one
    local function defined once: `shared0(b1, w4, b2)` for `xp.multiply(b1, w4, out=b2);
    xp.tanh(b2, out=b2)`. Python's compile() of a big plan costs ~20 us per statement (its
    largest part at 100k nodes), while the call adds ~0.1 us per step to a run. Rewrites those
    lines; returns the definitions, to go at the top of `run`. (Code that assigns a name,
    ` = `, stays inline: in a function the name would be local.)"""
    uses: dict[str, list] = {}
    split = PLAN_NAME.split
    for i in at:
        code = lines[i][4:]
        if "; " not in code or " = " in code:
            continue
        parts = split(code)
        used = parts[1::2]
        param = dict(zip(dict.fromkeys(used), PARAMS))     # name -> its parameter, in order
        if len(param) == len(PARAMS):
            continue
        parts[1::2] = map(param.__getitem__, used)
        uses.setdefault("".join(parts), []).append((i, param))
    defs: list[str] = []
    for template, found in uses.items():
        if len(found) < SHARED_MIN:
            continue
        fname = f"shared{len(defs) // 2}"
        params = ", ".join(PARAMS[:len(found[0][1])])
        defs += [f"    def {fname}({params}):", f"        {template}"]
        for i, names in found:
            lines[i] = f"    {fname}({', '.join(names)})"
    return defs
