"""The accumulating GEMM (runtime/blas.py and its lowering rule, rules.gemm_steps): the kernel
against float64 NumPy (both dtypes, transposes, alpha, beta, odd layouts, new arrays between
calls, no BLAS), and compiled graphs whose updates and sums of products run through it against
eval over several calls and two batch sizes: a variable inside its own product, two updates
reading each other's variable, NaN and inf, a failing call, check_numerics, the standalone
export (with and without a BLAS where it runs) and the fallback when no BLAS is found."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.runtime import blas
from tests.test_export import check_export

RNG = np.random.default_rng(1717)
TOL = {np.float32: dict(rtol=2e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}
BLAS_HERE = "f" in blas.GEMM and "d" in blas.GEMM


@pytest.fixture
def everywhere(monkeypatch):
    """The rule picks the GEMM for every shape (the tests' products are small)."""
    monkeypatch.setattr(blas, "MIN_WORK", 0)


def test_numpys_own_blas_is_found():
    """NumPy's wheels ship scipy-openblas: both routines are found and checked (find_gemm's
    small product); a NumPy without a known BLAS gives {} and the tests below still run."""
    config = str(getattr(np.__config__, "CONFIG", {}).get("Build Dependencies", {}))
    if "scipy-openblas" in config or "openblas" in config:
        assert BLAS_HERE
    for char, routine in blas.GEMM.items():
        assert blas.works(routine, char)


def operand(shape, dtype, transposed: bool, order: str):
    """An array x with op(x) of `shape`: x is op(x).T when transposed; stored in `order`
    ("C", "F", or "S": a strided slice, which BLAS cannot read)."""
    want = shape[::-1] if transposed else shape
    if order == "S":
        return RNG.standard_normal((want[0], 2 * want[1])).astype(dtype)[:, ::2]
    return np.asarray(RNG.standard_normal(want).astype(dtype), order=order)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("order", ["C", "F", "S"])
def test_kernel_matches_float64_numpy(dtype, ta, tb, order):
    m, n, k = 7, 5, 6
    for alpha, beta in ((-1.0, 1.0), (0.37, 1.0), (2.0, -1.0), (-1.0, 0.9), (0.0, 1.0)):
        a, b = operand((m, k), dtype, ta, order), operand((k, n), dtype, tb, "C")
        c = RNG.standard_normal((m, n)).astype(dtype)
        op = lambda x, t: (x.T if t else x).astype(np.float64)  # noqa: E731
        want = alpha * op(a, ta) @ op(b, tb) + beta * c.astype(np.float64)
        prep = blas.Prepared()
        assert blas.gemm(c, a, b, ta, tb, alpha, beta, prep) is c
        np.testing.assert_allclose(c, want, **TOL[dtype])
        blas_used = prep["seen"][3] is not None
        assert blas_used == (BLAS_HERE and order != "S" and alpha != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_follows_new_arrays_between_calls(dtype):
    """The prepared call is kept while the arrays are the same; a new feed of the same layout
    changes one address (a new c of c's layout too), a new layout (Fortran, read-only, a
    slice) prepares again."""
    prep = blas.Prepared()
    c = RNG.standard_normal((4, 3)).astype(dtype)
    b = RNG.standard_normal((5, 3)).astype(dtype)
    feeds = [RNG.standard_normal((5, 4)).astype(dtype) for _ in range(3)]
    feeds.append(np.asfortranarray(feeds[0]))
    feeds.append(feeds[1].copy())
    feeds[-1].flags.writeable = False
    feeds.append(RNG.standard_normal((5, 8)).astype(dtype)[:, ::2])
    for a in feeds + feeds[:2]:
        want = c.astype(np.float64) - 0.5 * a.T.astype(np.float64) @ b
        blas.gemm(c, a, b, True, False, -0.5, 1.0, prep)
        np.testing.assert_allclose(c, want, **TOL[dtype])
    for c2 in (c.copy(), c.copy(), np.asfortranarray(c)):   # a variable's new array, a
        want = c2.astype(np.float64) - 0.5 * feeds[0].T.astype(np.float64) @ b  # fresh output
        blas.gemm(c2, feeds[0], b, True, False, -0.5, 1.0, prep)
        np.testing.assert_allclose(c2, want, **TOL[dtype])


def test_kernel_without_blas_and_for_empty_products(monkeypatch):
    monkeypatch.setattr(blas, "GEMM", {})
    a, b = RNG.standard_normal((3, 4)), RNG.standard_normal((4, 2))
    c = np.ones((3, 2))
    blas.gemm(c, a, b, False, False, -2.0, 1.0, blas.Prepared())
    np.testing.assert_allclose(c, 1 - 2 * a @ b, rtol=1e-14)
    monkeypatch.undo()
    c = np.ones((3, 2))
    blas.gemm(c, np.ones((3, 0)), np.ones((0, 2)), False, False, -1.0, 1.0, blas.Prepared())
    assert (c == 1).all()
    c = np.ones((3, 2))
    blas.gemm(c, np.ones((3, 0)), np.ones((0, 2)), False, False, -1.0, -1.0, blas.Prepared())
    assert (c == -1).all()


def test_a_read_only_c_is_refused_as_numpy_refuses_it():
    c = np.ones((3, 2))
    c.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        blas.gemm(c, np.ones((3, 4)), np.ones((4, 2)), False, False, -1.0, 1.0, {})
    assert (c == 1).all()


def test_nan_and_inf_propagate_as_matmul_and_subtract():
    a = np.array([[np.nan, 1.0], [np.inf, 0.0], [1.0, 2.0]]).T     # (2, 3)
    b = np.array([[1.0], [0.0]])                                   # (2, 1)
    c = np.array([[1.0], [2.0], [np.inf]])                         # (3, 1)
    with np.errstate(all="ignore"):
        want = c - a.T @ b
        blas.gemm(c, a, b, True, False, -1.0, 1.0, blas.Prepared())
    np.testing.assert_array_equal(c, want)


# compiled graphs ----------------------------------------------------------------------

def random_model(seed: int, dtype):
    """A random two-layer model with SGD updates (some with the learning rate left as a
    factor of the product, some folded by the passes) and a sum of two products as an output:
    (placeholders, outputs, updates, params)."""
    r = np.random.default_rng(seed)
    d0, d1, d2 = (int(v) for v in r.integers(2, 9, 3))
    name = np.dtype(dtype).name
    x = gc.placeholder((None, d0), name, name="x")
    z = gc.placeholder((None, d2), name, name="z")
    W1 = gc.variable((r.standard_normal((d0, d1)) / 2).astype(dtype), name="W1")
    W2 = gc.variable((r.standard_normal((d1, d2)) / 2).astype(dtype), name="W2")
    V = gc.variable((r.standard_normal((d2, d1)) / 2).astype(dtype), name="V")
    h = gc.tanh(x @ W1)
    y = h @ W2
    loss = gc.sum(y * y) if r.random() < 0.5 else gc.mean(gc.sum(gc.tanh(y) * y, axis=1))
    params = [W1, W2, V]
    grads = gc.grad(loss + gc.sum((z @ V) * h), params)
    lrs = r.choice([0.1, 0.03, 1.0], 3)
    updates = [(p, p - float(lr) * g) for p, g, lr in zip(params, grads, lrs)]
    both = gc.tanh(z @ V) @ W2 + z @ (V @ W2)          # add of two products
    diff = h.T @ z - W2 @ (V @ W2)                      # sub(dense, c): beta = -1
    return [x, z], [loss, both, diff], updates, params


def compare(f, feeds_for, outs, updates, params, dtype, batches=(4, 2, 4)):
    """f against eval call by call: outputs, then every variable's new value."""
    for batch in batches:
        feeds = feeds_for(batch)
        want = [o.eval(feeds) for o in outs]
        new = [u.eval(feeds) for _, u in updates]
        got = f(*feeds.values())
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, **TOL[dtype])
        for p, w in zip(params, new):
            np.testing.assert_allclose(p.value, w, **TOL[dtype], err_msg=p.name)


def feeder(inputs, dtype, seed=0):
    r = np.random.default_rng(seed)
    return lambda batch: {p: r.standard_normal((batch,) + p.shape[1:]).astype(dtype)
                          for p in inputs}


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_models_compiled_with_gemm_match_eval(everywhere, seed, dtype):
    inputs, outs, updates, params = random_model(seed, dtype)
    f = gc.function(inputs, outs, updates=updates)
    compare(f, feeder(inputs, dtype, seed), outs, updates, params, dtype)
    if BLAS_HERE:
        assert f.source.count("xp.gemm(") >= 4, f.source
    assert all(c not in (a, b) for c, a, b in gemm_calls(f.source))


@pytest.mark.parametrize("seed", range(3))
def test_without_blas_the_lowering_keeps_matmul_and_subtract(everywhere, monkeypatch, seed):
    monkeypatch.setattr(blas, "GEMM", {})
    inputs, outs, updates, params = random_model(seed, np.float64)
    f = gc.function(inputs, outs, updates=updates)
    compare(f, feeder(inputs, np.float64, seed), outs, updates, params, np.float64)
    assert "xp.gemm(" not in f.source


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_momentum_updates_run_through_gemm(everywhere, dtype):
    """SGD with momentum: v <- 0.9 v - g (beta = 0.9) and W <- W + lr v, against eval over
    calls of two batch sizes."""
    from graphc import nn
    r = np.random.default_rng(4)
    name = np.dtype(dtype).name
    x = gc.placeholder((None, 7), name, name="x")
    y = gc.placeholder((None,), "int64", name="y")
    W = gc.variable((r.standard_normal((7, 6)) / 2).astype(dtype), name="W")
    V = gc.variable((r.standard_normal((6, 4)) / 2).astype(dtype), name="V")
    loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ W) @ V, y))
    upd = nn.SGD(0.1, momentum=0.9).updates(loss, [W, V])
    f = gc.function([x, y], [loss], updates=upd)
    feeds = lambda b: {x: r.standard_normal((b, 7)).astype(dtype),  # noqa: E731
                       y: r.integers(0, 4, b)}
    compare(f, feeds, [loss], upd, [v for v, _ in upd], dtype, batches=(5, 3, 5, 5))
    if BLAS_HERE:
        betas = [float(line.split(", ")[6]) for line in f.source.splitlines()
                 if "xp.gemm(" in line]
        assert len(betas) == 2 and betas == pytest.approx([0.9, 0.9]), f.source


