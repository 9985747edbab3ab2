"""Products stored transposed (runtime/layout.py, TRANSPOSED): at several BLAS threads a 2-D
product with few rows and more columns is written into an F-ordered buffer (NumPy then asks
the BLAS for c.T = b.T @ a.T), and so are the elementwise steps of its shape reading it.
Compiled values equal eval's whatever is stored so; the rule decides per plan from the BLAS's
thread count when the plan is made."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.ir import evaluate
from graphc.runtime import blas, layout
from tests.helpers import eval_trajectory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def transposed_buffers(f) -> list[str]:
    """Names of the last plan's 2-D buffers stored transposed (F-ordered, not C-ordered)."""
    return sorted(k for k, a in f.last_plan.ns.items() if k[:1] == "b"
                  and isinstance(a, np.ndarray) and a.ndim == 2 and not a.flags.c_contiguous
                  and a.flags.f_contiguous)


def random_chain(seed: int):
    """A random dense chain (1-3 layers 100-300 wide, matmul with W or W.T, a bias or not,
    relu/tanh/none) with a 5-wide head and SGD on every weight: (x, dtype, params, loss,
    updates). Its first product has rows < columns and over layout.THREADED multiply-adds at
    24 rows, so the rule stores it transposed at 2 threads."""
    r = np.random.default_rng(900 + seed)
    dtype = str(r.choice(["float32", "float64"]))
    k = int(r.choice([100, 160, 300]))
    x = gc.placeholder((None, k), dtype, "x")
    h, params = x, []
    for d in range(int(r.integers(1, 4))):
        n = int(r.choice([130, 200, 260]))
        if r.random() < 0.3:               # W stored (n, k), read as W.T
            params.append(gc.variable(r.standard_normal((n, k)).astype(dtype) / np.sqrt(k)))
            y = h @ gc.transpose(params[-1])
        else:
            params.append(gc.variable(r.standard_normal((k, n)).astype(dtype) / np.sqrt(k)))
            y = h @ params[-1]
        if r.random() < 0.6:
            params.append(gc.variable(r.standard_normal(n).astype(dtype) * 0.1))
            y = y + params[-1]
        h = [gc.relu, gc.tanh, lambda v: v][int(r.integers(0, 3))](y)
        k = n
    params.append(gc.variable(r.standard_normal((k, 5)).astype(dtype) / np.sqrt(k)))
    loss = gc.mean(gc.tanh(h @ params[-1]) ** 2)
    updates = [(v, v - 0.1 * g) for v, g in zip(params, gc.grad(loss, params))]
    return x, dtype, params, loss, updates


@pytest.mark.parametrize("seed", range(10))
def test_random_dense_chains_train_as_eval_with_transposed_products(seed, monkeypatch):
    # batches 24 (stored transposed), 2 (products too small), 24 again, 96 (rows > 64)
    monkeypatch.setattr(blas, "threads", lambda: 2)
    x, dtype, params, loss, updates = random_chain(seed)
    r = np.random.default_rng(seed)
    batches = [r.standard_normal((n, x.shape[1])).astype(dtype) for n in (24, 2, 24, 96)]
    want = eval_trajectory(x, loss, updates, batches)
    f = gc.function([x], loss, updates=updates)
    tol = 1e-4 if dtype == "float32" else 1e-9
    for i, (a, (loss_want, values_want)) in enumerate(zip(batches, want)):
        np.testing.assert_allclose(f(a), loss_want, rtol=tol, atol=tol)
        for v, value in zip(params, values_want):
            np.testing.assert_allclose(v.value, value, rtol=10 * tol, atol=10 * tol)
        stored = transposed_buffers(f)
        assert bool(stored) == (len(a) == 24), (len(a), stored)
        for name in stored:        # never reshaped (a copy: a write through it is lost)
            assert f"{name}.reshape" not in f.source


