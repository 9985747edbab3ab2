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
from graphc.ir import OPS, Graph, GraphcError, Node, apply, evaluate, toposort
from graphc.passes import DEFAULT_PIPELINE, eliminate_common_subexpressions, fold_constants
from tests.test_fuzz_motifs import MOTIFS
from tests.test_ops import ROWS as TABLE

ROWS = [row for _, row in TABLE] + MOTIFS
CAMPAIGN = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "0"))
MODES = [(False, False), (True, False), (False, True), (True, True)]  # optimize, check_numerics
PASSES = list(dict.fromkeys(DEFAULT_PIPELINE + [fold_constants, eliminate_common_subexpressions]))
TOL = {np.dtype("float64"): 1e-6, np.dtype("float32"): 2e-3, np.dtype("float16"): 2e-2}
STATS = {"graphs": 0, "calls": 0}       # what a campaign ran (printed with -s)


def fuzz_settings(examples: int, share: int = 1):
    """Seeded and bounded in CI; a campaign (GRAPHC_FUZZ_EXAMPLES=N) draws N fresh graphs
    (N / share for a test parametrized `share` ways)."""
    return settings(max_examples=CAMPAIGN // share + 1 if CAMPAIGN else examples,
                    deadline=None, derandomize=not CAMPAIGN,
                    database=None, suppress_health_check=list(HealthCheck))


# example inputs -> value domains ------------------------------------------------------

def sample(example: np.ndarray, shape, dtype, rng: np.random.Generator) -> np.ndarray:
    """Random values like the row's example: its range (positive, labels in range), its kind."""
    if example.dtype == bool or np.dtype(dtype) == bool:
        return rng.random(shape) < 0.5
    lo, hi = value_range(example)
    if np.dtype(dtype).kind in "iu":
        return rng.integers(math.floor(lo), math.ceil(hi) + 1, size=shape).astype(dtype)
    hi = hi if hi > lo else lo + 1.0
    return rng.uniform(lo, hi, size=shape).astype(dtype)


def value_range(example: np.ndarray) -> tuple[float, float]:
    """The range of the example's finite values (0..1 when it has none)."""
    finite = example[np.isfinite(example)] if example.dtype.kind == "f" else example
    if not finite.size:
        return 0.0, 1.0
    return float(max(finite.min(), -1e6)), float(min(finite.max(), 1e6))


def batched_shape(a: np.ndarray, dim=None) -> tuple:
    return (dim,) + a.shape[1:]


def resized(a: np.ndarray, batch: int) -> np.ndarray:
    return np.take(a, np.arange(batch) % a.shape[0], axis=0)


@functools.cache
def batch_plan(k: int) -> frozenset | None:
    """Which inputs of row k may take a batch dim None (the output then has batch dim None
    and the batch's size at run time, and the gradient builds), found by trying; None when
    the row needs its sizes."""
    row = ROWS[k]
    try:
        out0 = row.build(*[gc.constant(a) for a in row.inputs]).shape[:1]
    except GraphcError:
        return None
    same = frozenset(i for i, a in enumerate(row.inputs) if a.ndim and a.shape[:1] == out0)
    for plan in dict.fromkeys([same, frozenset({0})] if row.inputs else []):
        if not plan or not row.inputs[0].ndim:
            continue
        leaves = [gc.placeholder(batched_shape(a) if i in plan else a.shape, a.dtype)
                  for i, a in enumerate(row.inputs)]
        try:
            out = row.build(*leaves)
            if out.shape[:1] != (None,) or None in out.shape[1:]:
                continue
            floats = [x for x in leaves if x.dtype.kind == "f"]
            if floats and out.dtype.kind == "f":     # its gradient must build with a batch too
                gc.grad(gc.sum(out), floats)
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
    return n.ndim > 0 and all(isinstance(d, int) != (i == 0) for i, d in enumerate(n.shape))


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
        self.batch = self.pick([None, "n"], "batch dim")   # unknown, or named

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
        if all(isinstance(d, int) for d in shape) and dtype.kind == "f" and not plain:
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
        if shape and not isinstance(shape[0], int):  # batched: keep the batch, fit the rest
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
        lo, hi = value_range(a)
        if lo >= 0:
            return lo + (hi - lo) * gc.sigmoid(v)
        if self.flip("tanh"):
            return gc.tanh(v) * max(-lo, hi)
        return v

    def input_for(self, a: np.ndarray, batched: bool) -> Node:
        shape = batched_shape(a, self.batch) if batched else a.shape
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
            out = row.build(*[self.fresh(a, batched_shape(a, self.batch) if batched and i in plan
                                         else a.shape, plain=True)
                              for i, a in enumerate(row.inputs)])
        self.results.append(out)
        return out

    def finish(self) -> tuple[list[Node], int, list]:
        """Outputs: the last result, a few earlier ones, a random scalar cost of the float
        ones and its gradients with respect to every float placeholder and variable; maybe
        an SGD step of the variables. Returns (nodes, how many are forward, updates)."""
        outs = [self.results[-1]]
        for _ in range(self.choice(3, "extra outputs")):
            o = self.pick(self.results + self.leaves, "output")
            if all(o is not p for p in outs):
                outs.append(o)
        cost = self.cost([o for o in outs if o.dtype.kind == "f"])
        if cost is None:
            return outs, len(outs), []
        wrt = [n for n in toposort([cost]) if n.op in ("placeholder", "variable")
               and n.dtype.kind == "f"]
        grads = gc.grad(cost, wrt) if wrt else []
        if grads and self.flip("second order"):       # a cost of the gradients, differentiated
            cost2 = self.cost([self.pick(grads, "grad")])
            grads += [cost2] + gc.grad(cost2, wrt)
        updates = []
        if self.flip("updates"):
            updates = [(v, v - gc.cast(g * 0.1, v.dtype)) for v, g in zip(wrt, grads)
                       if v.op == "variable"]
        return outs + [cost] + grads, len(outs), updates

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


