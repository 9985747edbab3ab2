"""Function.export: the plan as a module that needs only NumPy, run in a process where graphc
cannot be imported; its outputs and its `state` compared with the Function's, call by call."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS, apply
from tests.helpers import leaves_for
from tests.test_ops import ROWS

# runs in a fresh interpreter (-I: no PYTHONPATH, no user site, cwd not on the path) with only
# the export folder on sys.path and graphc blocked: feeds from one .npz, results into another
RUNNER = r"""
import importlib.abc, sys
folder, feeds_path, out_path, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

class NoGraphc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "graphc":
            raise ImportError("graphc is not importable here")

sys.meta_path.insert(0, NoGraphc())
try:
    import graphc
except ImportError:
    pass
else:
    raise SystemExit("graphc was importable")
sys.path.insert(0, folder)
import numpy as np
import step

feeds = np.load(feeds_path)
out = {}
for i in range(calls):
    args = [feeds[f"c{i}_{j}"] for j in range(len([k for k in feeds.files
                                                   if k.startswith(f"c{i}_")]))]
    try:
        got = step.run(*args)
    except Exception as e:
        out["error"] = np.array(f"{type(e).__name__}: {e}")
        break
    for j, g in enumerate(got if isinstance(got, (list, tuple)) else [got]):
        out[f"o{i}_{j}"] = g
for name, value in step.state.items():
    out[f"s:{name}"] = value
np.savez(out_path, **out)
"""


def run_exported(folder, calls: list[list[np.ndarray]], tmp_path) -> dict:
    """Run step.py of `folder` on each call's feeds in a graphc-free process."""
    feeds = {f"c{i}_{j}": a for i, args in enumerate(calls) for j, a in enumerate(args)}
    feeds_path, out_path = tmp_path / "feeds.npz", tmp_path / "results.npz"
    np.savez(feeds_path, **feeds)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", ""), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-I", "-c", RUNNER, str(folder), str(feeds_path),
                           str(out_path), str(len(calls))], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with np.load(out_path) as f:
        return {k: f[k] for k in f.files}


def as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_export(f, before, after, tmp_path, variables=(), example=None, rtol=1e-6):
    """Call f on each of `before`, export, then call f and the module on each of `after`:
    same outputs, and the module's state equals f's variables at the end."""
    for args in before:
        f(*args)
    folder = tmp_path / "export"
    folder.mkdir()
    path = f.export(folder / "step.py", *(example or ()))
    assert os.path.exists(folder / "step.npz")
    got = run_exported(folder, after, tmp_path)
    assert "error" not in got, str(got["error"])
    for i, args in enumerate(after):
        want = as_list(f(*args))
        for j, w in enumerate(want):
            np.testing.assert_allclose(got[f"o{i}_{j}"], w, rtol=rtol, atol=rtol * 1e-1,
                                       err_msg=f"call {i} output {j}")
    for v in variables:
        np.testing.assert_allclose(got[f"s:{v.name}"], v.value, rtol=rtol, atol=rtol * 1e-1,
                                   err_msg=v.name)
    return path


def batches(rng, n, shape, classes=None, dtype=np.float32):
    out = []
    for _ in range(n):
        x = rng.standard_normal(shape).astype(dtype)
        out.append([x, rng.integers(0, classes, shape[0])] if classes else [x])
    return out


def test_mlp_training_step_state_follows_the_function(tmp_path):
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 20), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    sizes = [20, 16, 12, 5]
    params = []
    h = x
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        W = gc.variable((rng.standard_normal((a, b)) * 0.3).astype(np.float32), name=f"W{k}")
        c = gc.variable(np.zeros(b, np.float32), name=f"b{k}")
        params += [W, c]
        h = h @ W + c
        if k < 2:
            h = gc.relu(h)
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    grads = gc.grad(loss, params)
    f = gc.function([x, y], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    data = batches(rng, 5, (8, 20), classes=5)
    check_export(f, data[:2], data[2:], tmp_path, params)


def test_cnn_step(tmp_path):
    rng = np.random.default_rng(1)
    x = gc.placeholder((None, 1, 10, 10), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    K1 = gc.variable((rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32), name="K1")
    K2 = gc.variable((rng.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32), name="K2")
    W = gc.variable((rng.standard_normal((8 * 3 * 3, 4)) * 0.2).astype(np.float32), name="W")
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, K1, padding=1)), 2)      # (n, 8, 5, 5)
    h = gc.relu(gc.conv2d(h, K2))                                   # (n, 8, 3, 3)
    logits = gc.reshape(h, (-1, 72)) @ W
    loss = gc.mean(gc.softmax_cross_entropy(logits, y))
    params = [K1, K2, W]
    grads = gc.grad(loss, params)
    f = gc.function([x, y], loss, updates=[(p, p - 0.05 * g) for p, g in zip(params, grads)])
    data = batches(rng, 4, (6, 1, 10, 10), classes=4)
    check_export(f, data[:1], data[1:], tmp_path, params, rtol=1e-5)
    assert "def conv2d(" in (tmp_path / "export" / "step.py").read_text()
    # the channels-last buffers keep their layout (runtime/layout.py)
    assert ".transpose(0, 3, 1, 2)" in (tmp_path / "export" / "step.py").read_text()


