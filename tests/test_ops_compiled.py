"""Every op-table row compiled (optimized and not) gives what the reference interpreter gives,
forward and gradient, in float64 and in float32 (the dtype models train in): ops without a
fast lowering run through their registered kernel."""
import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS, apply
from tests.helpers import leaves_for
from tests.test_ops import ROWS

MINE = ("statistics", "activations", "layout", "indexing", "linalg", "random")  # issue 13's


def family(op) -> str:
    """The graphc/ops module that declares the op (its VJP rule sits next to it)."""
    return op.vjp.__module__.rsplit(".", 1)[-1] if op.vjp is not None else ""


def compiled_matches_eval(outputs, feeds, optimize):
    f = gc.function(list(feeds), outputs, optimize=optimize)
    got = f(*feeds.values())
    for node, value in zip(outputs, got):
        want = node.eval(feeds)
        assert value.shape == want.shape and value.dtype == want.dtype, node
        np.testing.assert_allclose(value, want, rtol=1e-9, atol=1e-12, err_msg=str(node))


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_row_compiled_equals_eval(row, optimize):
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    outputs = [out]
    floats = [leaf for leaf, a in zip(leaves, row.inputs) if a.dtype.kind == "f"]
    if row.grad and floats and out.dtype.kind == "f":
        weights = np.random.default_rng(0).standard_normal(out.shape).astype(out.dtype)
        outputs += gc.grad(gc.sum(out * gc.constant(weights)), floats)
    compiled_matches_eval(outputs, dict(zip(leaves, row.inputs)), optimize)


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_row_compiled_in_float32_equals_eval(row):
    """Float inputs as float32, unoptimized. An elementwise row's placeholders have an unknown
    batch dim (resolved per call), as a model's activations do (a dim of 1 broadcast against
    it stays declared 1: unknown dims do not broadcast, probe23); its value is also computed
    into an intermediate buffer (read by `* 1`), and a binary op's operands swapped."""
    arrays = [a.astype(np.float32) if a.dtype == np.float64 else a for a in row.inputs]
    elementwise = row.name in OPS and OPS[row.name].elementwise
    leaves = [gc.placeholder((None,) + a.shape[1:] if elementwise and a.ndim and a.shape[0] != 1
                             else a.shape,
                             dtype=a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]
    out = row.build(*leaves)
    outputs = [out]
    if elementwise and out.dtype.kind == "f":
        outputs.append(row.build(*leaves) * 1)
    if elementwise and len(leaves) == 2 and out.op == row.name and out.inputs == tuple(leaves):
        outputs.append(apply(row.name, leaves[1], leaves[0]))
    feeds = dict(zip(leaves, arrays))
    f = gc.function(leaves, outputs, optimize=False)
    for node, got in zip(outputs, f(*arrays)):
        want = node.eval(feeds)
        assert got.shape == want.shape and got.dtype == want.dtype, node
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(node))


@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_row_survives_save_and_load(row, tmp_path):
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    gc.save([out] + leaves, str(tmp_path / "g"))
    loaded, *loaded_leaves = gc.load(str(tmp_path / "g"))
    assert str(gc.Graph([loaded])) == str(gc.Graph([out]))
    np.testing.assert_array_equal(loaded.eval(dict(zip(loaded_leaves, row.inputs))),
                                  out.eval(dict(zip(leaves, row.inputs))))


@pytest.mark.parametrize("op", sorted(n for n, op in OPS.items()
                                      if family(op) in MINE and op.sym is not None))
def test_sympy_form_of_a_scalar_agrees_with_the_kernel(op):
    import sympy as sp
    x = gc.placeholder((), dtype="float64", name="s")
    node = apply(op, x)                  # each takes one input, its attributes defaulted
    form = gc.formula(node)
    value = float(node.eval({x: 0.7}))
    assert float(form.subs(sp.Symbol("s", real=True), 0.7)) == pytest.approx(value, rel=1e-12)
