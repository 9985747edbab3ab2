"""Differential fuzzing (issue 10): random graphs run by the reference interpreter (`evaluate`,
what `node.eval` runs), by the compiled runtime as built and by the optimized runtime, each
with and without check_numerics, must agree on values and on the gradients of a random scalar
cost, over several calls of one Function at two batch sizes.

The generator reads the op table: it composes the rows of tests/test_ops.py (one or more per
registered op, each with a `build` and example inputs), so an op joins when its row does. A
row's inputs come from the graph built so far through adapters (transpose, reshape, slice,
concat, reductions, broadcasting, casts, squashing into the example's value range) or from
fresh leaves whose values follow the row's own example inputs (positive values, labels in
range). CI runs a seeded, bounded number of graphs; GRAPHC_FUZZ_EXAMPLES=N runs a campaign of
N random (not seeded) graphs.
"""
from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.ir import OPS, Graph, GraphcError, Node, evaluate, toposort
from tests.helpers import Row
from tests.test_ops import ROWS as TABLE

_r = np.random.default_rng(10)


def _u(*shape, lo=-2.0, hi=2.0):
    return _r.uniform(lo, hi, size=shape)


def _by_hand_softmax(z, shifted):
    e = gc.exp(z - gc.max(z, axis=1, keepdims=True) if shifted else z)
    return e / gc.sum(e, axis=1, keepdims=True)


# compositions the optimizer's rules look for (the op rows alone rarely line them up)
MOTIFS = [
    Row("log(softmax)", lambda z: gc.log(gc.softmax(z, axis=0)), [_u(3, 4)]),
    Row("softmax by hand", lambda z: gc.log(_by_hand_softmax(z, True)), [_u(3, 4) * 5]),
    Row("softmax by hand", lambda z: _by_hand_softmax(z, False), [_u(3, 4)]),
    Row("softplus by hand", lambda z: gc.log(1 + gc.exp(z)), [_u(3, 4) * 5]),
    Row("log sigmoid", lambda z: gc.log(gc.sigmoid(z)) - gc.log(1 - gc.sigmoid(z)),
        [_u(3, 4) * 5]),
    Row("one-hot CE", lambda z, y: -gc.sum(gc.one_hot(y, 4) * gc.log_softmax(z), axis=-1),
        [_u(5, 4), np.array([0, 3, -1, 4, 2])]),
    Row("one-hot CE", lambda z, y: -gc.sum(gc.log(gc.softmax(z)) * gc.one_hot(y, 4), axis=1),
        [_u(5, 4), np.array([0, 3, 1, 3, 2])]),
    Row("prob CE", lambda z, p: -gc.sum(p * gc.log_softmax(z), axis=-1),
        [_u(3, 4), _u(3, 4, lo=0.0, hi=1.0)]),
    Row("mean CE", lambda z, y: gc.mean(gc.softmax_cross_entropy(z, y)),
        [_u(5, 3), np.array([0, 2, 1, 1, 0])]),
    Row("bce by hand", lambda z, y: -(y * gc.log(gc.sigmoid(z))
                                      + (1 - y) * gc.log(1 - gc.sigmoid(z))),
        [_u(3, 4) * 3, _u(3, 4, lo=0.0, hi=1.0)]),
    Row("bce", lambda z, y: gc.binary_cross_entropy(gc.sigmoid(z), y),
        [_u(3, 4) * 3, _u(3, 4, lo=0.0, hi=1.0)]),
    Row("dense relu", lambda x, w, b: gc.relu(x @ w + b), [_u(3, 4), _u(4, 5), _u(5)]),
    Row("dense sigmoid", lambda x, w: gc.sigmoid(gc.transpose(x) @ w), [_u(4, 3), _u(4, 2)]),
    Row("dense tanh", lambda x, w, b: gc.tanh(b + x @ gc.transpose(w)),
        [_u(3, 4), _u(2, 4), _u(1, 2)]),
    Row("cnn block", lambda x, w, b: gc.max_pool2d(gc.relu(gc.conv2d(x, w, padding=1) + b), 2),
        [_u(2, 3, 5, 6), _u(4, 3, 3, 3), _u(1, 4, 1, 1)]),
    Row("pool bias", lambda x, b: gc.max_pool2d(x + b, (2, 3), stride=1),
        [_u(2, 2, 4, 5), _u(2, 1, 1)]),
    Row("avg pool relu", lambda x: gc.avg_pool2d(gc.relu(x), 2) * gc.max_pool2d(x, 2),
        [_u(1, 2, 4, 4)]),
    Row("identities", lambda x, y: ((x * 1 + 0) - 0) / 1 + 0 * y + (y - y) - (0 - x),
        [_u(3, 4), _u(4)]),
    Row("negations", lambda a, b: -(a - b) + (-a) * (-b) + a + (-b) - (-b) + -(-a),
        [_u(3, 4), _u(3, 1)]),
    Row("exp log", lambda x: gc.exp(gc.log(gc.exp(x))) + gc.log(gc.exp(x)), [_u(2, 3)]),
    Row("moves", lambda x: gc.reshape(gc.reshape(gc.transpose(gc.transpose(x, (1, 2, 0)),
                                                              (2, 0, 1)), (6, 4)), (2, 12)),
        [_u(2, 3, 4)]),
    Row("broadcasts", lambda s: gc.sum(gc.broadcast_to(gc.broadcast_to(
        gc.reshape(s, (1, 1)), (1, 4)), (3, 4)), axis=0) + gc.sum(gc.reshape(s, (1, 1)), axis=1),
        [_u()]),
    Row("wheres", lambda c, g: gc.where(c > 0, gc.where(c > 0, g, 0.0), 0.0)
        + gc.where(gc.relu(c) > 0, g, g) + gc.where(gc.constant(True), g, c), [_u(3, 4), _u(4)]),
    Row("int chain", lambda k, x: (k * 3 - 1) * x + gc.abs(k) + gc.maximum(k, 1),
        [np.array([[1, -2, 3], [0, 5, -1]]), _u(2, 3)]),
    Row("bool chain", lambda a, b: gc.mean(gc.logical_not(a > b), axis=1) * a[:, 0],
        [_u(3, 4), _u(4)]),
    Row("casts", lambda x: gc.cast(gc.cast(gc.cast(x, "float32"), "float64"), "float64") * x,
        [_u(3, 4)]),
]
ROWS = [row for _, row in TABLE] + MOTIFS
CAMPAIGN = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "0"))
MODES = [(False, False), (True, False), (False, True), (True, True)]  # optimize, check_numerics
TOL = {np.dtype("float64"): 1e-6, np.dtype("float32"): 2e-3, np.dtype("float16"): 2e-2}
STATS = {"graphs": 0, "calls": 0}       # what a campaign ran (printed with -s)


