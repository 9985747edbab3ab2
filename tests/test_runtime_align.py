"""Planned buffers and plan constants start on a cache line (runtime/layout.py `aligned`):
the arrays are what np.empty would give in every other respect, every buffer of compiled
steps (C order and channels-last) is aligned, and compiled values still equal eval's over
several calls and batch sizes."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.runtime import layout

RNG = np.random.default_rng(17)
SHAPES = [(), (0,), (0, 3), (1,), (3,), (5, 7), (512, 128), (2, 3, 4, 5)]
DTYPES = ["float32", "float64", "float16", "int8", "int64", "bool", "complex128",
          [("a", "f4"), ("b", "i2")]]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_aligned_is_an_empty_array_on_a_cache_line(shape, dtype):
    made = []
    for _ in range(3):          # three allocations: the heap's 16-byte offsets vary
        a = layout.aligned(shape, dtype)
        made.append(a)
        assert a.ctypes.data % layout.ALIGN == 0 or a.size == 0     # no memory to align
        assert a.shape == shape and a.dtype == np.dtype(dtype)
        assert a.flags.c_contiguous and a.flags.writeable and a.flags.aligned
        a[...] = np.ones(shape, dtype) if a.dtype.names is None else 0
    assert not any(np.shares_memory(a, b) for k, a in enumerate(made) for b in made[:k])


def test_aligned_object_arrays_fall_back_to_numpy():
    a = layout.aligned((2, 3), object)
    assert a.dtype == object and a.shape == (2, 3)


def test_channels_last_buffers_are_aligned_nchw_views():
    a = layout.empty((2, 3, 4, 5), np.float32, layout.LAST)
    assert a.shape == (2, 3, 4, 5) and a.ctypes.data % layout.ALIGN == 0
    assert a.transpose(0, 2, 3, 1).flags.c_contiguous


def buffers(f) -> dict:
    """The plan's buffers (b0, b1, ...) and its relu zeros (k's of a buffer's shape)."""
    ns = f.last_plan.ns
    return {k: v for k, v in ns.items() if isinstance(v, np.ndarray)
            and k[0] == "b" and k[1:].isdigit()}


def mlp(seed: int, dtype: str):
    r = np.random.default_rng(seed)
    sizes = [int(r.integers(3, 40)) for _ in range(int(r.integers(2, 5)))]
    x = gc.placeholder((None, sizes[0]), dtype, name="x")
    h, params = x, []
    for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = gc.variable((r.standard_normal((a, b)) / np.sqrt(a)).astype(dtype), name=f"W{k}")
        c = gc.variable(r.standard_normal(b).astype(dtype), name=f"c{k}")
        params += [w, c]
        h = h @ w + c
        if k < len(sizes) - 2:
            h = gc.relu(h) if r.random() < 0.5 else gc.tanh(h)
    loss = gc.mean(h * h)
    return x, sizes[0], params, loss, h


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_random_mlps_buffers_aligned_and_values_as_eval(seed, dtype):
    x, width, params, loss, h = mlp(seed, dtype)
    grads = gc.grad(loss, params)
    f = gc.function([x], [loss, h] + grads)
    tol = 2e-4 if dtype == "float32" else 1e-10
    for batch in (5, 3, 5, 64):           # two plans, one called again, a bigger one
        xv = RNG.standard_normal((batch, width)).astype(dtype)
        want = [o.eval({x: xv}) for o in [loss, h] + grads]
        for got, w in zip(f(xv), want):
            np.testing.assert_allclose(got, w, rtol=tol, atol=tol)
        bufs = buffers(f)
        assert bufs
        assert all(v.ctypes.data % layout.ALIGN == 0 for v in bufs.values()), \
            {k: v.ctypes.data % layout.ALIGN for k, v in bufs.items()}


def test_training_step_with_aligned_buffers_updates_as_numpy():
    """SGD steps of a relu MLP: the variables after three calls at two batch sizes equal the
    same steps in float64 NumPy."""
    r = np.random.default_rng(3)
    w0 = (r.standard_normal((6, 8)) / 3).astype(np.float32)
    c0 = r.standard_normal(8).astype(np.float32)
    x = gc.placeholder((None, 6), "float32", name="x")
    w, c = gc.variable(w0.copy(), name="W"), gc.variable(c0.copy(), name="c")
    loss = gc.mean(gc.relu(x @ w + c) ** 2)
    gw, gcb = gc.grad(loss, [w, c])
    f = gc.function([x], loss, updates=[(w, w - 0.1 * gw), (c, c - 0.1 * gcb)])
    W, C = w0.astype(np.float64), c0.astype(np.float64)
    for batch in (4, 7, 4):
        xv = r.standard_normal((batch, 6)).astype(np.float32)
        z = xv.astype(np.float64) @ W + C
        a = np.maximum(z, 0)
        want = np.mean(a ** 2)
        dz = 2 * a * (z > 0) / a.size
        W, C = W - 0.1 * xv.T @ dz, C - 0.1 * dz.sum(0)
        np.testing.assert_allclose(f(xv), want, rtol=1e-5)
        np.testing.assert_allclose(w.value, W, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(c.value, C, rtol=1e-5, atol=1e-6)
        assert all(v.ctypes.data % layout.ALIGN == 0 for v in buffers(f).values())
