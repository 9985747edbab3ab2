"""The IR: listing printer, deep graphs, broadcasting, feeds, variables, errors."""
import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, toposort
from graphc.ops.common import broadcast_shapes


def test_listing_names_every_node_with_shape_and_dtype():
    x = gc.placeholder((None, 3), name="x")
    y = gc.relu(x * 2.0)
    assert str(y) == "\n".join([
        "%0 = placeholder()  # (?, 3) float32 'x'",
        "%1 = constant(2.)  # () float32",
        "%2 = mul(%0, %1)  # (?, 3) float32",
        "%3 = relu(%2)  # (?, 3) float32",
        "return %3",
    ])


def test_listing_shows_attrs_updates_and_gradient_marks():
    x = gc.placeholder((4,), dtype="float64", name="x")
    v = gc.variable(np.zeros(4), name="v")
    s = gc.sum(x * v, axis=0)
    (gv,) = gc.grad(s, [v])
    text = str(Graph([s], [(v, v - gv)]))
    assert "sum(%2, axis=(0,), keepdims=False)  # () float64" in text
    assert "[grad of" in text
    assert text.splitlines()[-1].startswith("update %1 <- ")


def test_deep_chain_of_10000_nodes_builds_prints_and_evaluates():
    x = gc.placeholder((2,), dtype="float64", name="x")
    y = x
    for _ in range(10_000):
        y = y + 1.0
    assert len(toposort([y])) == 20_001           # x, and a constant and an add per step
    assert str(y).count("\n") == 20_001
    np.testing.assert_allclose(y.eval({x: np.zeros(2)}), [10_000.0, 10_000.0])
    (g,) = gc.grad(gc.sum(y), [x])
    np.testing.assert_allclose(g.eval({x: np.zeros(2)}), [1.0, 1.0])


def test_topological_order_is_stable_and_inputs_come_first():
    a = gc.placeholder((2,), name="a")
    b = gc.placeholder((2,), name="b")
    out = (a * b) + (b - a)
    order = toposort([out])
    assert [n.name for n in order if n.op == "placeholder"] == ["a", "b"]
    pos = {id(n): i for i, n in enumerate(order)}
    assert all(pos[id(i)] < pos[id(n)] for n in order for i in n.inputs)
    assert [n.op for n in order] == [n.op for n in toposort([out])]


@pytest.mark.parametrize("a, b, want", [
    ((3, 1), (1, 4), (3, 4)),
    ((5,), (2, 3, 5), (2, 3, 5)),
    ((), (2, 2), (2, 2)),
    ((None, 1), (4,), (None, 4)),
    ((None, 4), (1, 4), (None, 4)),
    ((None, 4), (None, 4), (None, 4)),
    (("n", 4), ("n", 1), ("n", 4)),
    ((0, 3), (1, 3), (0, 3)),
])
def test_broadcast_shapes(a, b, want):
    assert broadcast_shapes(a, b) == want


def test_broadcast_values_match_numpy_including_empty_and_scalar():
    for sa, sb in [((3, 1), (1, 4)), ((0, 3), (3,)), ((), (2, 2)), ((2, 1, 3), (4, 1))]:
        x = gc.placeholder(sa, dtype="float64")
        y = gc.placeholder(sb, dtype="float64")
        xv, yv = np.random.rand(*sa), np.random.rand(*sb)
        out = (x * y + x).eval({x: xv, y: yv})
        np.testing.assert_allclose(out, xv * yv + xv)
        assert out.shape == (x * y).shape


def test_shape_error_names_op_shapes_dtypes_and_user_line():
    x = gc.placeholder((None, 3), name="x")
    y = gc.placeholder((4,), name="y")
    with pytest.raises(gc.GraphcError) as e:
        x + y   # noqa: B018
    msg = str(e.value)
    assert "add((?, 3) float32, (4,) float32)" in msg
    assert "do not broadcast" in msg
    assert "test_ir.py:" in msg


