"""Op table rows for reductions, matmul and shape ops: kernels, shape rules, gradients, errors."""
import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import OPS, apply
from tests.helpers import Row, numeric_grad, verify_grad

rng = np.random.default_rng(1)


def f64(*shape):
    return rng.uniform(-2.0, 2.0, size=shape)


def away(*shape):
    """Distinct values, so a maximum is never tied (finite differences stay on one side)."""
    v = rng.permutation(np.arange(1, int(np.prod(shape)) + 1)) * 0.37
    return (v * rng.choice([-1, 1], size=v.size)).reshape(shape)


def first_max_mask(x, axis):
    """Independent reference for argmax_mask: loop over groups, mark the first maximum."""
    axis = tuple(a % x.ndim for a in axis)
    keep = [i for i in range(x.ndim) if i not in axis]
    mask = np.zeros_like(x)
    for outer in np.ndindex(*[x.shape[i] for i in keep]):
        best, where = None, None
        for inner in np.ndindex(*[x.shape[i] for i in axis]):
            idx = [0] * x.ndim
            for i, v in zip(keep, outer):
                idx[i] = v
            for i, v in zip(axis, inner):
                idx[i] = v
            if best is None or x[tuple(idx)] > best:
                best, where = x[tuple(idx)], tuple(idx)
        mask[where] = 1
    return mask


def unslice(x, like, axis, start, stop=None):
    return apply("unslice", x, like, axis=axis, start=start, stop=stop)


def unslice_ref(x, like, axis, start, stop=None):
    out = np.zeros_like(like)
    idx = [slice(None)] * like.ndim
    idx[axis] = slice(start, stop)
    out[tuple(idx)] = x
    return out