def fuzz_settings(examples: int):
    """Seeded and bounded in CI; a campaign (GRAPHC_FUZZ_EXAMPLES=N) draws N fresh graphs."""
    return settings(max_examples=CAMPAIGN or examples, deadline=None, derandomize=not CAMPAIGN,
                    database=None, suppress_health_check=list(HealthCheck))


# example inputs -> value domains ------------------------------------------------------

def sample(example: np.ndarray, shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Random values like the row's example: its range (positive, labels in range), its kind."""
    if example.dtype == bool or np.dtype(dtype) == bool:
        return rng.random(shape) < 0.5
    finite = example[np.isfinite(example)] if example.dtype.kind == "f" else example
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(math.floor(lo), math.ceil(hi) + 1, size=shape).astype(dtype)
    hi = hi if hi > lo else lo + 1.0
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def batched_shape(a: np.ndarray) -> tuple:
    return (None,) + a.shape[1:]


def resized(a: np.ndarray, batch: int) -> np.ndarray:
    return np.take(a, np.arange(batch) % a.shape[0], axis=0)


@functools.cache
def batch_plan(k: int) -> frozenset | None:
    """Which inputs of row k may take a batch dim None (the output then has batch dim None
    and the batch's size at run time), found by trying; None when the row needs its sizes."""
    row = ROWS[k]
    try:
        out0 = row.build(*[gc.constant(a) for a in row.inputs]).shape[:1]
    except GraphcError:
        return None
    same = frozenset(i for i, a in enumerate(row.inputs) if a.ndim and a.shape[:1] == out0)
    for plan in dict.fromkeys([same, frozenset({0})]):
        if not plan or not row.inputs or not row.inputs[0].ndim:
            continue
        leaves = [gc.placeholder(batched_shape(a) if i in plan else a.shape, a.dtype)
                  for i, a in enumerate(row.inputs)]
        try:
            out = row.build(*leaves)
            if out.shape[:1] != (None,) or None in out.shape[1:]:
                continue
            for batch in (1, 4):
                vals = [resized(a, batch) if i in plan else a for i, a in enumerate(row.inputs)]
                if out.eval(dict(zip(leaves, vals))).shape[0] != batch:
                    break
            else:
                return plan
        except GraphcError:
            continue
    return None


# the generator ------------------------------------------------------------------------

def is_batched(n: Node) -> bool:
    return n.ndim > 0 and n.shape[0] is None and None not in n.shape[1:]


class Builder:
    """One random graph under construction. Every decision goes through `choice`, `flip` and
    `pick`: hypothesis's draws in the fuzz tests (False/0 shrink to fresh leaves and plain
    rows), or the simplest choice everywhere (`draw=None`, the reachability test)."""

    def __init__(self, draw=None, seed: int = 0):
        self.draw = draw
        self.rng = np.random.default_rng(seed)
        self.results: list[Node] = []            # row outputs, readable by later rows
        self.examples: dict[Node, np.ndarray] = {}   # placeholder -> the example it follows
        self.leaves: list[Node] = []

    def choice(self, n: int, label: str) -> int:
        return self.draw(st.integers(0, n - 1), label=label) if self.draw and n > 1 else 0

    def flip(self, label: str) -> bool:
        return bool(self.draw and self.draw(st.booleans(), label=label))

    def likely(self, label: str) -> bool:
        """True three times in four (shrinks to False)."""
        return self.choice(4, label) > 0

    def pick(self, seq, label: str):
        return seq[self.choice(len(seq), label)]

    # leaves ---------------------------------------------------------------------------
    def fresh(self, a: np.ndarray, shape, plain: bool = False) -> Node:
        """A new leaf like example `a`: a placeholder (fed per call), a variable or a constant;
        floats as float64 or float32, now and then as integers or bools (mixed dtypes);
        `plain`: a placeholder of a's own dtype."""
        dtype = a.dtype
        if dtype.kind == "f" and not plain:
            dtype = np.dtype(self.pick(["float64", "float32"], "float dtype"))
            if self.choice(6, "exotic") == 5:
                dtype = np.dtype(self.pick(["int64", "int32", "bool"], "exotic dtype"))
        kind = "placeholder"
        if None not in shape and dtype.kind == "f" and not plain:
            kind = self.pick(["placeholder", "variable", "constant"], "leaf")
        if kind == "placeholder":
            node = gc.placeholder(shape, dtype, name=f"x{len(self.examples)}")
            self.examples[node] = a
        else:
            value = sample(a, shape, dtype, self.rng)
            node = gc.variable(value) if kind == "variable" else gc.constant(value)
        self.leaves.append(node)
        return node

    # adapters: a node of the graph so far -> the shape, dtype and values a row wants -------
    def fit_axis(self, x: Node, axis: int, m: int) -> Node:
        n = x.shape[axis]
        if n < m:
            x = gc.concat([x] * math.ceil(m / n), axis=axis)
            n *= math.ceil(m / n)
        if n > m:
            start = self.choice(n - m + 1, "slice start")
            x = x[start:start + m] if axis == 0 and self.flip("index") else \
                gc.slice(x, axis, start, start + m)
        return x

    def fit(self, v: Node, shape: tuple) -> Node:
        """A static node v as `shape`: as is, broadcast, or transposed, flattened, cut or
        repeated to size, reshaped."""
        if v.shape == shape and not self.flip("move"):
            return v
        try:
            if len(shape) >= v.ndim and np.broadcast_shapes(v.shape, shape) == shape \
                    and not self.flip("no broadcast"):
                return gc.broadcast_to(v, shape)
        except ValueError:
            pass
        if v.ndim >= 2 and self.flip("transpose"):
            v = gc.transpose(v, self.draw(st.permutations(range(v.ndim)), label="axes"))
        flat = v if v.ndim == 1 else gc.reshape(v, (-1,))
        flat = self.fit_axis(flat, 0, math.prod(shape))
        return flat if flat.shape == shape else gc.reshape(flat, shape)

    def adapt(self, v: Node, shape: tuple) -> Node:
        if shape[:1] == (None,):                     # batched: keep the batch, fit the rest
            rest = shape[1:]
            if v.shape == shape and not self.flip("move"):
                return v
            two = v if v.ndim == 2 else gc.reshape(v, (-1, math.prod(v.shape[1:])))
            two = self.fit_axis(two, 1, math.prod(rest))
            return two if two.shape == shape else gc.reshape(two, (-1,) + rest)
        unknown = tuple(i for i, d in enumerate(v.shape) if not isinstance(d, int))
        if unknown:                                  # reduce the batch away
            reduce = "max" if v.dtype == bool else self.pick(["sum", "mean", "max"], "reduce")
            v = getattr(gc, reduce)(v, axis=unknown, keepdims=self.flip("keepdims"))
        return self.fit(v, shape)

    def squash(self, v: Node, a: np.ndarray) -> Node:
        """Float values into the example's range when it is one-signed (log, sqrt, labels as
        probabilities); otherwise as they are or through tanh; sometimes the other float."""
        if self.flip("cast"):
            v = gc.cast(v, "float32" if v.dtype == np.float64 else "float64")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0:
            return lo + (hi - lo) * gc.sigmoid(v)
        if self.flip("tanh"):
            return gc.tanh(v) * max(-lo, hi)
        return v

    def input_for(self, a: np.ndarray, batched: bool) -> Node:
        shape = batched_shape(a) if batched else a.shape
        if a.dtype.kind in "fb":
            pool = [n for n in self.results if n.dtype.kind == a.dtype.kind
                    and (is_batched(n) or not batched)]
            if pool and self.likely("reuse"):
                try:
                    v = self.adapt(self.pick(pool, "source"), shape)
                    return self.squash(v, a) if a.dtype.kind == "f" else v
                except GraphcError:
                    pass
        return self.fresh(a, shape)

    def add_row(self, k: int) -> Node:
        row, plan = ROWS[k], batch_plan(k)
        batched = plan is not None and self.flip("batched")
        ins = [self.input_for(a, batched and i in plan) for i, a in enumerate(row.inputs)]
        try:
            out = row.build(*ins)
        except GraphcError:         # an adapted input the row's rule refuses: fresh leaves
            out = row.build(*[self.fresh(a, batched_shape(a) if batched and i in plan
                                         else a.shape, plain=True)
                              for i, a in enumerate(row.inputs)])
        self.results.append(out)
        return out

    def finish(self) -> tuple[list[Node], int]:
        """Outputs: the last result, a few earlier ones, a random scalar cost of the float
        ones and its gradients with respect to every float placeholder and variable.
        Returns (nodes, how many are forward outputs)."""
        outs = [self.results[-1]]
        for _ in range(self.choice(3, "extra outputs")):
            o = self.pick(self.results + self.leaves, "output")
            if all(o is not p for p in outs):
                outs.append(o)
        cost = self.cost([o for o in outs if o.dtype.kind == "f"])
        if cost is None:
            return outs, len(outs)
        wrt = [n for n in toposort([cost]) if n.op in ("placeholder", "variable")
               and n.dtype.kind == "f"]
        grads = gc.grad(cost, wrt) if wrt else []
        if grads and self.flip("second order"):       # a cost of the gradients, differentiated
            cost2 = self.cost([self.pick(grads, "grad")])
            grads += [cost2] + gc.grad(cost2, wrt)
        return outs + [cost] + grads, len(outs)

    def cost(self, outs: list[Node]) -> Node | None:
        """A random scalar of the outputs: sum, mean or max of each times random weights."""
        terms = []
        for o in outs:
            w = self.rng.uniform(-1, 1, [d if isinstance(d, int) else 1 for d in o.shape])
            reduce = self.pick(["sum", "mean", "max"], "cost")
            terms.append(getattr(gc, reduce)(o * gc.constant(w.astype(o.dtype))))
        cost = terms[0] if terms else None
        for t in terms[1:]:
            cost = cost + t
        return cost


# running and comparing ----------------------------------------------------------------

def attempt(fn):
    try:
        return fn(), None
    except GraphcError as e:
        return None, e


def nonfinite_inside(nodes: list[Node], feeds: dict) -> bool:
    """Whether any float value of the graph as built is NaN or Inf on these feeds."""
    order = [n for n in toposort(nodes) if n.dtype.kind == "f"]
    vals, err = attempt(lambda: evaluate(order, feeds))
    return err is None and any(not np.all(np.isfinite(v)) for v in vals)


def precision(node: Node) -> np.dtype:
    """The least precise float dtype the node's value went through (its tolerance)."""
    floats = {n.dtype for n in toposort([node]) if n.dtype.kind == "f"}
    return min(floats, key=lambda d: d.itemsize, default=node.dtype)


def agree(want: np.ndarray, got, what: str, tol: float) -> None:
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: got {got.shape} {got.dtype}, eval gives {want.shape} {want.dtype}"
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    fin = np.isfinite(want)                 # non-finite in the reference: not compared
    if not fin.any():
        return
    scale = max(1.0, float(np.abs(want[fin]).max()))
    with np.errstate(invalid="ignore"):     # inf - inf where the reference is not compared
        close = np.abs(got.astype(np.float64) - want) <= tol * (np.abs(want) + scale)
    bad = fin & ~close
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {want.size} elements differ, e.g. "
                           f"got {got[bad][:4]} want {want[bad][:4]}")