def test_a_variable_inside_its_own_product_reads_its_old_value(everywhere):
    """W - 0.1 W.T @ A, Q + 0.5 U @ Q, and two updates each reading the other's variable: no
    GEMM may write a variable its product reads (P's update may); the values equal eval's
    over several calls."""
    A = gc.placeholder((None, 5), "float64", name="A")
    W = gc.variable(RNG.standard_normal((5, 5)), name="W")
    U = gc.variable(RNG.standard_normal((5, 5)), name="U")
    Q = gc.variable(RNG.standard_normal((5, 5)), name="Q")
    P = gc.variable(RNG.standard_normal((5, 5)), name="P")
    upd = [(W, W - 0.1 * (W.T @ (A.T @ A))),
           (U, U - gc.transpose(Q) @ Q), (Q, Q + 0.5 * (U @ Q)), (P, P - A.T @ gc.tanh(A))]
    f = gc.function([A], [], updates=upd)
    compare(f, feeder([A], np.float64), [], upd, [W, U, Q, P], np.float64, batches=(3, 3, 2))
    calls = gemm_calls(f.source)
    assert calls and all(c not in (a, b) for c, a, b in calls), f.source


def gemm_calls(source: str) -> list[tuple[str, str, str]]:
    """(c, a, b) of every xp.gemm line: BLAS must never write memory it reads (the values
    may still come out right when it packs its operands first, so this is checked apart)."""
    return [tuple(line.split("xp.gemm(")[1].split(", ")[:3])
            for line in source.splitlines() if "xp.gemm(" in line]


