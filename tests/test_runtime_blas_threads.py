"""blas.threads(): the thread count of NumPy's BLAS, which the convolution lowering reads
(winograd.pays). Checked against what OPENBLAS_NUM_THREADS sets in a fresh process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from graphc.runtime import blas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("n", [1, 2])
def test_threads_is_what_the_environment_set(n):
    if blas.GET_THREADS is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS with get_num_threads")
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(n))
    out = subprocess.run([sys.executable, "-c",
                          "from graphc.runtime import blas; print(blas.threads())"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) == min(n, os.cpu_count())    # OpenBLAS caps it at the cores


def test_threads_without_a_lookup_is_one(monkeypatch):
    """Unknown (another BLAS): 1, so the choices stay those measured at one thread; a count
    below 1 is read as 1."""
    monkeypatch.setattr(blas, "GET_THREADS", None)
    assert blas.threads() == 1
    monkeypatch.setattr(blas, "GET_THREADS", lambda: 0)
    assert blas.threads() == 1
    monkeypatch.setattr(blas, "GET_THREADS", lambda: 2)
    assert blas.threads() == 2
