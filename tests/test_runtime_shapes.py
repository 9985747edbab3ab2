"""Plans learn concrete shapes from the shape rules; the dry run of the kernels is the
fallback for shapes that need values. Both must agree wherever the rules answer."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph
from graphc.runtime import shapes
from tests.helpers import leaves_for
from tests.test_ops import ROWS


def rule_and_run_shapes(outputs, leaves, arrays):
    graph = Graph(outputs)
    feeds = {id(p): a for p, a in zip(leaves, arrays)}
    try:
        by_rules = shapes.infer(graph, {k: a.shape for k, a in feeds.items()})
    except shapes.ValueDependent:
        return None, None
    return by_rules, shapes.discover(graph, feeds)


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_shape_rules_give_the_kernels_shapes_on_every_row(row):
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    outputs = [out]
    floats = [leaf for leaf, a in zip(leaves, row.inputs) if a.dtype.kind == "f"]
    if row.grad and floats and out.dtype.kind == "f":
        outputs += gc.grad(gc.sum(out), floats)
    by_rules, by_run = rule_and_run_shapes(outputs, leaves, row.inputs)
    assert by_rules == by_run


def test_a_batch_size_the_graph_never_saw_is_resolved_by_the_rules():
    x = gc.placeholder((None, 1, None, None), "float64", "x")
    k = gc.constant(np.ones((2, 1, 3, 3)))
    y = gc.reshape(gc.max_pool2d(gc.relu(gc.conv2d(x, k)), 2), (-1, 8))
    f = gc.function([x], [y, gc.grad(gc.sum(y * y), [x])[0]])
    v = np.random.default_rng(0).normal(size=(3, 1, 6, 6))
    by_rules, by_run = rule_and_run_shapes(list(f.graph.outputs), f.inputs, [v])
    assert by_rules is not None and by_rules == by_run
    got = f(v)
    np.testing.assert_allclose(got[0], y.eval({x: v}))