def test_logistic_regression(tmp_path):
    rng = np.random.default_rng(2)
    x = gc.placeholder((None, 6), dtype="float64", name="x")
    t = gc.placeholder((None, 1), dtype="float64", name="t")
    w = gc.variable(np.zeros((6, 1)), name="w")
    b = gc.variable(np.zeros(1), name="b")
    p = gc.sigmoid(x @ w + b)
    loss = gc.mean(gc.binary_cross_entropy(p, t)) + 0.01 * gc.sum(w * w)
    gw, gb = gc.grad(loss, [w, b])
    f = gc.function([x, t], [loss, p], updates=[(w, w - 0.5 * gw), (b, b - 0.5 * gb)])
    data = [[rng.standard_normal((16, 6)), (rng.random((16, 1)) > 0.5).astype(np.float64)]
            for _ in range(4)]
    check_export(f, data[:1], data[1:], tmp_path, [w, b], rtol=1e-12)


def test_inference_function_exported_from_example_feeds_without_a_call(tmp_path):
    rng = np.random.default_rng(3)
    x = gc.placeholder((None, 5), name="x")
    W = gc.variable(rng.standard_normal((5, 3)).astype(np.float32), name="W")
    logits = x @ W
    f = gc.function([x], (gc.softmax(logits), gc.argmax(logits, axis=1)))
    data = batches(rng, 2, (7, 5))
    check_export(f, [], data, tmp_path, [W], example=data[0])


def test_ops_that_call_their_kernels(tmp_path):
    """take (an embedding), softmax, a layer norm, an einsum, a cumsum (a closure kernel)."""
    rng = np.random.default_rng(4)
    ids = gc.placeholder((4, 3), dtype="int64", name="ids")
    E = gc.variable(rng.standard_normal((10, 6)), name="E")
    A = gc.variable(rng.standard_normal((6, 6)), name="A")
    h = gc.take(E, ids)                                               # (4, 3, 6)
    mu = gc.mean(h, axis=-1, keepdims=True)
    h = (h - mu) / gc.sqrt(gc.mean((h - mu) ** 2, axis=-1, keepdims=True) + 1e-5)
    h = gc.einsum("btd,de->bte", h, A)
    att = gc.softmax(gc.einsum("bte,bse->bts", h, h), axis=-1)
    out = gc.cumsum(gc.einsum("bts,bse->bte", att, h), axis=1)
    cost = gc.sum(out * out)
    gE, gA = gc.grad(cost, [E, A])
    f = gc.function([ids], [cost, out], updates=[(E, E - 1e-3 * gE), (A, A - 1e-3 * gA)])
    data = [[rng.integers(0, 10, (4, 3))] for _ in range(3)]
    check_export(f, data[:1], data[1:], tmp_path, [E, A], rtol=1e-10)


def test_check_numerics_names_the_step_in_the_module_too(tmp_path):
    x = gc.placeholder((3,), dtype="float64", name="x")
    f = gc.function([x], gc.log(x) * 2.0, check_numerics=True)
    check_export(f, [[np.ones(3)]], [[np.array([1.0, 2.0, 3.0])]], tmp_path)
    got = run_exported(tmp_path / "export", [[np.array([1.0, -1.0, 3.0])]], tmp_path)
    with pytest.raises(gc.GraphcError) as want:
        f(np.array([1.0, -1.0, 3.0]))
    assert str(got["error"]) == f"GraphcError: {want.value}"
    assert "check_numerics: step 0 produced NaN: %1 = fused(%0, body=<2 ops: log, mul>)" \
        in str(want.value)


def test_random_op_continues_from_the_generator_state_at_export(tmp_path):
    """The module starts each random op's generator where the Function's was at export
    (seed=...: as graphc seeds it; the same draws follow, call by call)."""
    x = gc.placeholder((4, 5), dtype="float32", name="x")
    W = gc.variable(np.ones((5, 2), np.float32), name="W")
    noisy = gc.dropout(x, 0.5, seed=7) @ W + gc.random_normal((4, 2), seed=3)
    cost = gc.sum(noisy * noisy)
    f = gc.function([x], cost, updates=[(W, W - 0.01 * gc.grad(cost, [W])[0])])
    rng = np.random.default_rng(5)
    data = batches(rng, 4, (4, 5))
    check_export(f, data[:2], data[2:], tmp_path, [W])


def test_a_loop_exports_with_its_body_plan(tmp_path):
    rng = np.random.default_rng(6)
    xs = gc.placeholder((5, 2, 3), dtype="float64", name="xs")
    h0 = gc.placeholder((2, 4), dtype="float64", name="h0")
    W = gc.variable(rng.standard_normal((4, 4)) * 0.5, name="W")
    U = gc.variable(rng.standard_normal((3, 4)), name="U")
    hT, ys = gc.scan(lambda h, x: (gc.tanh(h @ W + x @ U),) * 2, h0, xs)
    cost = gc.sum(ys * ys) + gc.sum(hT)
    gW, gU = gc.grad(cost, [W, U])
    f = gc.function([xs, h0], [cost, hT], updates=[(W, W - 0.01 * gW), (U, U - 0.01 * gU)])
    data = [[rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 4))] for _ in range(3)]
    check_export(f, data[:1], data[1:], tmp_path, [W, U], rtol=1e-10)


