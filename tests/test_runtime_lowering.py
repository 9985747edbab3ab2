"""How ops are lowered: every elementwise op compiles to ufunc code (no silent kernel path),
and the ops added as one declaration (log1p, expm1, square) with their stabilization rules."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.ir import OPS, apply
from graphc.runtime import emit
from tests.test_export import check_export


def elementwise_rows():
    from tests.test_ops import ROWS
    seen, out = set(), []
    for _, r in ROWS:
        op = r.name
        if op in OPS and OPS[op].elementwise and not OPS[op].random and op not in seen:
            seen.add(op)
            out.append(r)
    return out


@pytest.mark.parametrize("row", elementwise_rows(), ids=lambda r: r.name)
def test_every_registered_elementwise_op_compiles_in_a_fused_group(row):
    """No interpreter path: the op inside a fused group is a ufunc template or a call of its
    kernel; the plan report names the latter."""
    leaves = [gc.placeholder(a.shape, dtype=a.dtype, name=f"in{i}")
              for i, a in enumerate(row.inputs)]
    out = row.build(*leaves)
    y = gc.logical_not(out) if out.dtype == bool else out * out.dtype.type(1) + out
    f = gc.function(leaves, [y])
    got = f(*row.inputs)[0]
    np.testing.assert_allclose(got, y.eval(dict(zip(leaves, row.inputs))), rtol=1e-12)
    report = f.plan_report()
    assert "interpreter" not in report, report
    if emit.template(row.name) is None:
        assert f"calls the kernel of {row.name}" in report or "kernel:" in report, report


def test_every_registered_elementwise_op_has_a_template_or_a_kernel_call():
    missing = [op for op, d in OPS.items() if d.elementwise and emit.template(op) is None
               and d.random]
    assert not missing, f"elementwise ops that fall back to the interpreter: {missing}"


@pytest.mark.parametrize("op", ["log1p", "expm1", "square"])
def test_new_ufunc_ops_compile_to_one_ufunc_call_in_a_fused_group(op):
    x = gc.placeholder((None, 5), "float64", "x")
    y = apply(op, x * 0.5) + 1.0
    f = gc.function([x], y)
    v = np.linspace(-0.9, 3, 10).reshape(2, 5)
    np.testing.assert_allclose(f(v), y.eval({x: v}), rtol=1e-12)
    assert f"xp.{OPS[op].kernel.__name__}(" in f.source
    assert f.plan_report().count("kernel") == 0


@pytest.mark.parametrize("build, stable, x", [
    (lambda x: gc.log(1.0 + x), "log1p", np.array([1e-12, -1e-15, 0.5, 3.0])),
    (lambda x: gc.log(x + 1.0), "log1p", np.array([1e-12, -1e-15, 0.5, 3.0])),
    (lambda x: gc.exp(x) - 1.0, "expm1", np.array([1e-12, -1e-15, 0.5, -3.0])),
])
def test_stabilization_uses_log1p_and_expm1_and_keeps_values_and_gradients(build, stable, x):
    p = gc.placeholder((4,), "float64", "p")
    y = build(p)
    g, _ = gc.optimize(y, report=True)
    assert stable in [n.op for n in g.nodes]
    exact = np.log1p(x) if stable == "log1p" else np.expm1(x)
    got = gc.function([p], y)(x)
    np.testing.assert_allclose(got, exact, rtol=1e-14)            # small x: all digits
    naive = gc.function([p], y, optimize=False)(x)
    np.testing.assert_allclose(got[2:], naive[2:], rtol=1e-14)
    gp = gc.grad(gc.sum(y), [p])[0]
    np.testing.assert_allclose(gc.function([p], gp)(x), gp.eval({p: x}), rtol=1e-12)


def test_log_of_one_plus_exp_stays_softplus():
    z = gc.placeholder((3,), "float64", "z")
    g, _ = gc.optimize(gc.log(1.0 + gc.exp(z)), report=True)
    assert [n.op for n in g.nodes if n.inputs] == ["softplus"]


def test_the_plan_report_names_each_kernel_step_and_why():
    a = gc.placeholder((None, 4), "float32", "a")
    b = gc.placeholder((None, 4), "float64", "b")
    y = gc.exp(b) * gc.cast(a < b, "float64")     # float32 < float64: the ufunc (probe21)
    f = gc.function([a, b], [y, gc.concat([b, b], axis=1)])
    f(np.ones((2, 4), np.float32), np.ones((2, 4)))
    report = f.plan_report()
    assert "interpreter" not in report
    assert "concat" in report and "no fast lowering" in report
    g = gc.function([b], gc.exp(b) * 2.0)
    assert "kernel" not in g.plan_report()


def test_a_fused_group_of_mixed_float_widths_compiles_and_exports(tmp_path):
    """float32 inputs of float64 ops (a float32 model meeting a NumPy 2 float64 scalar, a
    float64 mean with float32 noise) compile: NumPy widens them exactly, as the kernel does."""
    mu = gc.placeholder((None, 2), "float64", "mu")
    e = gc.placeholder((None, 2), "float32", "e")
    k = gc.placeholder((None, 2), "int32", "k")
    y = (mu + gc.exp(0.5 * mu) * e) ** 2 - k * e
    f = gc.function([mu, e, k], [y, gc.sum(y)])
    assert "kernel" not in f.plan_report()
    rng = np.random.default_rng(0)
    calls = []
    for n in (3, 1, 3):
        calls.append([rng.normal(size=(n, 2)), rng.normal(size=(n, 2)).astype(np.float32),
                      rng.integers(-3, 3, size=(n, 2)).astype(np.int32)])
        want = y.eval(dict(zip((mu, e, k), calls[-1])))
        got, total = f(*calls[-1])
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, want)
        assert total == pytest.approx(want.sum(), rel=1e-14)
    check_export(f, [], calls, tmp_path, rtol=1e-14)


def chain_of_blocks(blocks: int):
    """h = tanh(h * w_i) + 0.5 * h per block, each with its own variable (no two blocks are
    one node), and the SGD updates of the mean square of h."""
    x = gc.placeholder((None, 3), "float64", name="x")
    h, params = x, []
    for i in range(blocks):
        w = gc.variable(np.linspace(0.2, 0.9, 3) + 0.01 * i, name=f"w{i}")
        params.append(w)
        h = gc.tanh(h * w) + 0.5 * h
    loss = gc.mean(h * h)
    return x, loss, params, gc.grad(loss, params)


def test_repeated_fused_steps_call_one_shared_function_and_keep_their_values():
    """Fused steps whose code is the same up to the names they read and write, at least
    emit.SHARED_MIN times, call one local function: the loss and every update equal the
    interpreter's, and steps repeated fewer times keep their code inline."""
    x, loss, params, grads = chain_of_blocks(emit.SHARED_MIN + 4)
    xs = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    want = [n.eval({x: xs}) for n in [loss] + list(grads)]
    before = [p.value.copy() for p in params]
    f = gc.function([x], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    got = f(xs)
    assert "    def shared0(" in f.source and "    shared0(" in f.source
    np.testing.assert_allclose(got, want[0], rtol=1e-12)
    for p, w0, g in zip(params, before, want[1:]):
        np.testing.assert_allclose(p.value, w0 - 0.1 * g, rtol=1e-12, atol=1e-15)
    x, loss, params, grads = chain_of_blocks(3)
    f = gc.function([x], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    f(xs)
    assert "shared" not in f.source


def test_a_step_failing_inside_shared_code_is_named():
    """An integer power with a negative exponent raises inside the shared function: the
    error names the step that called it, as for inline code."""
    k = gc.placeholder((3,), "int64", name="k")
    e = gc.placeholder((), "int64", name="e")
    ys = [(k * gc.variable(np.full(3, i + 1, np.int64), name=f"m{i}")) ** e + k
          for i in range(emit.SHARED_MIN + 2)]
    f = gc.function([k, e], ys)
    ks = np.array([1, 2, 3])
    assert [y.tolist() for y in f(ks, np.array(1))] == [
        (ks * (i + 1) + ks).tolist() for i in range(emit.SHARED_MIN + 2)]
    assert "    shared0(" in f.source
    with pytest.raises(gc.GraphcError, match=r"step \d+ failed at run time: ValueError"):
        f(ks, np.array(-1))


def test_an_exported_plan_with_shared_code_runs_as_the_function(tmp_path):
    """The shared functions are part of the plan's source: the exported module (no graphc)
    gives the same loss and variables."""
    from tests.test_export import check_export
    x, loss, params, grads = chain_of_blocks(emit.SHARED_MIN + 1)
    f = gc.function([x], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    rng = np.random.default_rng(1)
    data = [[rng.uniform(-1, 1, (4, 3))] for _ in range(3)]
    check_export(f, data[:1], data[1:], tmp_path, params, rtol=1e-12)
    assert "    shared0(" in f.source
