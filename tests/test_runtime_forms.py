"""Body forms (passes/fuse.structure): fused bodies equal up to their nodes' identities share
a number, and the lowering's per-form answers (shapes, whether the body compiles) are the
ones each body gets on its own."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.passes.fuse import Body, structure
from graphc.runtime import program, rules, shapes
from tests.test_fuzz_motifs import MOTIFS
from tests.test_ops import ROWS


def fused_bodies(graph):
    return [n.attrs["body"] for n in graph.nodes if n.op == "fused"]


def plan_facts(f, feeds, forms: bool):
    """Every concrete shape, each fused node's compiles answer and the plan's source (fused
    steps of a form met before stamped, runtime/stamps.py), with or without forms."""
    saved = {}
    for b in fused_bodies(f.graph):
        saved[id(b)] = b.__dict__.pop("structure", None)
    try:
        if forms:
            for b in fused_bodies(f.graph):
                b.structure = structure(b)
        got = shapes.resolve(f.graph, {id(p): a for p, a in zip(f.inputs, feeds)})
        low = program.Lowering(f.graph, f.inputs, got, False, {})
        ok = [low.fused_ok(n) for n in f.graph.nodes if n.op == "fused"]
        plan = program.lower(f.graph, f.inputs, got)
        ok.append((plan.source, sorted(plan.ns), plan.kinds))
    finally:
        for b in fused_bodies(f.graph):
            b.__dict__.pop("structure", None)
            if saved[id(b)] is not None:
                b.structure = saved[id(b)]
    return got, ok


def graph_of(row):
    """The row's gradient graph (or its forward graph) built twice on two sets of leaves of
    the same types: most fused bodies' forms come twice (the second answered per form)."""
    leaves, outs = [], []
    for copy in range(2):
        xs = [gc.placeholder(a.shape, dtype=a.dtype, name=f"in{k}_{copy}")
              for k, a in enumerate(row.inputs)]
        o = row.build(*xs)
        floats = [x for x in xs if x.dtype.kind == "f"]
        if o.dtype.kind == "f" and floats and row.grad:
            outs += list(gc.grad(gc.sum(o * o), floats))
        outs.append(o)
        leaves += xs
    return leaves, outs


CASES = [(i, r) for i, r in ROWS] + [(f"motif {r.name}", r) for r in MOTIFS]


@pytest.mark.parametrize("row", [r for _, r in CASES], ids=[i for i, _ in CASES])
def test_per_form_shapes_and_compiles_are_each_bodys_own(row):
    leaves, outs = graph_of(row)
    f = gc.function(leaves, outs)
    bodies = fused_bodies(f.graph)
    if not bodies:
        return
    feeds = list(row.inputs) * 2
    assert plan_facts(f, feeds, forms=True) == plan_facts(f, feeds, forms=False)


def test_equal_groups_share_a_form_and_different_ones_do_not():
    x = gc.placeholder((None, 4), name="x")
    k = gc.placeholder((None, 4), "float64", name="k")
    ws = [gc.variable(np.full(4, 0.5 + i, np.float32), name=f"w{i}") for i in range(4)]
    outs = [gc.tanh(x * ws[0]) + 1.0, gc.tanh(x * ws[1]) + 1.0,    # one form
            gc.tanh(x * ws[2]) + 2.0,                                # another constant
            gc.tanh(ws[3] * x) + 1.0,                                # inputs swapped
            gc.tanh(k * k) + 1.0,                                    # another dtype
            gc.cast(gc.tanh(x * ws[0]), "float64") + k,              # an attribute
            gc.cast(gc.tanh(x * ws[1]), "float16").astype("float64") + k]
    g = gc.optimize(gc.Graph(outs))
    forms = [n.attrs["body"].structure for n in g.nodes if n.op == "fused"]
    assert len(forms) == len(outs)
    assert forms[0] == forms[1] and len(set(forms)) == len(forms) - 1