def test_the_rule_decides_from_the_shape_and_the_thread_count():
    pays = layout.transposed_pays
    assert pays(32, 128, 784, 2)                   # the MLP's first layer at batch 32
    assert not pays(32, 128, 784, 1)               # one thread: the same kernel either way
    assert not pays(512, 128, 784, 2)              # more rows than columns
    assert not pays(96, 128, 784, 2)               # over MAX_ROWS rows
    assert not pays(32, 64, 128, 2)                # OpenBLAS runs it on one thread anyway
    assert not pays(32, 10, 64, 2) and not pays(512, 10, 784, 2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_sum_of_two_products_stored_transposed_trains_as_eval(dtype, monkeypatch):
    # tanh(x @ W1 + z @ W3): the second product is the dense's bias (read by its add), both
    # stored transposed, and so is the gradient the weights' updates read
    monkeypatch.setattr(blas, "threads", lambda: 2)
    r = np.random.default_rng(4)
    x, z = gc.placeholder((None, 300), dtype, "x"), gc.placeholder((None, 200), dtype, "z")
    ws = [gc.variable(r.standard_normal(s).astype(dtype) * 0.05)
          for s in ((300, 256), (200, 256), (256, 5))]
    loss = gc.mean((gc.tanh(x @ ws[0] + z @ ws[1]) @ ws[2]) ** 2)
    updates = [(w, w - 0.1 * g) for w, g in zip(ws, gc.grad(loss, ws))]
    f = gc.function([x, z], loss, updates=updates)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for rows in (24, 24, 40):
        feeds = {x: r.standard_normal((rows, 300)).astype(dtype),
                 z: r.standard_normal((rows, 200)).astype(dtype)}
        want = evaluate([loss] + [u for _, u in updates], feeds)
        np.testing.assert_allclose(f(feeds[x], feeds[z]), want[0], rtol=tol, atol=tol)
        for w, value in zip(ws, want[1:]):
            np.testing.assert_allclose(w.value, value, rtol=10 * tol, atol=10 * tol)
        assert len(transposed_buffers(f)) >= 3
    assert f.source.count("[stored transposed]") == 4


def mlp(batch_rows: int):
    r = np.random.default_rng(3)
    x = gc.placeholder((None, 784), "float32", "x")
    w1 = gc.variable(r.standard_normal((784, 128)).astype(np.float32) * 0.03, name="W1")
    b1 = gc.variable(np.zeros(128, np.float32), name="b1")
    w2 = gc.variable(r.standard_normal((128, 10)).astype(np.float32) * 0.1, name="W2")
    y = gc.placeholder((None,), "int64", "y")
    loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ w1 + b1) @ w2, y))
    params = [w1, b1, w2]
    f = gc.function([x, y], loss, updates=[(p, p - 0.1 * g)
                                          for p, g in zip(params, gc.grad(loss, params))])
    feeds = [r.standard_normal((batch_rows, 784)).astype(np.float32),
             np.arange(batch_rows) % 10]
    return f, feeds


@pytest.mark.parametrize("threads", [1, 2])
def test_an_mlp_step_stores_its_first_layer_transposed_only_on_several_threads(
        threads, monkeypatch):
    monkeypatch.setattr(blas, "threads", lambda: threads)
    f, feeds = mlp(32)
    f(*feeds)
    stored = transposed_buffers(f)
    if threads == 1:
        assert not stored and "[stored transposed]" not in f.source
        return
    # the layer's value, its gradient (a product read only by the transposed ReLU mask step,
    # which then writes in place) and the mask step's scratch: marked in the source
    assert len(stored) == 3
    assert f.source.count("[stored transposed]") == 3
    # the weight's update reads the transposed gradient in one BLAS call, as a bias's GEMV
    assert "xp.gemm(w1, x0," in f.source and "xp.gemv(w2," in f.source