ROWS = [
    # reductions
    Row("sum", gc.sum, [f64(3, 4)], np.sum),
    Row("sum", lambda x: gc.sum(x, axis=1), [f64(3, 4)], lambda x: x.sum(1)),
    Row("sum", lambda x: gc.sum(x, axis=-1, keepdims=True), [f64(2, 3, 4)],
        lambda x: x.sum(-1, keepdims=True)),
    Row("sum", lambda x: gc.sum(x, axis=(0, 2)), [f64(2, 3, 4)], lambda x: x.sum((0, 2))),
    Row("sum", lambda x: gc.sum(x, axis=(0, -1), keepdims=True), [f64(2, 3, 4)],
        lambda x: x.sum((0, 2), keepdims=True)),
    Row("sum", lambda a, b: gc.sum(a * b, axis=0), [f64(3, 4), f64(4)],   # broadcast inside
        lambda a, b: (a * b).sum(0), ops=("sum", "mul")),
    Row("sum", gc.sum, [f64()], lambda x: x),                               # a scalar
    Row("sum", lambda m: gc.sum(m, axis=1), [np.array([[True, False, True], [True] * 3])],
        lambda m: m.sum(1), grad=False),                                    # bools count
    Row("mean", gc.mean, [f64(3, 4)], np.mean, ops=("sum", "div")),
    Row("mean", lambda x: gc.mean(x, axis=-2), [f64(2, 3, 4)], lambda x: x.mean(-2),
        ops=("sum", "div")),
    Row("mean", lambda x: gc.mean(x, axis=(0, 2), keepdims=True), [f64(2, 3, 4)],
        lambda x: x.mean((0, 2), keepdims=True), ops=("sum", "div")),
    Row("mean", gc.mean, [np.array([True, False, True, True])],
        lambda m: np.float32(m.mean()), grad=False, ops=("sum", "cast", "div")),
    Row("max", gc.max, [away(3, 4)], np.max),
    Row("max", lambda x: gc.max(x, axis=1), [away(3, 4)], lambda x: x.max(1),
        ops=("max", "argmax_mask")),
    Row("max", lambda x: gc.max(x, axis=-1, keepdims=True), [away(2, 3, 4)],
        lambda x: x.max(-1, keepdims=True)),
    Row("max", lambda x: gc.max(x, axis=(0, 2)), [away(2, 3, 4)], lambda x: x.max((0, 2))),
    Row("max", lambda x: gc.max(x, axis=(1, 2), keepdims=True), [away(2, 3, 4)],
        lambda x: x.max((1, 2), keepdims=True)),
    Row("argmax_mask", lambda x: gc.argmax_mask(x, axis=1), [away(3, 4)],
        lambda x: first_max_mask(x, (1,))),
    Row("argmax_mask", lambda x: gc.argmax_mask(x, axis=(0, 2)),
        [np.array([[[1., 5.], [5., 2.]], [[5., 0.], [3., 5.]]])],       # ties: first wins
        lambda x: first_max_mask(x, (0, 2)), grad=False),
    Row("argmax_mask", lambda k: gc.argmax_mask(k), [np.array([[3, 7], [7, 1]])],
        lambda k: np.array([[0, 1], [0, 0]], np.float32), grad=False),
    Row("size", lambda x: gc.size(x, axis=(0, 2)), [f64(2, 3, 4)],
        lambda x: np.float32(8)),
    Row("size", lambda x: gc.size(x, dtype="int64"), [f64(2, 3)], lambda x: np.int64(6),
        grad=False),
    # matmul
    Row("matmul", gc.matmul, [f64(3, 4), f64(4, 2)], np.matmul),
    Row("matmul", lambda a, b: a @ b, [f64(2, 3, 4), f64(2, 4, 5)], np.matmul),
    Row("matmul", gc.matmul, [f64(2, 1, 3, 4), f64(5, 4, 2)], np.matmul),   # batch broadcast
    Row("matmul", gc.matmul, [f64(3, 4), f64(2, 4, 5)], np.matmul),         # 2-D @ 3-D
    Row("matmul", gc.matmul, [f64(4), f64(4, 3)], np.matmul),               # vector @ matrix
    Row("matmul", gc.matmul, [f64(3, 4), f64(4)], np.matmul),               # matrix @ vector
    Row("matmul", gc.matmul, [f64(4), f64(4)], np.matmul),                  # dot product
    Row("matmul", gc.matmul, [f64(4), f64(2, 4, 3)], np.matmul),
    Row("matmul", gc.matmul, [f64(2, 3, 4), f64(4)], np.matmul),
    Row("matmul", gc.matmul, [np.arange(6).reshape(2, 3), np.arange(3)], np.matmul, grad=False),
    # shape ops
    Row("reshape", lambda x: gc.reshape(x, (4, 3)), [f64(3, 4)], lambda x: x.reshape(4, 3)),
    Row("reshape", lambda x: gc.reshape(x, (2, -1)), [f64(3, 4)], lambda x: x.reshape(2, -1)),
    Row("reshape", lambda x: gc.reshape(x, (None,)), [f64(3, 4)], lambda x: x.reshape(-1)),
    Row("reshape", lambda x, y: gc.reshape(x, y), [f64(2, 6), f64(3, 4)],   # like form
        lambda x, y: x.reshape(y.shape)),
    Row("broadcast_to", lambda x: gc.broadcast_to(x, (2, 3, 4)), [f64(3, 1)],
        lambda x: np.broadcast_to(x, (2, 3, 4))),
    Row("broadcast_to", lambda x, y: gc.broadcast_to(x, y), [f64(4), f64(3, 4)],
        lambda x, y: np.broadcast_to(x, y.shape)),
    Row("transpose", gc.transpose, [f64(2, 3, 4)], np.transpose),
    Row("transpose", lambda x: gc.transpose(x, (1, -1, 0)), [f64(2, 3, 4)],
        lambda x: np.transpose(x, (1, 2, 0))),
    Row("transpose", lambda x: x.T, [f64(3, 4)], lambda x: x.T),
    Row("concat", lambda a, b: gc.concat([a, b]), [f64(2, 3), f64(4, 3)],
        lambda a, b: np.concatenate([a, b]), ops=("concat", "slice")),
    Row("concat", lambda a, b, c: gc.concat([a, b, c], axis=-1), [f64(2, 1), f64(2, 3), f64(2, 2)],
        lambda a, b, c: np.concatenate([a, b, c], axis=-1)),
    Row("concat", lambda a, k: gc.concat([a, k], axis=0),
        [f64(2, 2), np.array([[1, 2]])], lambda a, k: np.concatenate([a, k])),
    Row("concat_part", lambda g, a, b: apply("concat_part", g, a, b, axis=1, index=1),
        [f64(2, 5), f64(2, 2), f64(2, 3)], lambda g, a, b: g[:, 2:], ops=("concat_part", "concat")),
    Row("slice", lambda x: gc.slice(x, 1, 1, 3), [f64(3, 4)], lambda x: x[:, 1:3],
        ops=("slice", "unslice")),
    Row("slice", lambda x: gc.slice(x, -1, -2), [f64(3, 4)], lambda x: x[:, -2:]),
    Row("slice", lambda x: gc.slice(x, 0, 0, -1), [f64(3, 4)], lambda x: x[0:-1]),
    Row("unslice", lambda x, y: unslice(x, y, 1, 1, 3), [f64(3, 2), f64(3, 4)],
        lambda x, y: unslice_ref(x, y, 1, 1, 3), ops=("unslice", "slice")),
    Row("unslice", lambda x, y: unslice(x, y, 0, -2), [f64(2, 4), f64(5, 4)],
        lambda x, y: unslice_ref(x, y, 0, -2)),
    Row("one_hot", lambda k: gc.one_hot(k, 4), [np.array([0, 3, 1, 4, -1])],
        lambda k: np.array([[1, 0, 0, 0], [0, 0, 0, 1], [0, 1, 0, 0], [0] * 4, [0] * 4],
                           np.float32), grad=False),
    Row("one_hot", lambda k: gc.one_hot(k, 3, dtype="float64"), [np.array([[2], [0]])],
        lambda k: np.eye(3)[k], grad=False),
]