def test_a_changed_variable_array_is_followed(everywhere):
    """Assigning a variable between calls (a new array or new values) is seen by the
    prepared GEMM call."""
    x = gc.placeholder((None, 6), "float32", name="x")
    W = gc.variable(RNG.standard_normal((6, 4)).astype(np.float32), name="W")
    loss = gc.sum(gc.tanh(x @ W))
    upd = [(W, W - 0.1 * gc.grad(loss, [W])[0])]
    f = gc.function([x], [loss], updates=upd)
    feeds = feeder([x], np.float32)
    compare(f, feeds, [loss], upd, [W], np.float32, batches=(3,))
    W.value = RNG.standard_normal((6, 4)).astype(np.float32)
    compare(f, feeds, [loss], upd, [W], np.float32, batches=(3, 3))
    if BLAS_HERE:
        assert "xp.gemm(" in f.source


def test_nan_in_a_feed_reaches_the_updated_variable_as_eval_gives(everywhere):
    inputs, outs, updates, params = random_model(1, np.float32)
    f = gc.function(inputs, outs, updates=updates)
    feeds = feeder(inputs, np.float32)(3)
    next(iter(feeds.values()))[0, 0] = np.nan
    new = [u.eval(feeds) for _, u in updates]
    f(*feeds.values())
    for p, w in zip(params, new):
        assert np.isnan(w).any()
        np.testing.assert_allclose(p.value, w, **TOL[np.float32])


