"""Shared test helpers: finite-difference gradient checks and op-table rows."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import graphc as gc
from graphc.ir import Node, evaluate, toposort


@dataclass
class Row:
    """One op-table row: build(*leaves) -> node; `ref(*arrays)` is the NumPy reference."""
    name: str
    build: Callable
    inputs: list                       # arrays; float ones are fed through placeholders
    ref: Callable | None = None
    attrs: dict = field(default_factory=dict)
    grad: bool = True                  # check the VJP against finite differences
    ops: tuple = ()                    # registered ops this row exercises (default: name)


def leaves_for(arrays):
    return [gc.placeholder(a.shape, dtype=a.dtype, name=f"in{i}") for i, a in enumerate(arrays)]


def check_row(row: Row):
    """The kernel matches the reference and the shape/dtype rule matches the kernel's result."""
    leaves = leaves_for(row.inputs)
    out = row.build(*leaves)
    val = out.eval(dict(zip(leaves, row.inputs)))
    assert val.shape == out.shape, f"{row.name}: shape rule {out.shape} vs kernel {val.shape}"
    assert val.dtype == out.dtype, f"{row.name}: dtype rule {out.dtype} vs kernel {val.dtype}"
    if row.ref is not None:
        tol = (1e-9, 1e-12) if val.dtype == np.float64 else (1e-5, 1e-6)
        np.testing.assert_allclose(val, row.ref(*row.inputs), rtol=tol[0], atol=tol[1])
    return out


def numeric_grad(f, x, eps=1e-6):
    """Central finite differences of scalar f at array x (float64), x changed in place (it
    may be a view of a variable's storage that f reads)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f(x)
        x[i] = old - eps
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def load_module(path, name):
    """The Python file at path (an exported plan) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def leaf_grad(cost, leaf, feeds: dict, eps=1e-6):
    """Central differences of scalar `cost` with respect to a placeholder (perturbed in the
    feeds) or a variable (perturbed in place, then restored)."""
    if leaf.op != "variable":
        return numeric_grad(lambda v: float(cost.eval({**feeds, leaf: v})),
                            np.array(feeds[leaf], dtype=np.float64), eps)

    def f(v):
        old = leaf.value.copy()
        leaf.value = v
        try:
            return float(cost.eval(feeds))
        finally:
            leaf.value = old
    return numeric_grad(f, leaf.value.copy(), eps)


def verify_grad(build, inputs, rtol=1e-4, atol=1e-6, seed=0):
    """Check grad of sum(build(*leaves) * r) against finite differences, for each float input.

    The random weights r make every output element matter; inputs are float64 arrays.
    """
    leaves = leaves_for(inputs)
    out = build(*leaves)
    r = np.random.default_rng(seed).standard_normal(out.shape if None not in out.shape
                                                    else out.eval(dict(zip(leaves, inputs))).shape)
    cost = gc.sum(out * gc.constant(r.astype(out.dtype)))
    floats = [i for i, a in enumerate(inputs) if a.dtype.kind == "f"]
    grads = gc.grad(cost, [leaves[i] for i in floats])
    feeds = dict(zip(leaves, inputs))
    for i, g in zip(floats, grads):
        assert g.shape == leaves[i].shape
        got = g.eval(feeds)
        x = inputs[i].copy()

        def f(xi, i=i):
            return float(cost.eval({**feeds, leaves[i]: xi}))
        want = numeric_grad(f, x)
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol,
                                   err_msg=f"gradient of input {i}")
    return grads


def ops_in(node: Node) -> set[str]:
    return {n.op for n in toposort([node])}


def eval_trajectory(x, loss, updates, batches) -> list:
    """(loss, variables' values after the step) per batch, stepped by eval from the variables'
    values now, which are then put back: what a compiled step must reproduce."""
    params = [v for v, _ in updates]
    start = [v.value.copy() for v in params]
    want = []
    for a in batches:
        vals = evaluate([loss] + [u for _, u in updates], {x: a})
        for v, val in zip(params, vals[1:]):
            v.value = val
        want.append((vals[0], [v.value.copy() for v in params]))
    for v, s0 in zip(params, start):
        v.value = s0
    return want