def test_every_op_of_this_family_has_a_row():
    mine = {"sum", "max", "argmax_mask", "size", "matmul", "reshape", "broadcast_to",
            "transpose", "concat", "slice", "unslice", "one_hot"}
    covered = {o for r in ROWS for o in (r.ops or (r.name,))}
    assert mine <= set(OPS) and mine <= covered


# second order: gradients are graphs, so they can be differentiated again --------------

SECOND_ORDER = [
    ("sum", lambda x: gc.grad(gc.sum(gc.sum(x * x, axis=1) ** 2), x), [f64(3, 4)]),
    ("mean", lambda x: gc.grad(gc.mean(gc.mean(x, axis=0) ** 3), x), [f64(3, 4)]),
    ("max", lambda x: gc.grad(gc.sum(gc.max(x * x, axis=1) ** 2), x), [away(3, 4)]),
    ("matmul", lambda a, b: gc.grad(gc.sum(gc.tanh(a @ b)), a), [f64(3, 4), f64(4, 2)]),
    ("matmul", lambda a, b: gc.grad(gc.sum((a @ b) ** 2), b), [f64(2, 1, 3, 4), f64(5, 4, 2)]),
    ("matmul", lambda a, b: gc.grad(gc.sum(gc.tanh(a @ b)), [a, b])[1], [f64(4), f64(4, 3)]),
    ("matmul", lambda a, b: gc.grad(gc.sum(gc.tanh(a @ b)), [a, b])[0], [f64(2, 3, 4), f64(4)]),
    ("matmul", lambda a, b: gc.grad(gc.tanh(a @ b), [a, b])[1], [f64(4), f64(4)]),
    ("max", lambda x: gc.grad(gc.sum(gc.max(gc.exp(x), axis=(0, 2), keepdims=True) ** 2), x),
     [away(2, 3, 2) * 0.3]),
    ("concat", lambda a, b: gc.grad(gc.sum(gc.concat([a, b], 1) ** 3), a),
     [f64(2, 3), f64(2, 2)]),
    ("transpose", lambda x: gc.grad(gc.sum(gc.exp(x.T)), x), [f64(2, 3)]),
]


@pytest.mark.parametrize("name,build,inputs", SECOND_ORDER, ids=[s[0] for s in SECOND_ORDER])
def test_second_order_gradient(name, build, inputs):
    verify_grad(build, inputs)


# None batch dims: placeholders (None, ...) fed concrete arrays -------------------------

def check_dynamic(build, shapes, arrays, ref):
    """Value vs reference, shape rule vs result on known dims, grad vs finite differences."""
    leaves = [gc.placeholder(s, dtype=a.dtype) for s, a in zip(shapes, arrays)]
    out = build(*leaves)
    feeds = dict(zip(leaves, arrays))
    val = out.eval(feeds)
    np.testing.assert_allclose(val, ref(*arrays), rtol=1e-6, atol=1e-9)
    assert val.dtype == out.dtype and val.ndim == out.ndim
    assert all(d is None or d == n for d, n in zip(out.shape, val.shape)), (out.shape, val.shape)
    r = np.random.default_rng(0).standard_normal(val.shape)
    cost = gc.sum(out * gc.constant(r))
    floats = [i for i, a in enumerate(arrays) if a.dtype.kind == "f"]
    for i, g in zip(floats, gc.grad(cost, [leaves[i] for i in floats])):
        def f(xi, i=i):
            return float(cost.eval({**feeds, leaves[i]: xi}))
        np.testing.assert_allclose(g.eval(feeds), numeric_grad(f, arrays[i].copy()),
                                   rtol=1e-4, atol=1e-6)
    return out