def test_chains_of_blocks_repeat_their_forms_with_each_bodys_own_answers():
    """Two chains of one form fed batches of 5 and 7 rows: per form and input types."""
    xs, losses, params = [], [], []
    for c in range(2):
        x = gc.placeholder((None, 3), "float64", name=f"x{c}")
        h = x
        for i in range(8):
            w = gc.variable(np.linspace(0.2, 0.9, 3) + 0.01 * i + c, name=f"w{c}_{i}")
            params.append(w)
            h = gc.tanh(h * w) + 0.5 * h
        xs.append(x)
        losses.append(gc.mean(h * h))
    loss = losses[0] + losses[1]
    grads = gc.grad(loss, params)
    f = gc.function(xs, loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    forms = [b.structure for b in fused_bodies(f.graph)]
    assert len(forms) > 30 and len(set(forms)) < 10
    rng = np.random.default_rng(0)
    feeds = [rng.uniform(-1, 1, (5, 3)), rng.uniform(-1, 1, (7, 3))]
    got = plan_facts(f, feeds, forms=True)
    assert got == plan_facts(f, feeds, forms=False)
    assert {s[0][0] for s in got[0].values() if len(s[0]) == 2} == {5, 7}


def test_stamped_steps_are_the_ones_written_op_by_op():
    """Repeated forms with inlined constants, a kernel call (no template), relu's zeros (a
    plan constant per step: never stamped), scratch buffers and reused inputs (the update
    written into its variable) are written as each step's own; the plan computes what the
    interpreter does."""
    x = gc.placeholder((None, 3), "float64", name="x")
    h, params, extra = x, [], 0.0
    for i in range(20):
        w = gc.variable(np.linspace(0.2, 0.9, 3) + 0.01 * i, name=f"w{i}")
        params.append(w)
        h = gc.tanh(h * w + 0.25) + 0.5 * h
        extra = extra + gc.sum(gc.erf(h * w) * 0.1) + gc.sum(gc.relu(h * w))
    loss = gc.mean(h * h) + extra
    grads = gc.grad(loss, params)
    f = gc.function([x], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    feeds = [np.random.default_rng(1).uniform(-1, 1, (5, 3))]
    got = plan_facts(f, feeds, forms=True)
    assert got == plan_facts(f, feeds, forms=False)
    assert "kernel_erf(" in got[1][-1][0] and "xp.maximum(" in got[1][-1][0]
    shapes_ = shapes.resolve(f.graph, {id(x): feeds[0]})
    low = program.Lowering(f.graph, f.inputs, shapes_, False, {})
    low.build()
    made = [s for s in low.stamps.values() if s is not None]
    assert len(made) >= 2 and any(s.kernel_calls for s in made)
    assert None in low.stamps.values()          # relu's zeros: op by op
    replays = [k[2] for k, s in low.stamps.items() if k[0] == "replay" and s is not None]
    assert any("S0" in k for k in replays)      # scratch buffers stamped
    assert any(k.count("O") == 1 and "A0" in k for k in replays)  # the update: a reused input
    want = loss.eval({x: feeds[0]})
    np.testing.assert_allclose(f(*feeds), want, rtol=1e-12)


def test_bodies_of_a_form_met_before_are_ordered_and_numbered_as_fresh_ones():
    """make_body finds a body's node order and form number once per form (passes/fuse.ORDERS):
    every body, the first of its form or not, equals one built and numbered on its own."""
    graphs = [gc.Graph(graph_of(row)[1]) for _, row in CASES]
    x = gc.placeholder((None, 3), "float64", name="x")
    h, params = x, []
    for i in range(6):
        w = gc.variable(np.linspace(0.2, 0.9, 3) + 0.01 * i, name=f"w{i}")
        params.append(w)
        h = gc.tanh(h * w + 0.25) + 0.5 * h
    loss = gc.mean(h * h)
    graphs.append(gc.Graph([loss], [(p, p - 0.1 * g)
                                    for p, g in zip(params, gc.grad(loss, params))]))
    seen = 0
    for g in graphs:
        for b in fused_bodies(gc.optimize(g)):
            if "structure" not in b.__dict__:     # not fusion's (a pass rebuilt it)
                continue
            fresh = Body(b.inputs, b.outputs[0])
            assert [id(n) for n in b.nodes] == [id(n) for n in fresh.nodes]
            assert b.structure == structure(fresh)
            seen += 1
    assert seen > 300


@pytest.mark.parametrize("product_first", [True, False])
def test_one_form_with_and_without_a_product_gets_each_steps_own_gemm(product_first):
    """Two updates 0.9 * w - g of one body form, g a product (one GEMM over w) in one and a
    view in the other: the form's terms are found once (rules.body_terms), whether a term is
    a product is each step's own."""
    x = gc.placeholder((5, 5), "float64", name="x")
    rng = np.random.default_rng(1)
    start = [rng.standard_normal((5, 5)) for _ in range(2)]
    w1, w2 = (gc.variable(a.copy(), name=f"w{k}") for k, a in enumerate(start))
    h = gc.tanh(x)
    ups = [(w1, 0.9 * w1 - gc.transpose(h) @ h), (w2, 0.9 * w2 - gc.transpose(h))]
    f = gc.function([x], gc.sum(h), updates=ups if product_first else ups[::-1])
    assert len({b.structure for b in fused_bodies(f.graph)}) == 1
    want = [a.copy() for a in start]
    for _ in range(2):
        xv = rng.standard_normal((5, 5))
        f(xv)
        t = np.tanh(xv)
        want = [0.9 * want[0] - t.T @ t, 0.9 * want[1] - t.T]
    np.testing.assert_allclose(w1.value, want[0], rtol=1e-12)
    np.testing.assert_allclose(w2.value, want[1], rtol=1e-12)
    assert f.source.count("xp.gemm(") == 1
    assert plan_facts(f, [xv], forms=True) == plan_facts(f, [xv], forms=False)


def test_reader_counts_are_the_users_lists_lengths():
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, np.float32), name="w")
    y = x * x + gc.tanh(x * w)           # x read twice by one node: one reader
    g = gc.Graph([gc.sum(y * y), y], [(w, w - 0.1 * gc.grad(gc.sum(y), [w])[0])])
    got = rules.reader_counts(g.nodes)
    assert got == {k: len(v) for k, v in g.users().items() if v}
    assert any(len(set(map(id, n.inputs))) < len(n.inputs) for n in g.nodes)
