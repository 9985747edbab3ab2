"""Dense layers' other steps (runtime/blas.py, rules.gemm_steps): a bias update `c - sum(g, 0)`
as one GEMV with a ones vector written into c, a vector's mean as one dot product. The GEMV
kernel against float64 NumPy (both dtypes, both axes, odd layouts, new arrays between calls,
no BLAS), and compiled models against eval over several calls and two batch sizes: a failing
call, check_numerics, the standalone export with and without a BLAS."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.runtime import blas
from tests.test_export import check_export
from tests.test_runtime_gemm import TOL, compare, feeder, gemm_calls, mlp_step

RNG = np.random.default_rng(1718)
GEMV_HERE = "f" in blas.GEMV and "d" in blas.GEMV
BLAS_HERE = GEMV_HERE and "f" in blas.GEMM and "d" in blas.GEMM


def test_numpys_own_gemv_is_found():
    config = str(getattr(np.__config__, "CONFIG", {}).get("Build Dependencies", {}))
    if "openblas" in config:
        assert GEMV_HERE
    for char, routine in blas.GEMV.items():
        assert blas.works(routine, char, "gemv")


def matrix(shape, dtype, order: str):
    """`shape` stored in `order`: "C", "F" or "S" (a strided slice, which BLAS cannot read)."""
    if order == "S":
        return RNG.standard_normal((shape[0], 2 * shape[1])).astype(dtype)[:, ::2]
    return np.asarray(RNG.standard_normal(shape).astype(dtype), order=order)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("order", ["C", "F", "S"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_gemv_kernel_matches_float64_numpy(dtype, ta, order, keepdims):
    m, n = 7, 5
    for alpha, beta in ((-1.0, 1.0), (-0.37, 1.0), (2.0, -1.0), (1.0, 0.9), (0.0, 1.0)):
        a = matrix((m, n), dtype, order)
        rows = n if ta else m
        x = RNG.standard_normal(m if ta else n).astype(dtype)
        c = RNG.standard_normal((1, rows) if keepdims else (rows,)).astype(dtype)
        op = a.T if ta else a
        want = alpha * (op.astype(np.float64) @ x).reshape(c.shape) + beta * c
        prep = blas.Prepared()
        assert blas.gemv(c, a, x, ta, alpha, beta, prep) is c
        np.testing.assert_allclose(c, want, **TOL[dtype])
        used = prep["seen"][3] is not None
        assert used == (GEMV_HERE and order != "S" and alpha != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemv_kernel_follows_new_arrays_between_calls(dtype):
    """The same prepared call over new arrays of a's layout (an address changed), another
    layout, a read-only array, a new c; the sum of a gradient over its rows each time."""
    prep = blas.Prepared()
    ones = np.ones(6, dtype)
    c = RNG.standard_normal(4).astype(dtype)
    grads = [RNG.standard_normal((6, 4)).astype(dtype) for _ in range(3)]
    grads.append(np.asfortranarray(grads[0]))
    grads.append(grads[1].copy())
    grads[-1].flags.writeable = False
    grads.append(RNG.standard_normal((6, 8)).astype(dtype)[:, ::2])
    for g in grads + grads[:2]:
        want = c.astype(np.float64) - g.sum(axis=0, dtype=np.float64)
        blas.gemv(c, g, ones, True, -1.0, 1.0, prep)
        np.testing.assert_allclose(c, want, **TOL[dtype])
    for c2 in (c.copy(), c.copy()):
        want = c2.astype(np.float64) - grads[0].sum(axis=0, dtype=np.float64)
        blas.gemv(c2, grads[0], ones, True, -1.0, 1.0, prep)
        np.testing.assert_allclose(c2, want, **TOL[dtype])


def test_gemv_kernel_without_blas_and_with_nan(monkeypatch):
    a = np.array([[np.nan, 1.0], [np.inf, 0.0], [1.0, 2.0]])
    c = np.array([1.0, np.inf])
    with np.errstate(all="ignore"):
        want = c - a.sum(axis=0)
        blas.gemv(c, a, np.ones(3), True, -1.0, 1.0, blas.Prepared())
    np.testing.assert_array_equal(c, want)
    monkeypatch.setattr(blas, "GEMV", {})
    c = np.arange(2.0)
    with np.errstate(all="ignore"):
        want = a.sum(axis=0) - c
        blas.gemv(c, a.T.copy(), np.ones(3), False, 1.0, -1.0, blas.Prepared())
    np.testing.assert_array_equal(c, want)


# compiled graphs ----------------------------------------------------------------------

def biased_model(seed: int, dtype):
    """A random three-layer model with row biases (one kept 2-D, (1, n)), one updated with a
    factor on its old value: (inputs, outputs, updates, params)."""
    r = np.random.default_rng(seed)
    d0, d1, d2, d3 = (int(v) for v in r.integers(2, 9, 4))
    name = np.dtype(dtype).name
    x = gc.placeholder((None, d0), name, name="x")
    y = gc.placeholder((None,), "int64", name="y")
    w = lambda *s: gc.variable((r.standard_normal(s) / 2).astype(dtype))  # noqa: E731
    W1, b1, W2, b2, W3, b3 = w(d0, d1), w(d1), w(d1, d2), w(1, d2), w(d2, d3), w(d3)
    h = gc.relu(x @ W1 + b1)
    h2 = gc.tanh(h @ W2 + b2)
    z = h2 @ W3 + b3
    loss = gc.mean(gc.softmax_cross_entropy(z, y))
    params = [W1, b1, W2, b2, W3, b3]
    grads = gc.grad(loss, params)
    lr = float(r.choice([0.1, 0.5]))
    updates = [(p, p - lr * g) for p, g in zip(params[:-1], grads)]
    updates.append((b3, 0.9 * b3 - lr * grads[-1]))        # beta 0.9
    return [x, y], [loss, z], updates, params


def feeds_of(inputs, classes: int, dtype, seed=0):
    r = np.random.default_rng(seed)
    x, y = inputs
    return lambda b: {x: r.standard_normal((b, x.shape[1])).astype(dtype),
                      y: r.integers(0, classes, b)}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_biased_models_match_eval(seed, dtype):
    inputs, outs, updates, params = biased_model(seed, dtype)
    f = gc.function(inputs, outs, updates=updates)
    classes = outs[1].shape[1]
    compare(f, feeds_of(inputs, classes, dtype, seed), outs, updates, params, dtype,
            batches=(5, 3, 5, 5))
    if BLAS_HERE:
        # the row biases' updates (the (1, n) bias's sum is reshaped: product and subtract)
        assert f.source.count("xp.gemv(") == 2, f.source
    assert all(c not in (a, b) for c, a, b in gemm_calls(f.source)), f.source
    assert all(c != a for c, a in gemv_calls(f.source)), f.source


def gemv_calls(source: str) -> list[tuple[str, str]]:
    return [tuple(line.split("xp.gemv(")[1].split(", ")[:2])
            for line in source.splitlines() if "xp.gemv(" in line]


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_sums_over_either_axis_update_a_variable(axis, keepdims):
    """v - 0.3 * sum(tanh(x @ W), axis) and v + sum(...): a GEMV over the product's buffer
    with its rows (axis 0) or along them (axis 1), values as eval gives over new batches."""
    x = gc.placeholder((6, 5), "float64", name="x")
    W = gc.variable(RNG.standard_normal((5, 4)), name="W")
    t = gc.tanh(x @ W)
    shape = (4,) if axis == 0 else (6,)
    shape = (1,) + shape if keepdims and axis == 0 else shape + (1,) if keepdims else shape
    v = gc.variable(RNG.standard_normal(shape), name="v")
    u = gc.variable(RNG.standard_normal(shape), name="u")
    s = gc.sum(t, axis=axis, keepdims=keepdims)
    upd = [(v, v - 0.3 * s), (u, u + gc.sum(t * t, axis=axis, keepdims=keepdims))]
    f = gc.function([x], [gc.sum(t)], updates=upd)
    compare(f, feeder([x], np.float64), [], upd, [v, u], np.float64, batches=(6, 6, 6))
    if GEMV_HERE:
        assert f.source.count("xp.gemv(") == 2, f.source
        assert all(c.startswith("w") for c, _ in gemv_calls(f.source)), f.source  # into v, u


def test_a_failing_call_leaves_every_bias_old():
    """A label out of range fails in the loss, before any GEMV writes a bias."""
    inputs, outs, updates, params = biased_model(2, np.float32)
    f = gc.function(inputs, outs, updates=updates)
    feeds = feeds_of(inputs, outs[1].shape[1], np.float32)
    f(*feeds(5).values())
    before = [p.value.copy() for p in params]
    x, y = feeds(5).values()
    y[2] = 99
    with pytest.raises(gc.GraphcError):
        f(x, y)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)


def test_check_numerics_keeps_every_step():
    inputs, outs, updates, params = biased_model(1, np.float32)
    f = gc.function(inputs, outs, updates=updates, check_numerics=True)
    compare(f, feeds_of(inputs, outs[1].shape[1], np.float32), outs, updates, params,
            np.float32, batches=(4, 4))
    assert "xp.gemv(" not in f.source and "xp.gemm(" not in f.source


def test_a_feed_keeps_its_product_with_ones():
    """Finding a feed's address again costs what the GEMV saves: a feed's sum keeps its
    product with ones."""
    x = gc.placeholder((None, 6), "float32", name="x")
    W = gc.variable(RNG.standard_normal((6, 5)).astype(np.float32), name="W")
    b = gc.variable(RNG.standard_normal(5).astype(np.float32), name="b")
    v = gc.variable(RNG.standard_normal(6).astype(np.float32), name="v")
    upd = [(b, b - gc.sum(x @ W, axis=0)), (v, v - gc.sum(x, axis=0))]
    f = gc.function([x], [x @ W + b], updates=upd)
    compare(f, feeder([x], np.float32), [], upd, [b, v], np.float32, batches=(4, 4))
    if GEMV_HERE:
        assert [a for _, a in gemv_calls(f.source)] == ["b0"], f.source     # not x0
    assert blas.pays_vector(32, 10, True) and not blas.pays_vector(32, 10, False)
    assert not blas.pays_vector(512, 1, True) and not blas.pays_vector(1, 8, True)


def test_the_export_carries_the_gemv_kernel(tmp_path):
    f, params = mlp_step((10, 7, 3), seed=4)
    data = [[RNG.standard_normal((6, 10)).astype(np.float32), RNG.integers(0, 3, 6)]
            for _ in range(4)]
    check_export(f, data[:1], data[1:], tmp_path, params, rtol=1e-5)
    text = (tmp_path / "export" / "step.py").read_text()
    if BLAS_HERE:
        assert "def gemv(" in text and "GEMV = find_gemm('gemv')" in text
        found = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, "
                                f"{str(tmp_path / 'export')!r}); import step; "
                                "print(sorted(step.GEMV))"], capture_output=True, text=True,
                               cwd=tmp_path, env={"OPENBLAS_NUM_THREADS": "1"}, timeout=120)
        assert found.stdout.split() == ["['d',", "'f']"], found.stderr   # it calls BLAS there


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_vectors_mean_is_one_dot_product(dtype):
    """mean(v) (sum over the size) and sum(v) / 3 of a vector computed per call, means of
    matrices, of a feed's reshape and of a buffer (flat, a view made once): one product with
    a constant vector of 1/k, values as eval's over batches of 5, 3, 5 and 1; a sum also read
    elsewhere, or of more than MEAN_MAX elements, keeps its reduction."""
    name = np.dtype(dtype).name
    x = gc.placeholder((None, 4), name, name="x")
    W = gc.variable(RNG.standard_normal((4, 2)).astype(dtype), name="W")
    v = gc.tanh(x @ W)[:, 0]
    s = gc.sum(gc.exp(v))
    big = gc.reshape(x, (-1, 2, 2))
    outs = [gc.mean(v * v), gc.sum(v) / 3.0, s / 7.0, s, gc.mean(x @ W), gc.mean(big),
            gc.mean(gc.exp(big)), gc.mean(gc.tanh(gc.variable(RNG.standard_normal(
                (300, 300)).astype(dtype)) * gc.sum(x)))]
    f = gc.function([x], outs)
    compare(f, feeder([x], dtype, 2), outs, [], [], dtype, batches=(5, 3, 5, 1))
    src = f.source
    assert src.count("xp.matmul(") - src.count("xp.matmul(x0,") == 5, src
    assert "reshape(-1), made once per plan" in src and "v20.reshape(-1)" in src, src
    assert src.count("xp.add.reduce(") == 3, src     # s (read twice), sum(x), > MEAN_MAX