DYNAMIC = [
    ("sum", lambda x: gc.sum(x, axis=0), [(None, 3)], [f64(4, 3)], lambda x: x.sum(0)),
    ("sum", lambda x: gc.sum(x, axis=-1, keepdims=True), [(None, 3)], [f64(4, 3)],
     lambda x: x.sum(-1, keepdims=True)),
    ("mean", gc.mean, [(None, 3)], [f64(4, 3)], np.mean),
    ("mean", lambda x: gc.mean(x, axis=0), [(None, 3)], [f64(4, 3)], lambda x: x.mean(0)),
    ("mean", lambda x: gc.mean(x, axis=1), [(None, 3)], [f64(4, 3)], lambda x: x.mean(1)),
    ("max", lambda x: gc.max(x, axis=0), [(None, 3)], [away(4, 3)], lambda x: x.max(0)),
    ("matmul", gc.matmul, [(None, 3), (3, 2)], [f64(4, 3), f64(3, 2)], np.matmul),
    ("matmul", gc.matmul, [(None, 2, 3), (3,)], [f64(4, 2, 3), f64(3)], np.matmul),
    ("matmul", gc.matmul, [(3,), (None, 3, 2)], [f64(3), f64(4, 3, 2)], np.matmul),
    ("matmul", gc.matmul, [(None,), (None,)], [f64(5), f64(5)], np.matmul),
    ("reshape", lambda x: gc.reshape(x, (-1,)), [(None, 3)], [f64(4, 3)],
     lambda x: x.reshape(-1)),
    ("broadcast_to", lambda b, x: gc.broadcast_to(b, x), [(3,), (None, 3)],
     [f64(3), f64(4, 3)], lambda b, x: np.broadcast_to(b, x.shape)),
    ("transpose", gc.transpose, [(None, 3)], [f64(4, 3)], np.transpose),
    ("concat", lambda x: gc.concat([x, gc.constant(np.ones((2, 3)))]), [(None, 3)],
     [f64(4, 3)], lambda x: np.concatenate([x, np.ones((2, 3))])),
    ("concat", lambda x: gc.concat([gc.constant(np.ones((1, 3))), x,
                                    gc.constant(np.zeros((2, 3)))]), [(None, 3)], [f64(4, 3)],
     lambda x: np.concatenate([np.ones((1, 3)), x, np.zeros((2, 3))])),
    ("concat", lambda a, b: gc.concat([a, b], axis=1), [(None, 3), (None, 2)],
     [f64(4, 3), f64(4, 2)], lambda a, b: np.concatenate([a, b], axis=1)),
    ("slice", lambda x: gc.slice(x, 0, 1, 3), [(None, 3)], [f64(4, 3)], lambda x: x[1:3]),
    ("slice", lambda x: gc.slice(x, 0, -2), [(None, 3)], [f64(4, 3)], lambda x: x[-2:]),
    ("one_hot", lambda k: gc.one_hot(k, 3), [(None,)], [np.array([2, 0, 5])],
     lambda k: np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]], np.float32)),
]