def mlp_step(sizes=(12, 9, 4), seed=3):
    r = np.random.default_rng(seed)
    x = gc.placeholder((None, sizes[0]), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    params, h = [], x
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        W = gc.variable((r.standard_normal((a, b)) * 0.3).astype(np.float32), name=f"W{k}")
        c = gc.variable(r.standard_normal(b).astype(np.float32) * 0.1, name=f"b{k}")
        params += [W, c]
        h = h @ W + c
        if k < len(sizes) - 2:
            h = gc.relu(h)
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    grads = gc.grad(loss, params)
    f = gc.function([x, y], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    return f, params


def test_a_failing_call_leaves_every_variable_old(everywhere):
    """A label out of range fails in the loss, before any GEMM writes a weight."""
    f, params = mlp_step()
    x = RNG.standard_normal((5, 12)).astype(np.float32)
    f(x, np.array([0, 1, 2, 3, 0]))
    before = [p.value.copy() for p in params]
    with pytest.raises(gc.GraphcError):
        f(x, np.array([0, 1, 9, 3, 0]))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.value, b)
    if BLAS_HERE:
        assert f.source.count("xp.gemm(") == 2 and f.source.count("xp.gemv(") == 2


def test_check_numerics_names_the_product_that_made_inf(everywhere):
    """Under check_numerics every step is checked where it is made: no GEMM step, and an inf
    product is named at its own dense step."""
    x = gc.placeholder((None, 3), "float32", name="x")
    W = gc.variable(np.full((3, 2), 1e20, np.float32), name="W")
    V = gc.variable(np.ones((3, 2), np.float32), name="V")
    f = gc.function([x], [], updates=[(V, V - x.T @ (x @ W))], check_numerics=True)
    assert "xp.gemm(" not in f.source
    with pytest.raises(gc.GraphcError, match=r"check_numerics: step \d+ produced Inf.*dense"):
        f(np.full((2, 3), 1e10, np.float32))
    assert (V.value == 1).all()


def test_the_export_carries_the_gemm_kernel(everywhere, tmp_path):
    f, params = mlp_step((10, 7, 3))
    data = [[RNG.standard_normal((6, 10)).astype(np.float32), RNG.integers(0, 3, 6)]
            for _ in range(4)]
    check_export(f, data[:1], data[1:], tmp_path, params, rtol=1e-5)
    text = (tmp_path / "export" / "step.py").read_text()
    if BLAS_HERE:
        assert "def gemm(" in text and "GEMM = find_gemm()" in text
        found = subprocess.run([sys.executable, "-I", "-c", "import sys; sys.path.insert(0, "
                                f"{str(tmp_path / 'export')!r}); import step; "
                                "print(sorted(step.GEMM))"], capture_output=True, text=True,
                               cwd=tmp_path, env={"OPENBLAS_NUM_THREADS": "1"}, timeout=120)
        assert found.stdout.split() == ["['d',", "'f']"], found.stderr   # it calls BLAS there


def test_an_export_runs_where_no_blas_is_found(everywhere, tmp_path):
    """The module finds the BLAS of the NumPy it runs with; without one (forced here) the
    kernels' NumPy paths (GEMM for the weights, GEMV for the biases) give the same values."""
    if not BLAS_HERE:
        pytest.skip("no BLAS found: the export has no GEMM step")
    f, params = mlp_step((10, 7, 3), seed=5)
    data = [[RNG.standard_normal((6, 10)).astype(np.float32), RNG.integers(0, 3, 6)]
            for _ in range(3)]
    folder = tmp_path / "export"
    folder.mkdir()
    f(*data[0])
    f.export(folder / "step.py")
    path = folder / "step.py"
    text = path.read_text()
    assert text.count("GEMM = find_gemm()") == 1 and text.count("GEMV = find_gemm('gemv')") == 1
    path.write_text(text.replace("GEMM = find_gemm()", "GEMM = {}")
                    .replace("GEMV = find_gemm('gemv')", "GEMV = {}"))
    from tests.test_export import run_exported
    got = run_exported(folder, data[1:], tmp_path)
    assert "error" not in got, str(got["error"])
    for i, args in enumerate(data[1:]):
        np.testing.assert_allclose(got[f"o{i}_0"], f(*args), rtol=1e-5, atol=1e-6)
    for p in params:
        np.testing.assert_allclose(got[f"s:{p.name}"], p.value, rtol=1e-5, atol=1e-6)


def test_a_feed_in_a_small_product_keeps_matmul_and_subtract():
    """Plan buffers and variables are the same arrays every call: their GEMM always pays; a
    feed's address is found again every call, which small products do not repay."""
    f, _ = mlp_step()
    f(RNG.standard_normal((5, 12)).astype(np.float32), np.array([0, 1, 2, 3, 0]))
    src = f.source
    if BLAS_HERE:
        assert "xp.gemm(w" in src and "xp.gemm(w0, x0" not in src and "x0.T" in src
    assert blas.pays(4, 4, 4, True) and not blas.pays(128, 64, 16, False)
    assert blas.pays(784, 128, 32, False) and not blas.pays(784, 1, 512, True)
