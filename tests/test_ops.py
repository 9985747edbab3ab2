"""The op table: every row's kernel against its reference, shape rule against the kernel,
gradient against finite differences, the facts ops declare (positive, glue, shape-only inputs)
on the rows; and every registered and contract op has a row."""
import importlib

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS, toposort
from tests.helpers import check_row, leaves_for, verify_grad

CONTRACT = """add sub mul div neg pow exp log sqrt abs sign tanh sigmoid relu softplus maximum
minimum where greater less equal matmul sum mean max reshape transpose broadcast_to concat cast
one_hot softmax log_softmax softmax_cross_entropy binary_cross_entropy conv2d max_pool2d
avg_pool2d dropout""".split()

FAMILIES = ["tests.test_ops_elementwise", "tests.test_ops_reduce_shape", "tests.test_ops_nn",
            "tests.test_ops_fused", "tests.test_ops_loops", "tests.test_ops_statistics",
            "tests.test_ops_activations", "tests.test_ops_layout", "tests.test_ops_indexing",
            "tests.test_ops_integer", "tests.test_ops_trig", "tests.test_ops_image"]


def all_rows():
    rows = []
    for name in FAMILIES:
        family = name.rsplit("_", 1)[-1]
        rows += [(f"{family}:{i}:{r.name}", r) for i, r in
                 enumerate(importlib.import_module(name).ROWS)]
    return rows


ROWS = all_rows()


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_kernel_matches_reference_and_shape_rule(row):
    check_row(row)


@pytest.mark.parametrize("row", [r for _, r in ROWS if r.grad],
                         ids=[i for i, r in ROWS if r.grad])
def test_gradient_matches_finite_differences(row):
    verify_grad(row.build, row.inputs)


def test_every_contract_op_is_a_public_function_with_a_row():
    named = {r.name for _, r in ROWS}
    missing = [op for op in CONTRACT if not callable(getattr(gc, op, None)) or op not in named]
    assert not missing, f"contract ops without a builder or a test row: {missing}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_registered_op_has_a_row(op):
    covered = {o for _, r in ROWS for o in (r.ops or (r.name,))}
    assert op in covered, f"op {op!r} is registered but no test row exercises it"



# the facts declared on ops, checked on their rows ------------------------------------------

def rows_of(fact):
    return [(i, r) for i, r in ROWS if r.name in OPS and fact(OPS[r.name])]


def nodes_of(row):
    """The row's nodes of its own op, and the feeds of its leaves."""
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    return [n for n in toposort([out]) if n.op == row.name], dict(zip(leaves, row.inputs))


def fact_rows(fact):
    rows = rows_of(fact)
    return pytest.mark.parametrize("row", [r for _, r in rows], ids=[i for i, _ in rows])


@fact_rows(lambda op: op.positive)
def test_positive_ops_are_positive(row):
    nodes, feeds = nodes_of(row)
    assert nodes and all(np.all(n.eval(feeds) > 0) for n in nodes)


@fact_rows(lambda op: op.glue)
def test_glue_ops_only_move_or_retype_entries(row):
    nodes, feeds = nodes_of(row)
    for n in nodes:
        x = n.inputs[0].eval(feeds)
        assert np.all(np.isin(n.eval(feeds), x.astype(n.dtype))), n


@fact_rows(lambda op: op.shape_only)
def test_shape_only_inputs_are_read_only_for_their_shape(row):
    nodes, feeds = nodes_of(row)
    for n in nodes:
        ins = [i.eval(feeds) for i in n.inputs]
        other = [np.full_like(v, 7) if k in OPS[n.op].shape_only else v
                 for k, v in enumerate(ins)]
        np.testing.assert_array_equal(OPS[n.op].kernel(*other, **n.attrs),
                                      OPS[n.op].kernel(*ins, **n.attrs))