@pytest.mark.parametrize("name,build,shapes,arrays,ref", DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_none_batch_dims(name, build, shapes, arrays, ref):
    check_dynamic(build, shapes, arrays, ref)


def test_mean_count_is_a_constant_when_static_and_a_size_node_when_not():
    x = gc.placeholder((None, 3), dtype="float64")
    assert gc.mean(x, axis=1).inputs[1].op == "constant"
    assert gc.mean(x, axis=1).inputs[1].data == 3
    count = gc.mean(x).inputs[1]
    assert count.op == "size" and count.attrs == {"axis": (0, 1), "dtype": "float64"}
    assert count.eval({x: np.zeros((5, 3))}) == 15
    assert gc.size(x, axis=-1).eval({x: np.zeros((5, 3))}) == 3


def test_shape_rules_keep_unknown_dims():
    x = gc.placeholder((None, 3))
    assert gc.sum(x, axis=1).shape == (None,)
    assert gc.max(x, axis=1, keepdims=True).shape == (None, 1)
    assert (x @ np.ones((3, 2), np.float32)).shape == (None, 2)
    assert gc.reshape(x, (-1, 6)).shape == (None, 6)
    assert gc.concat([x, x], axis=1).shape == (None, 6)
    assert gc.concat([x, np.ones((2, 3), np.float32)]).shape == (None, 3)
    assert gc.slice(x, 0, 2, 4).shape == (2, 3)
    assert gc.transpose(x).shape == (3, None)


# max: exactly one winner per group ----------------------------------------------------

def test_max_gradient_goes_to_the_first_of_tied_maxima():
    x = gc.placeholder((2, 3), dtype="float64")
    g = gc.grad(gc.sum(gc.max(x, axis=1)), x)
    got = g.eval({x: np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]])})
    np.testing.assert_array_equal(got, [[0, 1, 0], [1, 0, 0]])
    g_all = gc.grad(gc.max(x), x).eval({x: np.full((2, 3), 7.0)})
    np.testing.assert_array_equal(g_all, [[1, 0, 0], [0, 0, 0]])


def test_max_over_a_tuple_of_axes_picks_one_winner_per_group():
    x = gc.placeholder((2, 2, 2), dtype="float64")
    g = gc.grad(gc.sum(gc.max(x, axis=(0, 2))), x)
    got = g.eval({x: np.ones((2, 2, 2))})
    np.testing.assert_array_equal(got.sum(axis=(0, 2)), [1, 1])
    np.testing.assert_array_equal(got[0, :, 0], [1, 1])


def test_concat_and_slice_gradients_are_exact_pieces():
    a, b = gc.placeholder((2,), "float64"), gc.placeholder((3,), "float64")
    ga, gb = gc.vjp(gc.concat([a, b]), [a, b], [gc.constant(np.arange(5.0))])
    feeds = {a: np.zeros(2), b: np.zeros(3)}
    np.testing.assert_array_equal(ga.eval(feeds), [0, 1])
    np.testing.assert_array_equal(gb.eval(feeds), [2, 3, 4])
    assert ga.op == "slice" and ga.attrs == {"axis": 0, "start": 0, "stop": 2}


# sympy forms --------------------------------------------------------------------------

def test_sympy_forms():
    A, B = sp.MatrixSymbol("A", 2, 3), sp.MatrixSymbol("B", 3, 4)
    assert OPS["matmul"].sym(A, B) == A * B
    assert OPS["transpose"].sym(A, axes=(1, 0)) == A.T
    x, y = sp.symbols("x y")
    assert OPS["matmul"].sym(x, y) == x * y
    assert OPS["transpose"].sym(x, axes=()) == x
    for op in ("sum", "max"):
        assert OPS[op].sym(x, axis=(), keepdims=False) == x
        assert OPS[op].sym(A, axis=(0, 1), keepdims=False) is None
    assert OPS["reshape"].sym(x, shape=(1, 1)) == x
    assert OPS["broadcast_to"].sym(x, shape=(2,)) == x
    assert OPS["size"].sym(x, axis=(), dtype="float32") == 1


def test_sympy_form_of_scalar_reductions_agrees_with_kernel():
    x = sp.Symbol("x")
    for op in ("sum", "max", "reshape", "transpose"):
        node = {"sum": gc.sum, "max": gc.max, "reshape": lambda v: gc.reshape(v, ()),
                "transpose": gc.transpose}[op](gc.placeholder((), "float64"))
        val = node.eval({node.inputs[0]: np.array(1.25)})
        assert float(OPS[op].sym(x, **node.attrs).subs(x, 1.25)) == float(val)


# errors name the op, the shapes and the user's line ----------------------------------

def error_of(build):
    """The GraphcError text of build(), and the file:line where build() built the node."""
    with pytest.raises(gc.GraphcError) as e:
        build()
    return str(e.value), f"test_ops_reduce_shape.py:{build.__code__.co_firstlineno}"


def test_matmul_inner_dimension_mismatch():
    a, b = gc.placeholder((3, 4)), gc.placeholder((5, 2))
    def build(): return a @ b   # noqa: E704
    msg, line = error_of(build)
    assert "matmul" in msg and "(3, 4)" in msg and "(5, 2)" in msg and line in msg
    assert "inner dimensions" in msg


