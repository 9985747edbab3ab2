"""gc.save replaces a pair so that readers see the old pair or the new one: under SIGKILL at any
moment, while being read, and after a save killed between its renames; leftovers are removed by
the next save of the same path."""
from __future__ import annotations

import os
import shutil
import signal
import time

import numpy as np

import graphc as gc
from graphc.io import staged_path

N = 1 << 18          # 1 MiB of float32: a save takes long enough to be killed inside


def graph(fill: float):
    x = gc.placeholder((None, N), name="x")
    w = gc.variable(np.full(N, fill, "float32"), name="w")
    return gc.sum(x * w + gc.constant(np.full(N, fill, "float32")), axis=1)


def which(path) -> float:
    """0.0 or 1.0: the fill of the pair at path, checking both arrays agree with each other."""
    out = gc.load(path)
    arrays = [n.value for n in gc.Graph([out]).nodes if n.op in ("variable", "constant")]
    fills = {float(a[0]) for a in arrays}
    assert len(fills) == 1 and all((a == a[0]).all() for a in arrays), "a mixed pair"
    return fills.pop()


def saver(path, graphs) -> int:
    """Fork a child that saves the graphs in turn until it is killed."""
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                for g in graphs:
                    gc.save(g, path)
        finally:
            os._exit(1)
    return pid


def test_sigkill_during_save_leaves_the_old_or_the_new_pair(tmp_path):
    path = tmp_path / "g"
    graphs = [graph(0.0), graph(1.0)]
    gc.save(graphs[0], path)
    rng = np.random.default_rng(0)
    seen, leftovers = set(), 0
    for _ in range(30):
        pid = saver(path, graphs)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        seen.add(which(path))              # never a mix, never an error
        leftovers += len(os.listdir(tmp_path)) > 2
    assert seen == {0.0, 1.0}
    gc.save(graphs[0], path)
    assert sorted(os.listdir(tmp_path)) == ["g.json", "g.npz"]
    assert which(path) == 0.0
    print(f"\n30 kills: {leftovers} left temp or staged files, removed by the next save")


def test_readers_see_whole_pairs_while_a_save_runs(tmp_path):
    path = tmp_path / "g"
    graphs = [graph(0.0), graph(1.0)]
    gc.save(graphs[0], path)
    pid = saver(path, graphs)
    try:
        seen = [which(path) for _ in range(40)]
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert set(seen) <= {0.0, 1.0}


def test_a_save_killed_between_its_renames_reads_as_new_and_is_finished(tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    gc.save(graph(0.0), old / "g")
    gc.save(graph(1.0), new / "g")
    # the state after the .json was replaced, before the staged .npz was renamed
    digest = gc.io.read_json(str(new / "g.json"), 1 << 30)[1]["arrays"]["sha256"]
    shutil.copy(new / "g.npz", staged_path(str(old / "g.npz"), digest))
    shutil.copy(new / "g.json", old / "g.json")
    assert which(old / "g") == 1.0                       # g.npz is stale: the staged file
    tmp = old / "g.json.graphc-tmp-0123abcd"             # and a killed write's temp file
    tmp.write_bytes(b"{")
    gc.io.finish_killed_save(str(old / "g.json"), str(old / "g.npz"))
    assert sorted(os.listdir(old)) == ["g.json", "g.npz"]
    assert which(old / "g") == 1.0


def test_a_pair_from_two_saves_is_refused(tmp_path):
    gc.save(graph(0.0), tmp_path / "a")
    gc.save(graph(1.0), tmp_path / "b")
    shutil.copy(tmp_path / "b.npz", tmp_path / "a.npz")
    try:
        gc.load(tmp_path / "a")
    except gc.GraphcError as e:
        assert "does not match the sha256" in str(e)
    else:
        raise AssertionError("a mixed pair loaded")