def test_feed_errors_name_the_placeholder_and_expected_vs_got():
    x = gc.placeholder((None, 3), dtype="float32", name="x")
    y = x * 2.0
    with pytest.raises(gc.GraphcError, match=r"placeholder 'x': expected shape \(\?, 3\), got "
                                             r"\(2, 4\)"):
        y.eval({x: np.zeros((2, 4), np.float32)})
    with pytest.raises(gc.GraphcError, match=r"placeholder 'x': expected shape \(\?, 3\), got "
                                             r"\(3,\)"):
        y.eval({x: np.zeros(3, np.float32)})
    with pytest.raises(gc.GraphcError, match="placeholder 'x': expected dtype float32, got "
                                             "float64"):
        y.eval({x: np.zeros((2, 3))})
    with pytest.raises(gc.GraphcError, match="placeholder 'x' .* needs a feed"):
        y.eval({})
    k = gc.placeholder((2,), dtype="int64", name="k")
    np.testing.assert_array_equal((k + 1).eval({k: np.array([1, 2], np.int32)}), [2, 3])


def test_variable_assignment_checks_shape_and_dtype_and_keeps_old_value_on_error():
    w = gc.variable(np.ones((2, 3), np.float32), name="W")
    with pytest.raises(gc.GraphcError, match=r"variable 'W': cannot assign shape \(3, 2\)"):
        w.value = np.zeros((3, 2), np.float32)
    with pytest.raises(gc.GraphcError, match="variable 'W': cannot assign dtype int64"):
        w.value = np.zeros((2, 3), np.int64)
    np.testing.assert_array_equal(w.value, np.ones((2, 3)))
    w.value = np.full((2, 3), 2.0)                 # float64 -> float32 is the same kind
    assert w.value.dtype == np.float32
    np.testing.assert_array_equal((w * 1.0).eval(), np.full((2, 3), 2.0))


def test_constants_are_read_only_and_floats_default_to_float32():
    c = gc.constant([1.0, 2.0])
    assert c.dtype == np.float32
    assert gc.constant(np.arange(3.0)).dtype == np.float64
    with pytest.raises(ValueError):
        c.value[0] = 5
    with pytest.raises(gc.GraphcError):
        c.value = [3.0, 4.0]


def test_nodes_have_no_truth_value():
    x = gc.placeholder((2,))
    with pytest.raises(gc.GraphcError, match="no truth value"):
        bool(gc.greater(x, 0))


def test_name_scope_and_user_line_are_recorded():
    with gc.name_scope("dense1"):
        x = gc.placeholder((2,), name="x")
        y = x * 3.0
    assert y.scope == ("dense1",)
    assert y.where.startswith("test_ir.py:")


def test_indexing_and_comparison_operators_build_nodes():
    x = gc.placeholder((None, 5, 4), dtype="float64", name="x")
    xv = np.random.default_rng(1).random((3, 5, 4)) - 0.5
    for node, want in [(x[:, 1:3], xv[:, 1:3]), (x[0], xv[0]), (x[:, -1, 2:], xv[:, -1, 2:]),
                       (x[1:, 2, 3], xv[1:, 2, 3]), (abs(x), np.abs(xv)),
                       (x > 0, xv > 0), (x <= 0.1, xv <= 0.1)]:
        got = node.eval({x: xv})
        assert got.shape[1:] == node.shape[1:] and np.array_equal(got, want)
    (g,) = gc.grad(gc.sum(x[:, -1, 2:] ** 2), [x])
    want = np.zeros_like(xv)
    want[:, -1, 2:] = 2 * xv[:, -1, 2:]
    np.testing.assert_allclose(g.eval({x: xv}), want)
    with pytest.raises(gc.GraphcError, match=r"(?s)unsupported index.*test_ir.py:\d+"):
        x[::2]
    assert {x: 1}[x] == 1                     # == stays identity: nodes key the feeds


# NumPy / PyTorch methods on nodes, and the hints where the two disagree ---------------------