def describe(nodes: list[Node], n_out: int, batches, updates=()) -> str:
    listing = str(Graph(nodes, updates))
    return f"graph ({n_out} forward outputs, batches {batches}):\n{listing}"


def layout(a: np.ndarray, how: int) -> np.ndarray:
    """The same values as a Fortran-ordered, strided or read-only array (feeds need not be
    fresh C-contiguous arrays)."""
    if how == 1 and a.ndim >= 2:
        return np.asfortranarray(a)
    if how == 2 and a.ndim >= 1:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    a = a.copy()
    a.setflags(write=how != 3)
    return a


def widened(nodes: list[Node]) -> tuple[list[Node], dict] | None:
    """The graph in float64 wherever it computes in float32 (leaves, constants, dtype
    attributes), and {old leaf: new placeholder}; None when some op refuses. A float32 graph
    computed naively (log(1 - sigmoid z)) can be further from the truth than its stabilized,
    optimized form: this reference tells the two apart."""
    new, leaves = {}, {}
    try:
        for n in toposort(nodes):
            wide = "float64" if n.dtype == np.float32 else n.dtype
            if n.op in ("placeholder", "variable"):
                new[n] = leaves[n] = gc.placeholder(n.shape, wide, n.name)
            elif n.op == "constant":
                new[n] = gc.constant(n.data.astype(wide))
            else:
                attrs = {k: "float64" if v == "float32" else v for k, v in n.attrs.items()}
                new[n] = apply(n.op, *[new[i] for i in n.inputs], **attrs)
    except GraphcError:
        return None
    return [new[n] for n in nodes], leaves


def near_exact(nodes: list[Node], k: int, inputs, vals, values, got, tol) -> bool:
    """Whether output k of a float32 graph agrees with the float64 form of the graph (feeds
    `vals`, variables' `values` before the call)."""
    wide = widened(nodes)
    if wide is None:
        return False
    outs, leaves = wide
    feeds = {leaves[p]: v.astype(leaves[p].dtype) for p, v in zip(inputs, vals)}
    feeds.update({w: values[v].astype(w.dtype) for v, w in leaves.items()
                  if v.op == "variable"})
    want, err = attempt(lambda: evaluate([outs[k]], feeds))
    try:
        agree(want[0].astype(nodes[k].dtype), got, "", tol)
        return err is None
    except AssertionError:
        return False


def reference(nodes, updates, inputs, feeds) -> list:
    """Per call: (outputs and variables after it, or None; the GraphcError or None), from the
    interpreter, each call's updates written before the next."""
    variables = [v for v, _ in updates]
    out = []
    for vals in feeds:
        res, err = attempt(lambda: evaluate(nodes + [u for _, u in updates],
                                            dict(zip(inputs, vals))))
        if err is None:
            res = [np.array(r, copy=True) for r in res]    # a variable's value: its storage
            for v, new in zip(variables, res[len(nodes):]):
                v.value = new
            res = res[:len(nodes)]
        out.append((res, err, [v.value.copy() for v in variables]))
    return out


