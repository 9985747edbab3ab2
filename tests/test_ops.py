"""The op table: every row's kernel against its reference, shape rule against the kernel,
gradient against finite differences; and every registered and contract op has a row."""
import importlib

import pytest

import graphc as gc
from graphc.ir import OPS
from tests.helpers import check_row, verify_grad

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