def test_node_methods_match_numpy():
    x = gc.placeholder((2, 3, 4), dtype="float64")
    xv = np.random.default_rng(0).standard_normal((2, 3, 4))
    cases = [(x.sum(), xv.sum()), (x.sum(axis=1, keepdims=True), xv.sum(1, keepdims=True)),
             (x.mean(axis=(0, 2)), xv.mean((0, 2))), (x.max(axis=-1), xv.max(-1)),
             (x.min(), xv.min()), (x.prod(axis=0), xv.prod(0)), (x.var(axis=1), xv.var(1)),
             (x.std(ddof=1), xv.std(ddof=1)), (x.argmax(axis=2), xv.argmax(2)),
             (x.argmin(), xv.argmin()), (x.reshape(6, 4), xv.reshape(6, 4)),
             (x.reshape((4, -1)), xv.reshape((4, -1))), (x.transpose(), xv.transpose()),
             (x.transpose(1, 0, 2), xv.transpose(1, 0, 2)),
             (x.transpose((2, 0, 1)), xv.transpose((2, 0, 1))),
             (x.swapaxes(0, 2), xv.swapaxes(0, 2)), (x.mT, np.swapaxes(xv, -1, -2)),
             (x[0].T, xv[0].T), (x.astype("int32"), xv.astype("int32")),
             (x.flatten(), xv.flatten()), (x[:, :1].squeeze(), xv[:, :1].squeeze()),
             (x.clip(-0.5, 0.5), xv.clip(-0.5, 0.5)), (x[..., 1], xv[..., 1]),
             (x[:, None, 0], xv[:, None, 0]), (x[None, ..., None], xv[None, ..., None]),
             (x[np.array([1, 0, 1])], xv[[1, 0, 1]]), (x[:, np.array([2, 2])], xv[:, [2, 2]])]
    for node, want in cases:
        got = node.eval({x: xv})
        assert got.shape == want.shape and got.dtype == want.dtype, (node, want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_pytorch_habits_get_hints_naming_the_fix():
    k = gc.placeholder((2, 4, 5, 8), name="k")
    with pytest.raises(gc.GraphcError, match=r"(?s)x.transpose\(-2, -1\) of shape \(2, 4, 5, 8\)"
                                             r".*permutation of all 4 axes.*"
                                             r"k?.swapaxes\(-2, -1\).*mT.*test_ir.py"):
        k.transpose(-2, -1)
    with pytest.raises(gc.GraphcError, match=r"(?s)x.T of a 4-d node \(2, 4, 5, 8\) would "
                                             r"reverse all 4 axes.*swapaxes.*test_ir.py"):
        k.T
    with pytest.raises(gc.GraphcError, match=r"x.transpose\(0, 1\) keeps both axes in place.*"
                                             r"x.T or x.swapaxes\(0, 1\)"):
        k[0, 0].transpose(0, 1)
    with pytest.raises(gc.GraphcError, match=r"boolean mask.*gc.where"):
        k[np.ones(2, bool)]
    with pytest.raises(gc.GraphcError, match=r"step 1.*gc.flip"):
        k[::-1]
    with pytest.raises(gc.GraphcError, match=r"needs at least 2 axes"):
        gc.placeholder((3,)).mT


def test_no_module_imports_one_above_it():
    """DESIGN.md's layering, at top level and inside functions: ir <- ops <- api <- autodiff <-
    scan <- passes <- runtime <- (viz, formula, io, onnx, inspect) <- nn <- distributed <- cli."""
    import ast
    import pathlib
    order = ["ir", "ops", "api", "autodiff", "scan", "passes", "runtime", "views", "nn",
             "distributed", "cli"]
    views = {"viz", "formula", "explain", "symbolic", "io", "io_format", "io_files", "io_arrays",
             "onnx", "inspect", "renderer", "viz_style"}

    def layer(module: str):
        parts = module.split(".")
        if parts[0] != "graphc" or len(parts) < 2:
            return None
        ir_layer = ("opdef", "listing", "scope", "guards", "feeds")
        top = "views" if parts[1] in views else "ir" if parts[1] in ir_layer else parts[1]
        return order.index(top) if top in order else None

    root = pathlib.Path(gc.__file__).parent
    upward = []
    for path in root.rglob("*.py"):
        module = ".".join(("graphc",) + path.relative_to(root).with_suffix("").parts)
        mine = layer(module.removesuffix(".__init__"))
        if mine is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            upward += [f"{module} imports {n}" for n in names
                       if layer(n) is not None and layer(n) > mine]
    assert not upward, upward


def test_paused_gc_restores_the_collector_state_after_nested_pauses():
    import gc
    from graphc.ir import paused_gc
    was = gc.isenabled()
    try:
        for before in (True, False):
            gc.enable() if before else gc.disable()
            with paused_gc():
                with paused_gc():
                    assert not gc.isenabled()
                assert not gc.isenabled()
            assert gc.isenabled() == before
            with pytest.raises(ValueError):
                with paused_gc():
                    raise ValueError("a failing pass")
            assert gc.isenabled() == before
    finally:
        gc.enable() if was else gc.disable()
