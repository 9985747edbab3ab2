"""What big plans skip or share to compile fast keeps what a user reads: the source's
listing comments (printed when asked), errors naming the failing step."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import format_node
from graphc.runtime import emit
from tests.test_runtime_lowering import chain_of_blocks


@pytest.mark.parametrize("blocks", [3, emit.SHARED_MIN + 2])
def test_a_plans_comments_are_printed_when_its_source_is_read(blocks):
    """The compiled code has each step's comment line blank; `source` has the printed node
    there, inside the step's lines, and is otherwise the compiled code (with and without
    shared functions moving the steps down)."""
    x, loss, params, grads = chain_of_blocks(blocks)
    f = gc.function([x], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    f(np.ones((2, 3)))
    plan = f.last_plan
    code, source = plan.code.split("\n"), f.source.split("\n")
    assert len(code) == len(source) and len(plan.notes) == len(plan.steps) > 3 * blocks
    names = {id(n): f"%{i}" for i, n in enumerate(f.graph.nodes)}
    for (node, first, last), at in zip(plan.steps, plan.notes):
        assert first - 1 <= at < last and code[at] == ""
        assert source[at] == f"    # {format_node(node, names)}"
    notes = set(plan.notes)
    assert all(a == b for k, (a, b) in enumerate(zip(code, source)) if k not in notes)
    assert ("    def shared0(" in f.source) == (blocks > emit.SHARED_MIN)