def describe(nodes: list[Node], n_out: int, batches) -> str:
    listing = str(Graph(nodes))
    return f"graph ({n_out} forward outputs, batches {batches}):\n{listing}"


def check_graph(nodes: list[Node], n_out: int, examples: dict, batches, seed: int) -> None:
    """Every mode of gc.function agrees with the interpreter on every call."""
    inputs = Graph(nodes).placeholders
    rng = np.random.default_rng(seed)
    random = any(n.inputs and OPS[n.op].random for n in toposort(nodes))
    make = [lambda o=o, c=c: gc.function(inputs, nodes, optimize=o, check_numerics=c)
            for o, c in MODES]
    context = describe(nodes, n_out, batches)
    fns = [m() for m in make]
    tols = [TOL.get(precision(n), 1e-6) for n in nodes]
    kept = []                       # (what, returned array, its copy) of every call
    for call, batch in enumerate(batches):
        vals = [sample(examples[p], tuple(batch if d is None else d for d in p.shape),
                       p.dtype, rng) for p in inputs]
        feeds = dict(zip(inputs, vals))
        want, err = attempt(lambda: evaluate(nodes, feeds))
        if random:                  # random ops: each Function's generator starts fresh
            fns = [m() for m in make]
        STATS["calls"] += 1
        for (opt, check), f in zip(MODES, fns):
            mode = f"optimize={opt} check_numerics={check} call {call} batch {batch}"
            args = [v.copy() for v in vals]
            got, gerr = attempt(lambda: f(*args))
            for v, a in zip(vals, args):
                assert np.array_equal(v, a, equal_nan=True), f"{mode}: a feed was written\n" \
                    + context
            if err is not None:
                assert gerr is not None, f"{mode}: eval raised {err}, compiled returned\n" \
                    + context
                continue
            if gerr is not None:
                assert check and "check_numerics" in str(gerr) \
                    and nonfinite_inside(nodes, feeds), \
                    f"{mode}: compiled raised, eval did not: {gerr}\n{context}"
                continue
            for k, (w, g, tol) in enumerate(zip(want, got, tols)):
                what = f"{mode}: output {k} ({'forward' if k < n_out else 'cost/grad'})"
                kept.append((what, g, np.array(g, copy=True)))
                try:
                    agree(w, g, what, tol)
                except AssertionError as e:
                    raise AssertionError(f"{e}\n{context}") from None
    for what, g, copy in kept:
        assert np.array_equal(g, copy, equal_nan=True), \
            f"{what}: the returned array changed in a later call\n{context}"


