"""User-defined ops (gc.OpDef + gc.register_op): build, differentiate, compile, save and load
in a fresh process once the module registering the op is imported."""
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy as sp

import graphc as gc
from graphc.ir import OPS

MODULE = '''
"""A user's op: softsign(x) = x / (1 + |x|)."""
import numpy as np
import sympy as sp
import graphc as gc


def infer(x, *, scale=1.0):
    if x.dtype.kind != "f":
        raise gc.ShapeError(f"needs floats, got {x.dtype.name}")
    return x.shape, x.dtype, {"scale": float(scale)}


def kernel(x, *, scale):
    return scale * x / (1 + np.abs(x))


def vjp(g, out, x, *, scale):
    return (g * scale / (1 + gc.abs(x)) ** 2,)


gc.register_op(gc.OpDef("softsign_ext", infer, kernel, vjp,
                        sym=lambda x, *, scale: scale * x / (1 + sp.Abs(x)), elementwise=True))


def softsign(x, scale=1.0):
    return gc.apply("softsign_ext", x, scale=scale)
'''


def run(code: str, cwd) -> subprocess.CompletedProcess:
    import os
    env = dict(os.environ, PYTHONPATH=f"{cwd}{os.pathsep}{os.getcwd()}")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_saved_graph_with_a_user_op_loads_once_its_module_is_imported(tmp_path):
    (tmp_path / "myops.py").write_text(MODULE)
    saved = run('''
        import numpy as np, graphc as gc, myops
        x = gc.placeholder((None, 3), dtype="float64", name="x")
        gc.save(gc.sum(myops.softsign(x, scale=2.0)), "g")
        ''', tmp_path)
    assert saved.returncode == 0, saved.stderr
    missing = run('import graphc as gc; gc.load("g")', tmp_path)
    assert "unknown op 'softsign_ext'" in missing.stderr
    assert "import the module that registers it with gc.register_op" in missing.stderr
    loaded = run('''
        import numpy as np, graphc as gc, myops
        out = gc.load("g")
        x = [n for n in gc.Graph([out]).placeholders][0]
        v = np.array([[1.0, -3.0, 0.5]])
        print(out.eval({x: v}), gc.function([x], out)(v), (2 * v / (1 + abs(v))).sum())
        ''', tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    a, b, want = map(float, loaded.stdout.split())
    assert a == pytest.approx(want) and b == pytest.approx(want)


def test_a_user_op_differentiates_compiles_and_has_a_formula():
    namespace: dict = {}
    exec(MODULE, namespace)
    try:
        x = gc.placeholder((4,), dtype="float64", name="x")
        cost = gc.sum(namespace["softsign"](x) ** 2)
        xv = np.array([0.3, -1.2, 2.0, 0.0])
        assert gc.check_grad(cost, x, {x: xv}).ok
        np.testing.assert_allclose(gc.function([x], cost)(xv), cost.eval({x: xv}))
        s = gc.placeholder((), dtype="float64", name="s")
        sym = sp.Symbol("s", real=True)
        assert sp.simplify(gc.formula(namespace["softsign"](s)) - sym / (1 + sp.Abs(sym))) == 0
    finally:
        del OPS["softsign_ext"]


def test_register_op_refuses_bad_declarations():
    with pytest.raises(gc.GraphcError, match="already registered"):
        gc.register_op(gc.OpDef("add", lambda x: (x.shape, x.dtype), np.negative))
    with pytest.raises(gc.GraphcError, match="needs a gc.OpDef"):
        gc.register_op("neg")
    with pytest.raises(gc.GraphcError, match="identifier"):
        gc.register_op(gc.OpDef("my op", lambda x: (x.shape, x.dtype), np.negative))


@pytest.mark.parametrize("name, kernel, got", [
    ("firstrow_bug", lambda x: x[:1] * 2, "(1, 4) float64"),
    ("widened_bug", lambda x: x.astype(np.float32), "(3, 4) float32")])
def test_a_user_kernel_that_breaks_its_rule_is_refused_by_eval_and_compiled_alike(name, kernel,
                                                                                   got):
    """A kernel returning x[:1] where its rule gives x's (None, 4): the compiled plan took
    the rule's (3, 4) for it and broadcast the row into the next step (eval refused the add;
    returned as an output, both returned it); a kernel's wrong dtype flowed on compiled."""
    gc.register_op(gc.OpDef(name, lambda x: (x.shape, x.dtype, {}), kernel))
    try:
        x = gc.placeholder((None, 4), "float64", name="x")
        xv = np.arange(12.).reshape(3, 4)
        for out in (gc.apply(name, x), gc.apply(name, x) + x):
            want = f"the kernel of {name} returned {got}, but its shape rule gives (3, 4) " \
                "float64"
            with pytest.raises(gc.GraphcError, match=re.escape(want)):
                out.eval({x: xv})
            f = gc.function([x], out)
            with pytest.raises(gc.GraphcError, match=re.escape(want)):
                f(xv)
    finally:
        del OPS[name]
