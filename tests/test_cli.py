"""The `graphc` command, run as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import graphc as gc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def graphc(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "graphc.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [(), ("demo",), ("render",), ("formula",)])
def test_help_everywhere(command):
    result = graphc(*command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: graphc {' '.join(command)}".rstrip())


def test_no_command_prints_help():
    result = graphc()
    assert result.returncode == 0 and "demo" in result.stdout and "render" in result.stdout


def test_demo_trains_and_writes_pictures_and_formulas(tmp_path):
    pytest.importorskip("sklearn")
    result = graphc("demo", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(s for s in result.stdout.splitlines() if s.startswith("test accuracy"))
    assert float(line.split()[2].rstrip("%")) >= 95.0
    files = set(os.listdir(tmp_path))
    assert {"mlp_forward.svg", "mlp_backward.svg", "mlp_gradients.txt", "mlp_graph.json",
            "mlp_graph.npz"} <= files
    assert "dense_2/W" in (tmp_path / "mlp_gradients.txt").read_text()
    assert "<svg" in (tmp_path / "mlp_backward.svg").read_text()

    rendered = graphc("render", "mlp_graph.json", "-o", "again.svg", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert "<svg" in (tmp_path / "again.svg").read_text()


def test_render_and_formula_of_a_saved_graph(tmp_path):
    x = gc.placeholder((3,), "float64", name="x")
    w = gc.variable(np.array([1.0, 2.0, 3.0]), name="w")
    loss = gc.sum(gc.tanh(x * w))
    (gw,) = gc.grad(loss, [w])
    gc.save([loss, gw], tmp_path / "g")
    result = graphc("render", "g.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote g.svg"
    assert "<svg" in (tmp_path / "g.svg").read_text()

    result = graphc("formula", str(tmp_path / "g.json"))
    assert result.returncode == 0, result.stderr
    assert "tanh" in result.stdout and "w" in result.stdout and "x" in result.stdout


def test_render_can_fold_name_scopes(tmp_path):
    x = gc.placeholder((3,), "float64", name="x")
    h = x
    for i in range(4):
        with gc.name_scope(f"block{i}"):
            h = gc.tanh(h * gc.variable(np.ones(3), name="w")) + h
    gc.save(gc.sum(h), tmp_path / "g")
    for flags, out in (((), "full.svg"), (("--collapse",), "folded.svg")):
        result = graphc("render", "g.json", "-o", out, *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    full, folded = ((tmp_path / n).read_text() for n in ("full.svg", "folded.svg"))
    assert "block3" in folded and folded.count("<g id=\"node") < full.count("<g id=\"node") / 2


def test_errors_are_one_clear_line(tmp_path):
    result = graphc("formula", "missing.json", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("graphc formula: error: ") and "missing.json" in result.stderr
    assert "Traceback" not in result.stderr
    for epochs in ("x", "0", "-1"):
        result = graphc("demo", "--epochs", epochs)
        assert result.returncode == 2
        assert f"--epochs: expected a whole number >= 1, got '{epochs}'" in result.stderr
