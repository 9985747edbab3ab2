"""The memory planner on plain step lists: reuse after last use, never a feed, views keep
their base alive, updates written into variables only when every read of them is done."""
from __future__ import annotations

import numpy as np

from graphc.runtime.planner import Pool, Step, Update, direct_updates, dying, endings, liveness


def run_plan(steps, kept, shape=(4,)):
    """Assign a buffer to every "buffer" step the way the lowering does: give back the
    buffers whose last reader ran, then take one for the step. -> {key: buffer name}."""
    roots, last = liveness(steps, kept)
    pool, owner, got, ends = Pool({}), {}, {}, endings(last, len(steps))
    for i, s in enumerate(steps):
        free = dying(i, owner, ends)
        if s.kind == "buffer":
            owner[s.key] = got[s.key] = pool.take(shape, np.float64)
        for b in free:
            if b != owner.get(s.key):
                pool.give(b)
    return got, roots, last


def test_a_buffer_is_reused_after_its_last_reader_only():
    x = "x"                                       # a feed
    steps = [Step("a", (x,), "buffer"), Step("b", ("a",), "buffer"),
             Step("c", ("b",), "buffer"), Step("d", ("c", "a"), "buffer")]
    got, _, last = run_plan(steps, kept=["d"])
    assert last["a"] == 3                         # d reads a: a lives until step 3
    assert len({got["a"], got["b"], got["c"]}) == 3
    chain = [Step("a", (x,), "buffer"), Step("b", ("a",), "buffer"),
             Step("c", ("b",), "buffer")]
    got, _, _ = run_plan(chain, kept=["c"])
    assert got["c"] == got["a"]                   # a died at step 1: c reuses its buffer


def test_views_keep_their_base_alive():
    steps = [Step("a", ("x",), "buffer"), Step("t", ("a",), "view"),
             Step("b", ("a",), "buffer"), Step("c", ("b",), "buffer"),
             Step("d", ("t", "c"), "buffer")]
    got, roots, last = run_plan(steps, kept=["d"])
    assert roots["t"] == ("a",) and last["a"] == 4
    assert got["c"] != got["a"]                   # a is still read through its view t


def test_kept_values_and_fresh_results_own_their_memory():
    steps = [Step("a", ("x",), "buffer"), Step("k", ("a",), "fresh"),
             Step("b", ("k",), "buffer")]
    roots, last = liveness(steps, kept=["a"])
    assert roots["k"] == ("k",) and last["a"] == len(steps)   # an output lives to the end


def test_feeds_and_variables_are_never_handed_out():
    pool = Pool({})
    b = pool.take((3,), np.float32)
    for name in ("x0", "w3", "c1", "k0", "box2"):
        pool.give(name)                           # not the pool's: ignored
    pool.give(b)
    assert pool.take((3,), np.float32) == b
    assert pool.take((3,), np.float32) != b       # b is taken again: a new one
    steps = [Step("a", ("x",), "buffer"), Step("b", ("a",), "buffer")]
    got, _, _ = run_plan(steps, kept=["b"])
    assert "x" not in got.values()


def update(var, value, index, reads):
    return Update(var, value, index, elementwise=True, same_shape=True, reads=reads)


def test_an_update_is_written_into_its_variable_only_after_every_read_of_it():
    # v' = v + x (step 1); then w' = w * v (step 2) still reads the old v
    steps = [Step("x", (), "fresh"), Step("v'", ("v", "x"), "buffer"),
             Step("w'", ("w", "v"), "buffer")]
    roots, last = liveness(steps, kept=["v'", "w'"])
    ups = [update("v", "v'", 1, ("v", "x")), update("w", "w'", 2, ("w", "v"))]
    assert direct_updates(ups, steps, [], roots, last, []) == {"w'"}
    # without the later read, v' goes straight into v too
    steps2 = steps[:2] + [Step("w'", ("w", "x"), "buffer")]
    roots, last = liveness(steps2, kept=["v'", "w'"])
    ups2 = [ups[0], update("w", "w'", 2, ("w", "x"))]
    assert direct_updates(ups2, steps2, [], roots, last, []) == {"v'", "w'"}


def test_no_direct_write_before_a_step_that_can_raise_or_of_an_output():
    steps = [Step("v'", ("v",), "buffer"), Step("k", ("x",), "fresh")]
    roots, last = liveness(steps, kept=["v'"])
    ups = [update("v", "v'", 0, ("v",))]
    assert direct_updates(ups, steps, [1], roots, last, []) == set()      # k may raise
    assert direct_updates(ups, steps, [], roots, last, ["v'"]) == set()   # v' is an output
    assert direct_updates(ups, steps, [], roots, last, []) == {"v'"}


def test_a_step_reading_a_view_of_its_variable_does_not_write_into_it():
    steps = [Step("t", ("v",), "view"), Step("v'", ("v", "t"), "buffer")]
    roots, last = liveness(steps, kept=["v'"])
    ups = [update("v", "v'", 1, ("v", "t"))]
    assert direct_updates(ups, steps, [], roots, last, []) == set()


def test_dying_buffers_come_in_the_order_of_their_names_not_of_their_keys():
    # keys are id()s in the lowering, ordered differently from run to run: the buffers given
    # back (and so the generated code) must not follow them
    ends = endings({1: 0, 2: 0, 3: 0}, 1)
    assert dying(0, {1: "b10", 2: "b2", 3: "b1"}, ends) == ["b1", "b2", "b10"]
    assert dying(0, {3: "b10", 1: "b2", 2: "b1"}, ends) == ["b1", "b2", "b10"]