def test_matmul_batch_and_scalar_errors():
    a, b = gc.placeholder((2, 3, 4)), gc.placeholder((5, 4, 2))
    def build(): return gc.matmul(a, b)   # noqa: E704
    msg, line = error_of(build)
    assert "matmul" in msg and "batch" in msg and "(2, 3, 4)" in msg and line in msg
    def scalar(): return gc.matmul(a, gc.constant(2.0))   # noqa: E704
    msg, line = error_of(scalar)
    assert "mul" in msg and line in msg


@pytest.mark.parametrize("axis", [2, -3, (0, 0)])
def test_bad_axis(axis):
    x = gc.placeholder((3, 4))
    def build(): return gc.sum(x, axis=axis)   # noqa: E704
    msg, line = error_of(build)
    assert msg.startswith("sum(") and "(3, 4)" in msg and "axis" in msg and line in msg
    def build_mean(): return gc.mean(x, axis=axis)   # noqa: E704
    msg, line = error_of(build_mean)
    assert "(3, 4)" in msg and "axis" in msg and line in msg


def test_bad_reshape():
    x = gc.placeholder((3, 4))
    def build(): return gc.reshape(x, (5, 2))   # noqa: E704
    msg, line = error_of(build)
    assert "reshape" in msg and "(3, 4)" in msg and "12 elements" in msg and line in msg
    assert "-1" in error_of(lambda: gc.reshape(x, (-1, -1)))[0]
    assert "12 elements" in error_of(lambda: gc.reshape(x, (5, -1)))[0]
    assert "negative" in error_of(lambda: gc.reshape(x, (-2, 6)))[0]
    assert "ints" in error_of(lambda: gc.reshape(x, ("a", 6)))[0]


def test_shape_op_errors():
    x = gc.placeholder((3, 4))
    assert "permutation" in error_of(lambda: gc.transpose(x, (0, 0)))[0]
    assert "axes (0, 5) are not" in error_of(lambda: gc.transpose(x, (0, 5)))[0]
    assert "dimension 1 differs" in error_of(lambda: gc.concat([x, gc.placeholder((3, 5))]))[0]
    assert "same rank" in error_of(lambda: gc.concat([x, gc.placeholder((3,))]))[0]
    assert "at least one" in error_of(lambda: gc.concat([]))[0]
    assert "out of bounds" in error_of(lambda: gc.slice(x, 1, 2, 6))[0]
    assert "cannot broadcast" in error_of(lambda: gc.broadcast_to(x, (3, 5)))[0]
    assert "integers" in error_of(lambda: gc.one_hot(x, 3))[0]


def test_run_time_errors_name_the_op():
    x = gc.placeholder((None, 3))
    node = gc.slice(x, 0, 1, 5)
    with pytest.raises(gc.GraphcError, match=r"slice\(\(2, 3\)\).*out of bounds"):
        node.eval({x: np.zeros((2, 3), np.float32)})


def test_broadcast_to_a_static_shape_with_an_unknown_size_is_a_build_error():
    x, like = gc.placeholder((1, 3)), gc.placeholder((None, 3))
    with pytest.raises(gc.GraphcError, match=r"(?s)must be a tuple of ints.*broadcast_to\(x, like"):
        gc.broadcast_to(x, (None, 3))
    assert gc.broadcast_to(x, like).shape == (None, 3)


def test_concat_gradient_with_two_unknown_sizes_finds_the_parts_at_run_time():
    a, b = gc.placeholder((None, 3), "float64"), gc.placeholder((None, 3), "float64")
    ga, gb = gc.grad(gc.sum(gc.concat([a, b]) * np.arange(3.0)), [a, b])
    assert ga.op == gb.op == "concat_part"
    feeds = {a: np.zeros((2, 3)), b: np.zeros((1, 3))}
    np.testing.assert_array_equal(ga.eval(feeds), np.tile(np.arange(3.0), (2, 1)))
    np.testing.assert_array_equal(gb.eval(feeds), np.arange(3.0)[None])


def test_reshape_of_a_batch_into_a_size_no_batch_can_have_is_a_build_error():
    x = gc.placeholder((None, 3), name="x")
    assert gc.reshape(x, (3, 4)).shape == (3, 4)
    with pytest.raises(gc.GraphcError, match=r"(?s)cannot reshape \(\?, 3\) \(a multiple of 3 "
                                             r"elements\) into \(5, 7\).*test_ops_reduce"):
        gc.reshape(x, (5, 7))