def check_graph(nodes: list[Node], n_out: int, examples: dict, batches, seed: int,
                updates=(), passes=()) -> None:
    """Every mode of gc.function agrees with the interpreter on every call: outputs, variables
    after the updates, errors; feeds stay unwritten, returned arrays stay as returned. Modes:
    optimize or not, check_numerics or not, and `passes` (a list, in any order) alone."""
    inputs = Graph(nodes).placeholders
    variables = [v for v, _ in updates]
    initial = [v.value.copy() for v in variables]
    rng = np.random.default_rng(seed)
    feeds = [[sample(examples[p], tuple(d if isinstance(d, int) else batch for d in p.shape),
                     p.dtype, rng) for p in inputs] for batch in batches]
    wants = reference(nodes, updates, inputs, feeds)
    random = any(n.inputs and OPS[n.op].random for n in toposort(nodes))
    context = describe(nodes, n_out, batches, updates)
    tols = [TOL.get(precision(n), 1e-6) for n in nodes + [u for _, u in updates]]
    for opt, check in MODES + ([(list(passes), False)] if passes else []):
        for v, value in zip(variables, initial):
            v.value = value
        f, kept, state = None, [], initial
        for call, (vals, batch, (want, err, after)) in enumerate(zip(feeds, batches, wants)):
            shown = [p.__name__ for p in opt] if isinstance(opt, list) else opt
            mode = f"optimize={shown} check_numerics={check} call {call} batch {batch}"
            args = [layout(v, int(rng.integers(4))) for v in vals]
            before = {n: n.value.copy() for n in toposort(nodes) if n.op == "variable"}
            try:
                if f is None or random:  # random ops: each Function's generator starts fresh
                    f = gc.function(inputs, nodes, updates=updates, optimize=opt,
                                    check_numerics=check)
                got, gerr = attempt(lambda: f(*args))
            except Exception as e:
                raise AssertionError(f"{mode}: {type(e).__name__}: {e}\n{context}") from e
            STATS["calls"] += 1
            for v, a in zip(vals, args):
                assert np.array_equal(v, a, equal_nan=True), f"{mode}: a feed was written\n" \
                    + context
            if gerr is not None:
                for v, old in zip(variables, state):
                    assert np.array_equal(v.value, old, equal_nan=True), \
                        f"{mode}: a call that raised changed a variable\n{context}"
            if err is not None:
                assert gerr is not None, f"{mode}: eval raised {err}, compiled returned\n" \
                    + context
                continue
            state = after
            if gerr is not None:
                assert check and "check_numerics" in str(gerr) \
                    and nonfinite_inside(nodes + [u for _, u in updates],
                                         dict(zip(inputs, vals))), \
                    f"{mode}: compiled raised, eval did not: {gerr}\n{context}"
                for v, value in zip(variables, after):      # go on from eval's state
                    v.value = value
                continue
            got = list(got) + [v.value for v in variables]
            for k, (w, g, tol) in enumerate(zip(want + after, got, tols)):
                what = f"{mode}: output {k} ({'forward' if k < n_out else 'cost/grad/update'})"
                if k < len(want):
                    kept.append((what, g, np.array(g, copy=True)))
                try:
                    agree(w, g, what, tol)
                except AssertionError as e:
                    if not (opt and k < len(nodes) and tol > TOL[np.dtype("float64")]
                            and near_exact(nodes, k, inputs, vals, before, g, tol)):
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
    nodes, n_out, updates = b.finish()
    b1 = data.draw(st.integers(1, 5), label="batch")
    b2 = data.draw(st.integers(1, 5).filter(lambda n: n != b1), label="other batch")
    STATS["graphs"] += 1
    passes = data.draw(st.lists(st.sampled_from(PASSES), max_size=4), label="passes")
    check_graph(nodes, n_out, b.examples, [b1, b1, b2, b1], data.draw(st.integers(0, 2**32 - 1)),
                updates, passes)


@fuzz_settings(60)
@given(st.data())
def test_random_graphs_agree_across_interpreter_compiled_and_optimized(data):
    run_random_graph(data)


@pytest.mark.parametrize("k", range(len(ROWS)),
                         ids=[name for name, _ in TABLE] + [r.name for r in MOTIFS])
@fuzz_settings(1, share=len(ROWS))
@given(data=st.data())
def test_every_row_in_a_random_graph(k, data):
    """Each row of the table, once per CI run, inside a small random graph."""
    run_random_graph(data, first_row=k, most=2)


def test_every_registered_op_is_reachable_by_the_generator():
    """Each op of the table appears in some generated graph (forward or gradient)."""
    seen: set[str] = set()
    for k in range(len(ROWS)):
        b = Builder()
        b.add_row(k)
        nodes, _, updates = b.finish()
        seen |= {n.op for n in Graph(nodes, updates).nodes}
    missing = sorted(set(OPS) - seen)
    assert not missing, f"ops the fuzzer never builds: {missing}"


@pytest.fixture(autouse=True, scope="module")
def report_counts():
    """Prints what the fuzz tests ran (see it with pytest -s)."""
    yield
    print(f"\nfuzz: {STATS['graphs']} random graphs, {STATS['calls']} compiled calls "
          f"({len(MODES)} modes and a random pass list), each checked against the interpreter")