def test_no_value_stays_transposed_when_an_elementwise_reader_of_its_shape_is_c_ordered(
        monkeypatch):
    """A narrow layer's weight gradient x.T @ g (64 rows) read by the SGD update that writes
    the C-ordered variable, and a product read by an output's elementwise step, stay in C
    order (a ufunc over mixed layouts ran 2-4x slower than the product saved: probe29);
    values as eval either way."""
    monkeypatch.setattr(blas, "threads", lambda: 2)
    r = np.random.default_rng(5)
    x = gc.placeholder((None, 64), "float32", "x")
    w = gc.variable(r.standard_normal((64, 256)).astype(np.float32) * 0.1, name="W")
    v = gc.variable(r.standard_normal((256, 300)).astype(np.float32) * 0.1, name="V")
    h = gc.relu(x @ w)
    loss = gc.sum(h)
    (g,) = gc.grad(loss, [w])
    out = gc.tanh(h @ v)         # the output reads the product elementwise: C order
    u = gc.variable(r.standard_normal((256, 300)).astype(np.float32) * 0.1, name="U")
    mask = (h @ u) > 0.5         # another product, read by a comparison (bool) in C order
    f = gc.function([x], [loss, out, mask], updates=[(w, w - 0.01 * g)])
    feed = r.standard_normal((32, 64)).astype(np.float32)
    want = evaluate([loss, out, w - 0.01 * g, mask], {x: feed})
    got = f(feed)
    np.testing.assert_array_equal(got[2], want[3])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w.value, want[2], rtol=1e-5, atol=1e-6)
    assert layout.transposed_pays(32, 256, 64, 2) and layout.transposed_pays(64, 256, 32, 2)
    for line in f.source.splitlines():
        if "[stored transposed]" in line:
            assert "transpose_a=True" not in line, line
    assert not any("(?, 300)" in line and "[stored transposed]" in line
                   for line in f.source.splitlines())


def test_a_plan_keeps_the_layouts_it_was_made_with(monkeypatch):
    """The thread count is asked when a plan is made: later calls of that plan run it as it
    is (values unchanged), and a plan for another batch asks again."""
    monkeypatch.setattr(blas, "threads", lambda: 2)
    f, feeds = mlp(32)
    want = f(*feeds)
    monkeypatch.setattr(blas, "threads", lambda: 1)
    assert transposed_buffers(f)
    f2, feeds2 = mlp(32)
    np.testing.assert_allclose(f2(*feeds2), want, rtol=1e-6)
    assert not transposed_buffers(f2)


def test_blas_gemm_writes_an_f_ordered_result():
    r = np.random.default_rng(0)
    for char in "fd":
        for ta in (False, True):
            for tb in (False, True):
                prep = blas.Prepared()
                for step in range(3):          # a new a each call: its address is renewed
                    a = r.standard_normal((7, 5) if ta else (5, 7)).astype(char)
                    b = r.standard_normal((3, 7) if tb else (7, 3)).astype(char)
                    c = np.asfortranarray(r.standard_normal((5, 3)).astype(char))
                    want = c - 2 * (a.T if ta else a) @ (b.T if tb else b)
                    blas.gemm(c, a, b, ta, tb, -2.0, 1.0, prep)
                    np.testing.assert_allclose(c, want, rtol=1e-5)
                    assert (prep["seen"][3] is not None) == bool(blas.GEMM)


def test_an_exported_plan_keeps_its_transposed_buffers(tmp_path, monkeypatch):
    from tests.test_export import check_export
    monkeypatch.setattr(blas, "threads", lambda: 2)
    f, _ = mlp(24)
    r = np.random.default_rng(5)
    calls = [[r.standard_normal((24, 784)).astype(np.float32), np.arange(24) % 10]
             for _ in range(3)]
    f(*calls[0])
    assert transposed_buffers(f)
    path = check_export(f, calls[:1], calls[1:], tmp_path, f.graph.variables, rtol=1e-5)
    assert "np.empty((128, 24), np.dtype('float32')).T" in open(path).read()


SCRIPT = """
import numpy as np, sys
sys.path.insert(0, "tests")
import test_runtime_transposed as t
from graphc.runtime import blas
f, feeds = t.mlp(32)
got = [f(*feeds) for _ in range(3)]
print(blas.threads(), len(t.transposed_buffers(f)), repr([float(v) for v in got]))
"""


def test_at_two_blas_threads_in_a_fresh_process_the_values_are_those_of_one():
    outs = []
    for n in (1, 2):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n))
        run = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True)
        threads, stored, values = run.stdout.split(maxsplit=2)
        outs.append((int(threads), int(stored), eval(values)))
    (t1, s1, v1), (t2, s2, v2) = outs
    assert s1 == 0 and (s2 == 3) == (t2 > 1)
    np.testing.assert_allclose(v2, v1, rtol=1e-5)