def test_errors(tmp_path):
    x = gc.placeholder((None, 3), dtype="float64", name="x")
    f = gc.function([x], gc.exp(x))
    with pytest.raises(gc.GraphcError, match="has not been called yet"):
        f.export(tmp_path / "never.py")
    with pytest.raises(gc.GraphcError, match="must end with .py"):
        f.export(tmp_path / "step.txt", np.zeros((2, 3)))
    f(np.zeros((2, 3)))
    folder = tmp_path / "export"
    folder.mkdir()
    f.export(folder / "step.py")
    got = run_exported(folder, [[np.zeros((4, 3))]], tmp_path)      # another batch size
    assert "feeds x (4, 3): this module runs x (2, 3) (the shapes the Function had run" \
        in str(got["error"])

    # an op whose kernel has no source (made by exec): refused, naming the op and the step
    space: dict = {"np": np}
    exec("def twice(x):\n    return np.concatenate([x, x])", space)
    gc.register_op(gc.OpDef("twice_no_source", lambda x: ((2 * x.shape[0],), x.dtype, {}),
                            space["twice"]))
    try:
        y = gc.placeholder((3,), dtype="float64", name="y")
        g = gc.function([y], apply("twice_no_source", y))
        g(np.ones(3))
        with pytest.raises(gc.GraphcError, match=r"twice_no_source.*source is not available"):
            g.export(tmp_path / "twice.py")
    finally:
        del OPS["twice_no_source"]


# a user's op whose kernel reads a module-level array, a helper and a table of lambdas
WEIGHTS = np.array([0.5, -1.0, 2.0])
SQUASH = {"soft": lambda z: z / (1 + np.abs(z)), "hard": lambda z: np.clip(z, -1, 1)}


def weigh(x):
    return x * WEIGHTS


def weighted_squash_kernel(x, *, kind):
    return SQUASH[kind](weigh(x))


def test_a_users_op_kernel_is_inlined_with_what_it_reads(tmp_path):
    gc.register_op(gc.OpDef("weighted_squash", lambda x, *, kind: (x.shape, x.dtype,
                                                                    {"kind": kind}),
                            weighted_squash_kernel))
    try:
        x = gc.placeholder((None, 3), dtype="float64", name="x")
        f = gc.function([x], apply("weighted_squash", x, kind="soft") * 2.0)
        data = [[np.random.default_rng(k).standard_normal((4, 3))] for k in range(3)]
        check_export(f, data[:1], data[1:], tmp_path, rtol=1e-14)
        text = (tmp_path / "export" / "step.py").read_text()
        assert "def weighted_squash_kernel(x, *, kind):" in text and "def weigh(x):" in text
        assert "WEIGHTS = ARRAYS[" in text and "'soft': (lambda z: z / (1 + np.abs(z)))" in text
    finally:
        del OPS["weighted_squash"]


def test_a_parse_failing_once_as_cpython_311_can_is_retried(tmp_path, monkeypatch):
    """CPython 3.11's ast.parse raises SystemError ("AST constructor recursion depth mismatch")
    when another thread parses at the same moment (gh-106905): a full test run met it once
    while exporting a user's kernel; export parses again."""
    import ast

    from graphc.runtime import inline
    calls, parse = [], ast.parse

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=90, after=65)")
        return parse(*args, **kwargs)

    monkeypatch.setattr(inline.ast, "parse", flaky)
    inline.parsed.cache_clear()
    gc.register_op(gc.OpDef("lambda_twice", lambda x: (x.shape, x.dtype, {}), lambda x: 2 * x))
    try:
        x = gc.placeholder((3,), dtype="float64", name="x")
        g = gc.function([x], apply("lambda_twice", x))
        check_export(g, [[np.arange(3.0)]], [[np.arange(3.0)], [-np.ones(3)]], tmp_path)
        assert len(calls) >= 2       # the lambda's file parsed after the failure
    finally:
        del OPS["lambda_twice"]


def import_file(path):
    spec = importlib.util.spec_from_file_location(f"exported_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("row", [r for _, r in ROWS], ids=[i for i, _ in ROWS])
def test_every_op_table_row_exports(row, optimize, tmp_path):
    """Each op's compiled form, kernel calls included, written out and run (in this process,
    for speed; the module imports nothing from graphc): the Function's next call's values."""
    leaves = leaves_for(row.inputs)
    f = gc.function(list(leaves), [row.build(*leaves)], optimize=optimize)
    f(*row.inputs)
    path = f.export(tmp_path / "step.py")
    text = (tmp_path / "step.py").read_text()
    assert re.search(r"^\s*(import|from)\s+graphc", text, re.M) is None
    got = import_file(path).run(*row.inputs)
    for g, w in zip(got, f(*row.inputs)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=0)
