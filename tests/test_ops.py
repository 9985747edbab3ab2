"""The op table is complete: every registered op and every op in the API contract has a row."""
import importlib

import pytest

import graphc as gc
from graphc.ir import OPS

CONTRACT = """add sub mul div neg pow exp log sqrt abs sign tanh sigmoid relu softplus maximum
minimum where greater less equal matmul sum mean max reshape transpose broadcast_to concat cast
one_hot softmax log_softmax softmax_cross_entropy binary_cross_entropy conv2d max_pool2d
avg_pool2d dropout""".split()

FAMILIES = ["tests.test_ops_elementwise", "tests.test_ops_reduce_shape", "tests.test_ops_nn",
            "tests.test_ops_fused"]


def all_rows():
    rows = []
    for name in FAMILIES:
        rows += importlib.import_module(name).ROWS
    return rows


def test_every_contract_op_is_a_public_function_with_a_row():
    named = {r.name for r in all_rows()}
    missing = [op for op in CONTRACT if not callable(getattr(gc, op, None)) or op not in named]
    assert not missing, f"contract ops without a builder or a test row: {missing}"


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_registered_op_has_a_row(op):
    covered = {o for r in all_rows() for o in (r.ops or (r.name,))}
    assert op in covered, f"op {op!r} is registered but no test row exercises it"
