"""Op table rows for the ops only the optimizer builds: `fused` (an elementwise group with its
body graph) and `dense` (act(op(a) @ op(b) + bias)); kernels vs NumPy, VJPs vs differences."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import Node, apply
from graphc.ops.fused import Body, decomposition, inline
from tests.helpers import Row, leaves_for

rng = np.random.default_rng(4)


def f64(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def body_of(build, *like) -> Body:
    """A fused body: `build` applied to placeholders in0, in1, ... of the nodes' types."""
    ins = [Node("placeholder", (), {}, n.shape, n.dtype, f"in{i}") for i, n in enumerate(like)]
    return Body(ins, build(*ins))


def group(a, b):
    """tanh(a * b + 1) - sigmoid(b) as one fused node."""
    body = body_of(lambda a, b: gc.tanh(a * b + 1.0) - gc.sigmoid(b), a, b)
    return apply("fused", a, b, body=body)
SIGMOID = lambda z: 1 / (1 + np.exp(-z))                       # noqa: E731
ACTS = {None: lambda z: z, "relu": lambda z: np.maximum(z, 0), "sigmoid": SIGMOID,
        "tanh": np.tanh}


def dense_row(act, ta, tb, bias=True):
    a, b = f64(*((3, 2) if ta else (2, 3))), f64(*((4, 3) if tb else (3, 4)))
    inputs = [a, b, f64(4)] if bias else [a, b]

    def ref(a, b, c=0.0):
        return ACTS[act]((a.T if ta else a) @ (b.T if tb else b) + c)
    return Row("dense", lambda *xs: apply("dense", *xs, activation=act, transpose_a=ta,
                                         transpose_b=tb), inputs, ref)


ROWS = [
    Row("fused", group, [f64(3, 4), f64(4)],
        lambda a, b: np.tanh(a * b + 1.0) - SIGMOID(b)),
] + [dense_row(act, ta, tb) for act in ACTS for ta in (False, True) for tb in (False, True)] \
  + [dense_row("relu", False, True, bias=False)]


def test_fused_listing_shows_the_body_compactly():
    a, b = gc.placeholder((3, 4), "float64", "a"), gc.placeholder((4,), "float64", "b")
    assert "body=<5 ops: mul, add, tanh, sigmoid, sub>" in str(group(a, b))


def test_dense_rejects_a_bias_that_would_broadcast_the_product():
    a, b = gc.placeholder((2, 3), name="a"), gc.placeholder((3, 4), name="b")
    with pytest.raises(gc.GraphcError, match="dense.*bias"):
        apply("dense", a, b, gc.placeholder((5, 4), name="c"))


@pytest.mark.parametrize("row", [r for r in ROWS if r.name == "dense"])
def test_dense_computes_what_its_decomposition_says(row):
    """dense_parts is the one definition of dense that viz and formula show: the kernel (and
    so the runtime, checked against it) must agree with it."""
    leaves = leaves_for(row.inputs)
    node = row.build(*leaves)
    (parts,) = inline(decomposition(node), list(node.inputs))
    feeds = dict(zip(leaves, row.inputs))
    np.testing.assert_allclose(parts.eval(feeds), node.eval(feeds), rtol=1e-12, atol=1e-12)
    assert {n.op for n in gc.Graph([parts]).nodes} <= {"placeholder", "transpose", "matmul",
                                                      "add", node.attrs["activation"]}


def test_dense_is_drawn_and_written_as_its_decomposition():
    x, w, b = gc.placeholder((None, 3), name="x"), gc.placeholder((4, 3), name="W"), \
        gc.placeholder((4,), name="b")
    node = apply("dense", x, w, b, activation="sigmoid", transpose_b=True)
    assert gc.explain(node) == gc.explain(gc.sigmoid(x @ w.T + b)) == "out0 = sigmoid(b + x·Wᵀ)"
    source = gc.render(node).source
    assert all(f"{op}\n" in source or f'{op}"' in source for op in ("matmul", "add", "sigmoid"))