def run_random_graph(data, first_row: int | None = None, most: int = 7) -> None:
    """Draw a graph of random rows (with `first_row` among them), check it across modes."""
    b = Builder(data.draw, seed=data.draw(st.integers(0, 2**32 - 1), label="seed"))
    rows = [data.draw(st.integers(0, len(ROWS) - 1), label="row")
            for _ in range(data.draw(st.integers(first_row is None, most), label="rows"))]
    if first_row is not None:
        rows.insert(data.draw(st.integers(0, len(rows)), label="at"), first_row)
    for k in rows:
        b.add_row(k)
    nodes, n_out = b.finish()
    b1 = data.draw(st.integers(1, 5), label="batch")
    b2 = data.draw(st.integers(1, 5).filter(lambda n: n != b1), label="other batch")
    STATS["graphs"] += 1
    check_graph(nodes, n_out, b.examples, [b1, b1, b2, b1], data.draw(st.integers(0, 2**32 - 1)))


@fuzz_settings(60)
@given(st.data())
def test_random_graphs_agree_across_interpreter_compiled_and_optimized(data):
    run_random_graph(data)


@pytest.mark.parametrize("k", range(len(ROWS)),
                         ids=[name for name, _ in TABLE] + [r.name for r in MOTIFS])
@fuzz_settings(2)
@given(data=st.data())
def test_every_row_in_a_random_graph(k, data):
    """Each row of the table, once or twice per CI run, inside a small random graph."""
    run_random_graph(data, first_row=k, most=2)


def test_every_registered_op_is_reachable_by_the_generator():
    """Each op of the table appears in some generated graph (forward or gradient)."""
    seen: set[str] = set()
    for k in range(len(ROWS)):
        b = Builder()
        b.add_row(k)
        seen |= {n.op for n in toposort(b.finish()[0])}
    missing = sorted(set(OPS) - seen)
    assert not missing, f"ops the fuzzer never builds: {missing}"


@pytest.fixture(autouse=True, scope="module")
def report_counts():
    """Prints what the fuzz tests ran (see it with pytest -s)."""
    yield
    print(f"\nfuzz: {STATS['graphs']} random graphs, {STATS['calls']} calls, each checked in "
          f"{len(MODES)} compiled modes against the interpreter")
