"""Save/load: round trips keep values, listings, attributes and grad_of; bad files fail cleanly."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pathlib
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.io import document_digest, file_paths
from graphc.io_format import decode_attr, encode_attr
from graphc.ir import Node, apply
from graphc.ops.fused import Body
from tests.helpers import leaves_for


def mlp():
    """A small MLP-like graph built only from elementwise ops, sum, reshape, where and cast."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 4), dtype="float32", name="x")
    y = gc.placeholder(("batch",), dtype="int64", name="y")
    W = gc.variable(rng.normal(size=(4, 3)).astype("float32"), name="W")
    b = gc.variable(np.array([0.1, -0.2, 0.3], "float32"), name="b")
    with gc.name_scope("dense"):
        cols = gc.reshape(x, (-1, 4, 1)) * W                    # (?, 4, 3)
        h = gc.relu(gc.sum(cols, axis=(1,)) + b)                 # (?, 3)
    scaled = gc.where(gc.greater(h, 0.5), h * 2.0, h - gc.constant(np.float32(1.5)))
    total = gc.sum(scaled, axis=1, keepdims=True)                 # (?, 1)
    target = gc.reshape(gc.cast(y, "float32"), (-1, 1))
    loss = gc.sum((total - target) ** 2, axis=(0, 1))
    flat = gc.reshape(gc.constant(np.arange(6, dtype="float32")), (-1,))
    extra = gc.sum(gc.reshape(flat, (2, -1)) * gc.exp(b), axis=None)
    return x, y, W, b, loss, extra


def feeds_for(x, y):
    rng = np.random.default_rng(1)
    return {x: rng.normal(size=(5, 4)).astype("float32"), y: np.arange(5)}


def write_signed(path, doc: dict) -> None:
    """Write an edited graph document with the digests a save would give it (a hostile file
    can do the same: the digests catch damage and torn pairs, not authors)."""
    path = pathlib.Path(path)
    npz = path.with_suffix(".npz")
    if npz.exists():
        doc["arrays"] = {"sha256": hashlib.sha256(npz.read_bytes()).hexdigest()}
    doc.setdefault("arrays", {"sha256": "0" * 64})
    doc["sha256"] = document_digest(doc)
    path.write_text(json.dumps(doc))


def resign(path) -> None:
    """Sign the graph file again after its .npz was replaced."""
    write_signed(path, json.loads(pathlib.Path(path).read_text()))


def by_name(graph: gc.Graph, name: str):
    return next(n for n in graph.nodes if n.name == name)


def assert_same_nodes(new_nodes, old_nodes):
    """Same ops, attributes and grad_of tags; fused bodies compared node by node."""
    assert len(new_nodes) == len(old_nodes)
    for new, old in zip(new_nodes, old_nodes):
        assert (new.op, new.shape, new.dtype, new.name) == (old.op, old.shape, old.dtype,
                                                            old.name)
        assert (new.grad_of is None) == (old.grad_of is None)
        assert new.attrs.keys() == old.attrs.keys()
        for k, v in old.attrs.items():
            if isinstance(v, Body):
                body = new.attrs[k]
                assert isinstance(body, Body) and str(body) == str(v)
                assert [p.name for p in body.inputs] == [p.name for p in v.inputs]
                assert_same_nodes(body.nodes, v.nodes)
            else:
                assert new.attrs[k] == v


def test_round_trip_keeps_values_listing_and_attrs(tmp_path):
    x, y, W, b, loss, extra = mlp()
    gc.save([loss, extra], tmp_path / "mlp")
    got = gc.load(tmp_path / "mlp.json")
    assert isinstance(got, list) and len(got) == 2
    before, after = gc.Graph([loss, extra]), gc.Graph(got)
    assert str(after) == str(before)
    for old, new in zip(before.nodes, after.nodes):
        assert (new.op, new.attrs, new.shape, new.dtype) == (old.op, old.attrs, old.shape,
                                                              old.dtype)
        assert (new.name, new.scope, new.where) == (old.name, old.scope, old.where)
    assert by_name(after, "y").shape == ("batch",)
    feeds = feeds_for(x, y)
    want = gc.ir.evaluate([loss, extra], feeds)
    new_feeds = {by_name(after, "x"): feeds[x], by_name(after, "y"): feeds[y]}
    have = gc.ir.evaluate(got, new_feeds)
    for w, h in zip(want, have):
        np.testing.assert_array_equal(h, w)
    assert float(have[1]) == pytest.approx(float(np.sum(np.arange(6).reshape(2, 3)
                                                        * np.exp(b.value))), rel=1e-6)


def test_single_node_comes_back_as_a_node_and_variables_are_new(tmp_path):
    *_, W, b, loss, extra = mlp()
    gc.save(extra, tmp_path / "one.json")
    got = gc.load(tmp_path / "one")
    assert isinstance(got, gc.Node) and str(got) == str(extra)
    new_b = by_name(gc.Graph([got]), "b")
    assert new_b is not b
    np.testing.assert_array_equal(new_b.value, b.value)
    new_b.value = np.zeros(3, "float32")            # storage is the loaded copy's own
    np.testing.assert_array_equal(b.value, np.array([0.1, -0.2, 0.3], "float32"))


def test_gradient_graph_keeps_grad_of_tags(tmp_path):
    x, y, W, b, loss, _ = mlp()
    gW, gb = gc.grad(loss, [W, b])
    before = gc.Graph([gW, gb])
    assert "[grad of" in str(before)
    gc.save(before, tmp_path / "grad")
    after = gc.load(tmp_path / "grad")
    assert isinstance(after, gc.Graph)
    assert str(after) == str(before)
    tagged = 0
    for old, new in zip(before.nodes, after.nodes):
        assert (old.grad_of is None) == (new.grad_of is None)
        if old.grad_of is not None:
            tagged += 1
            assert new.grad_of.label() == old.grad_of.label()
            assert new.grad_of.op == old.grad_of.op
            assert new.grad_of.shape == old.grad_of.shape
    assert tagged > 5
    outside = [n for n in before.nodes if n.grad_of is not None
               and all(n.grad_of is not m for m in before.nodes)]
    assert outside, "some gradient nodes point to forward nodes outside the graph"
    feeds = feeds_for(x, y)
    new_feeds = {by_name(after, "x"): feeds[x], by_name(after, "y"): feeds[y]}
    for w, h in zip(gc.ir.evaluate([gW, gb], feeds), gc.ir.evaluate(after.outputs, new_feeds)):
        np.testing.assert_allclose(h, w, rtol=1e-6)


def test_updates_round_trip(tmp_path):
    x, y, W, b, loss, _ = mlp()
    gW = gc.grad(loss, W)
    gc.save(loss, tmp_path / "step", updates=[(W, W - 0.1 * gW)])
    after = gc.load(tmp_path / "step")
    assert isinstance(after, gc.Graph)
    (var, new), = after.updates
    assert var.op == "variable" and var.name == "W" and var is not W
    feeds = feeds_for(x, y)
    want = (W - 0.1 * gW).eval(feeds)
    new_feeds = {by_name(after, "x"): feeds[x], by_name(after, "y"): feeds[y]}
    np.testing.assert_allclose(new.eval(new_feeds), want, rtol=1e-6)


def test_update_listing_is_the_same(tmp_path):
    *_, W, b, loss, _ = mlp()
    graph = gc.Graph([loss], [(b, b * 0.5)])
    gc.save(graph, tmp_path / "g")
    assert str(gc.load(tmp_path / "g")) == str(graph)


def test_files_are_json_and_npz_without_leftovers(tmp_path):
    *_, loss, extra = mlp()
    written = gc.save(extra, tmp_path / "m")
    assert written == str(tmp_path / "m.json")
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.npz"]
    doc = json.loads((tmp_path / "m.json").read_text())
    assert (doc["format"], doc["version"], doc["form"]) == ("graphc-graph", 2, "node")
    npz_bytes = (tmp_path / "m.npz").read_bytes()
    assert doc["arrays"]["sha256"] == hashlib.sha256(npz_bytes).hexdigest()
    assert doc["sha256"] == document_digest(doc)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:
        keys = sorted(npz.files)
    leaves = [f"n{i}" for i, r in enumerate(doc["nodes"]) if r["op"] in ("variable", "constant")]
    assert keys == sorted(leaves)
    gc.save(extra, tmp_path / "m")                    # overwriting leaves no temp files either
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.npz"]
    assert file_paths("a/b") == ("a/b.json", "a/b.npz") == file_paths("a/b.json")


def test_save_rejects_non_nodes_unsavable_attrs_and_missing_folders(tmp_path):
    with pytest.raises(gc.GraphcError, match="must be graph nodes"):
        gc.save([np.zeros(3)], tmp_path / "bad")
    x = gc.placeholder((3,), name="x")
    odd = gc.ir.apply("broadcast_to", x, shape=np.array([2, 3]))   # an array as attribute
    with pytest.raises(gc.GraphcError, match="attribute shape=.* is a ndarray"):
        gc.save(odd, tmp_path / "bad")
    with pytest.raises(gc.GraphcError, match="cannot write"):
        gc.save(x, tmp_path / "no" / "such" / "folder")
    assert os.listdir(tmp_path) == []


def test_attribute_values_survive_the_json_codec():
    x = gc.placeholder((2,), name="x")
    values = [None, True, 3, -2.5, "float32", (0, 2), (1, (2, None), "s"), ()]
    for v in values:
        back = decode_attr(json.loads(json.dumps(encode_attr(v, x, "k"))), "k", 0)
        assert back == v and type(back) is type(v)
    assert decode_attr(encode_attr(np.int64(3), x, "k"), "k", 0) == 3
    assert decode_attr(encode_attr(np.dtype("float32"), x, "k"), "k", 0) == np.dtype("float32")
    assert decode_attr(encode_attr([1, 2], x, "k"), "k", 0) == (1, 2)   # lists come back tuples


# every op of the op-table tests survives a round trip (with its gradient graph) -----------

def op_rows():
    rows = []
    for family in ("test_ops_elementwise", "test_ops_reduce_shape", "test_ops_nn",
                   "test_ops_fused"):
        try:
            rows += importlib.import_module(f"tests.{family}").ROWS
        except ModuleNotFoundError:   # a family still being written
            pass
    return rows


@pytest.mark.parametrize("row", op_rows(), ids=lambda r: r.name)
def test_every_op_row_round_trips(row, tmp_path):
    leaves = leaves_for(row.inputs)
    outputs = [row.build(*leaves)]
    floats = [x for x in leaves if x.dtype.kind == "f"]
    if row.grad and floats and outputs[0].dtype.kind == "f":
        outputs += gc.grad(gc.sum(outputs[0]), floats)
    before = gc.Graph(outputs)
    gc.save(before, tmp_path / "op")
    after = gc.load(tmp_path / "op")
    assert str(after) == str(before)
    assert_same_nodes(after.nodes, before.nodes)
    if any(gc.ir.OPS[n.op].random for n in before.nodes if n.op in gc.ir.OPS):
        return                        # random masks differ per run; the listing is enough
    new_leaves = [by_name(after, x.name) for x in leaves]
    want = gc.ir.evaluate(before.outputs, dict(zip(leaves, row.inputs)))
    have = gc.ir.evaluate(after.outputs, dict(zip(new_leaves, row.inputs)))
    for w, h in zip(want, have):
        np.testing.assert_array_equal(h, w)


# damaged and hostile files ------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """A saved graph and a function that rewrites its JSON document."""
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, "float32"), name="w")
    out = gc.sum(gc.tanh(x * w) + 1.0, axis=1)
    gc.save(out, tmp_path / "g")
    path = tmp_path / "g.json"

    def edit(change):
        doc = json.loads(path.read_text())
        change(doc)
        write_signed(path, doc)
    return path, edit


def load_fails(path, match):
    with pytest.raises(gc.GraphcError, match=match):
        gc.load(path)


def test_good_file_loads(saved):
    path, _ = saved
    got = gc.load(path)
    x = by_name(gc.Graph([got]), "x")
    np.testing.assert_allclose(got.eval({x: np.zeros((2, 3), "float32")}), [3.0, 3.0])


def test_truncated_json(saved):
    path, _ = saved
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    load_fails(path, "not valid JSON")


def test_garbage_bytes(saved):
    path, _ = saved
    path.write_bytes(bytes(range(256)) * 4)
    load_fails(path, "not a graphc graph file")


def test_deeply_nested_json(saved):
    path, _ = saved
    path.write_text("[" * 100_000 + "]" * 100_000)
    load_fails(path, "not a graphc graph file")


def test_missing_file(tmp_path):
    load_fails(tmp_path / "nothing", "cannot read graph file")


def test_wrong_format_and_version(saved):
    path, edit = saved
    edit(lambda d: d.update(version=99))
    load_fails(path, "version 99 is not supported")
    edit(lambda d: d.update(version=1, format="onnx"))
    load_fails(path, "not a graphc graph file")


def test_unknown_op(saved):
    path, edit = saved
    edit(lambda d: d["nodes"][-1].update(op="os.system"))
    load_fails(path, "unknown op 'os.system'")


def test_input_index_out_of_range_or_forward(saved):
    path, edit = saved
    edit(lambda d: d["nodes"][-1].update(inputs=[999]))
    load_fails(path, "input 999 is not the index of an earlier node")
    edit(lambda d: d["nodes"][-1].update(inputs=[len(d["nodes"]) - 1]))
    load_fails(path, "not the index of an earlier node")
    edit(lambda d: d["nodes"][-1].update(inputs=["0"]))
    load_fails(path, "input '0' is not")


def test_attr_not_allowed(saved):
    path, edit = saved
    add = next(i for i, r in enumerate(json.loads(path.read_text())["nodes"])
               if r["op"] == "add")
    edit(lambda d: d["nodes"][add]["attrs"].update(out=[1]))      # a ufunc keyword
    load_fails(path, "op add takes no attribute 'out'")
    edit(lambda d: d["nodes"][add].update(attrs={}))
    edit(lambda d: d["nodes"][-1]["attrs"].update(axis={"__class__": "os.system"}))
    load_fails(path, "a dict is not an allowed value")
    edit(lambda d: d["nodes"][-1]["attrs"].update(axis="everything"))
    load_fails(path, "rejects its attributes")
    edit(lambda d: d["nodes"][-1]["attrs"].update(axis=[1], _where="x"))
    load_fails(path, "takes no attribute '_where'")


def test_declared_shape_or_dtype_wrong(saved):
    path, edit = saved
    edit(lambda d: d["nodes"][-1].update(shape=[None, 3]))
    load_fails(path, r"declares \[None, 3\] float32 but the shape rule gives \[None\]")
    edit(lambda d: d["nodes"][-1].update(shape=[None], dtype="object"))
    load_fails(path, "unsupported dtype 'object'")


def test_grad_of_cycle_and_bad_update(saved):
    path, edit = saved

    def cycle(d):
        d["nodes"][0]["grad_of"] = 1
        d["nodes"][1]["grad_of"] = 0
    edit(cycle)
    load_fails(path, "cycle")
    edit(lambda d: [r.update(grad_of=None) for r in d["nodes"]] and d.update(updates=[[0, 0]]))
    load_fails(path, "does not pair a variable")


def test_missing_npz(saved):
    path, _ = saved
    os.remove(path.with_suffix(".npz"))
    load_fails(path, "the arrays file .* is missing")


def test_npz_missing_array_or_wrong_shape(saved):
    path, _ = saved
    with np.load(path.with_suffix(".npz")) as npz:
        arrays = dict(npz)
    np.savez(path.with_suffix(".npz"), other=np.ones(3, "float32"))
    resign(path)
    load_fails(path, "no array 'n1' in the arrays file")
    key = next(f"n{i}" for i, r in enumerate(json.loads(path.read_text())["nodes"])
               if r["op"] == "variable")
    np.savez(path.with_suffix(".npz"), **{**arrays, key: np.ones(4, "float32")})
    resign(path)
    load_fails(path, r"array 'n1' has shape \[4\], expected \[3\]")
    np.savez(path.with_suffix(".npz"), **{**arrays, key: np.ones(3, "float64")})
    resign(path)
    load_fails(path, "float64")


class Trap:
    """Unpickling this would create the marker file: proof that loading runs no code."""
    marker = ""

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_npz_with_pickled_objects_runs_nothing(saved, tmp_path):
    path, _ = saved
    key = next(f"n{i}" for i, r in enumerate(json.loads(path.read_text())["nodes"])
               if r["op"] == "variable")
    trap = Trap()
    trap.marker = str(tmp_path / "pwned")
    arr = np.empty(3, dtype=object)
    arr[:] = [trap, 1, "a"]
    np.savez(path.with_suffix(".npz"), **{key: arr})     # np.savez pickles object arrays
    resign(path)
    load_fails(path, "pickled objects are refused")
    assert not (tmp_path / "pwned").exists()


def test_npz_garbage_or_a_bare_pickle(saved, tmp_path):
    path, _ = saved
    path.with_suffix(".npz").write_bytes(b"PK\x03\x04" + os.urandom(64))
    resign(path)
    load_fails(path, "not a valid arrays file")
    trap = Trap()
    trap.marker = str(tmp_path / "pwned")
    path.with_suffix(".npz").write_bytes(pickle.dumps(trap))
    resign(path)
    load_fails(path, "not a valid arrays file")
    assert not (tmp_path / "pwned").exists()


def test_npz_array_bigger_than_declared(saved):
    path, _ = saved
    with np.load(path.with_suffix(".npz")) as npz:
        arrays = dict(npz)
    key = next(f"n{i}" for i, r in enumerate(json.loads(path.read_text())["nodes"])
               if r["op"] == "variable")
    np.savez(path.with_suffix(".npz"), **{**arrays, key: np.zeros(100_000, "float32")})
    resign(path)
    load_fails(path, f"node %1 \\(variable\\): array '{key}' .* is larger than its declared")


@pytest.mark.parametrize("change", [
    lambda d: d.update(nodes={"a": 1}),
    lambda d: d.update(outputs=[7.5]),
    lambda d: d.update(outputs=[10**9]),
    lambda d: d.update(form="pickle"),
    lambda d: d.update(updates=[[0]]),
    lambda d: d["nodes"].__setitem__(0, "placeholder"),
    lambda d: d["nodes"][0].pop("shape"),
    lambda d: d["nodes"][0].update(shape=[True, 3]),
    lambda d: d["nodes"][0].update(shape=[-1, 3]),
    lambda d: d["nodes"][0].update(name=["x"]),
    lambda d: d["nodes"][0].update(scope="abc"),
    lambda d: d["nodes"][0].update(grad_of=-1),
    lambda d: d["nodes"][0].update(attrs={"k": 1}),
    lambda d: d["nodes"][0].update(inputs=[0]),
    lambda d: d["nodes"][-1]["attrs"].update(axis=[[[[[[[[[[1]]]]]]]]]]),
])
def test_malformed_fields(saved, change):
    path, edit = saved
    edit(change)
    load_fails(path, ".")


# fuzzing: whatever the file holds, load returns a graph or raises GraphcError -------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False)
    | st.sampled_from(["add", "sum", "float32", "x", "axis", "object", "os.system"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["op", "inputs", "attrs", "shape", "dtype", "axis", "__class__"]),
        inner, max_size=3),
    max_leaves=8)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, "float32"), name="w")
    out = gc.reshape(gc.sum(gc.where(gc.greater(x, 0.0), x * w, 1.0), axis=(1,)), (-1, 1))
    gc.save(out, folder / "g")
    return folder / "g.json", json.loads((folder / "g.json").read_text())


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.data())
def test_fuzzed_documents_load_or_raise_graphc_error(fuzz_file, data):
    path, original = fuzz_file
    doc = json.loads(json.dumps(original))
    for _ in range(data.draw(st.integers(1, 3))):
        node = data.draw(st.sampled_from(doc["nodes"]))
        key = data.draw(st.sampled_from(sorted(node)))
        node[key] = data.draw(json_values)
    write_signed(path, doc)
    try:
        gc.load(path)
    except gc.GraphcError:
        pass


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=4))
def test_corrupted_bytes_load_or_raise_graphc_error(fuzz_file, pos, junk):
    path, original = fuzz_file
    text = json.dumps(original).encode()
    pos %= len(text)
    path.write_bytes(text[:pos] + junk + text[pos + len(junk):])
    try:
        gc.load(path)
    except gc.GraphcError:
        pass


# optimized graphs: fused bodies and dense nodes -----------------------------------------

def training_step():
    """gc.function of one SGD step of a 4-8-3 MLP; its optimized graph has fused and dense."""
    rng = np.random.default_rng(2)
    x = gc.placeholder((None, 4), "float32", "x")
    y = gc.placeholder((None,), "int64", "y")
    params = [gc.variable(rng.normal(size=(4, 8)).astype("float32"), name="W1"),
              gc.variable(np.full(8, 0.1, "float32"), name="b1"),
              gc.variable(rng.normal(size=(8, 3)).astype("float32"), name="W2"),
              gc.variable(np.zeros(3, "float32"), name="b2")]
    W1, b1, W2, b2 = params
    loss = gc.mean(gc.softmax_cross_entropy(gc.relu(x @ W1 + b1) @ W2 + b2, y))
    grads = gc.grad(loss, params)
    step = gc.function([x, y], loss, updates=[(p, p - 0.1 * g) for p, g in zip(params, grads)])
    feeds = {x: rng.normal(size=(6, 4)).astype("float32"), y: np.arange(6) % 3}
    return step.graph, feeds


def test_optimized_training_step_round_trips(tmp_path):
    graph, feeds = training_step()
    ops = [n.op for n in graph.nodes]
    assert "fused" in ops and "dense" in ops
    gc.save(graph, tmp_path / "step")
    before, after = graph, gc.load(tmp_path / "step")
    assert str(after) == str(before)
    assert_same_nodes(after.nodes, before.nodes)
    inner_tags = [b for n in before.nodes if n.op == "fused"
                  for b in n.attrs["body"].nodes if b.grad_of is not None]
    assert inner_tags, "the relu gradient's body holds gradient nodes"
    roots = lambda g: list(g.outputs) + [u for _, u in g.updates]      # noqa: E731
    want = gc.ir.evaluate(roots(before), feeds)
    have = gc.ir.evaluate(roots(after), {by_name(after, p.name): v for p, v in feeds.items()})
    assert len(have) == 5
    for w, h in zip(want, have):
        np.testing.assert_array_equal(h, w)
    with np.load(tmp_path / "step.npz", allow_pickle=False) as npz:
        inner = [k for k in npz.files if ".body." in k]
        assert inner and all(npz[k].shape == () for k in inner)   # the inlined 0.1 and 0.0
    x, y = by_name(after, "x"), by_name(after, "y")       # and the loaded graph compiles
    run = gc.function([x, y], after.outputs[0], updates=list(after.updates), optimize=False)
    np.testing.assert_array_equal(run(*feeds.values()), want[0])
    np.testing.assert_array_equal(by_name(after, "W1").value, want[1])


def small_fused():
    """x -> fused(x, w) with body tanh(in0 * in1) + [1, 2, 3] (an array constant inside)."""
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.array([0.5, -1.0, 2.0], "float32"), name="w")
    ins = [Node("placeholder", (), {}, s, np.float32, f"in{i}")
           for i, s in enumerate([(None, 3), (3,)])]
    body = Body(ins, gc.tanh(ins[0] * ins[1]) + gc.constant(np.arange(1, 4, dtype="float32")))
    return x, w, apply("fused", x, w, body=body, _name="f")


def test_fused_body_constants_are_arrays_of_their_own(tmp_path):
    x, w, f = small_fused()
    gc.save(f, tmp_path / "f")
    with np.load(tmp_path / "f.npz", allow_pickle=False) as npz:
        keys = sorted(npz.files)
        body_key = next(k for k in keys if ".body." in k)
        np.testing.assert_array_equal(npz[body_key], [1, 2, 3])
    assert len(keys) == 2                     # w and the body's constant
    got = gc.load(tmp_path / "f")
    assert got.attrs["body"] is not f.attrs["body"] and str(got) == str(f)
    value = np.array([[0.0, 1.0, -1.0]], "float32")
    np.testing.assert_array_equal(got.eval({by_name(gc.Graph([got]), "x"): value}),
                                  f.eval({x: value}))


@pytest.fixture
def saved_fused(tmp_path):
    """A saved fused node, its body's JSON and a function that rewrites that body."""
    *_, f = small_fused()
    gc.save(f, tmp_path / "f")
    path = tmp_path / "f.json"
    top = next(i for i, r in enumerate(json.loads(path.read_text())["nodes"])
               if r["op"] == "fused")

    def edit(change):
        doc = json.loads(path.read_text())
        change(doc["nodes"][top]["attrs"]["body"]["graph"], doc)
        write_signed(path, doc)
    return path, edit, top


def test_body_errors_name_the_inner_node(saved_fused):
    path, edit, top = saved_fused
    edit(lambda b, d: b["nodes"][-1].update(op="eval"))
    load_fails(path, rf"node %{top} body %\d+ \(eval\): unknown op 'eval'")


@pytest.mark.parametrize("change, match", [
    (lambda b, d: b.update(inputs=[b["inputs"][0]]), "one for each of the node's 2 inputs"),
    (lambda b, d: b.update(inputs=[b["inputs"][0]] * 2), "must be its placeholders"),
    (lambda b, d: b.update(output=99), "99 is not a node index"),
    (lambda b, d: b.update(output="0"), "field 'output' must be an integer"),
    (lambda b, d: b.pop("nodes"), "field 'nodes' must be a list"),
    (lambda b, d: [r.update(shape=[1]) for r in b["nodes"]
                   if r["name"] == "in1"], "body input 1 is .* the node gives"),
    (lambda b, d: [r.update(dtype="float64") for r in b["nodes"]
                   if r["name"] == "in0"], "do not match|shape rule gives"),
    (lambda b, d: b["nodes"][-1].update(grad_of=len(d["nodes"]) - 1), "cycle"),
    (lambda b, d: b["nodes"][-1].update(grad_of=10**6), "grad_of: 1000000 is not"),
    (lambda b, d: b["nodes"][-1]["attrs"].update(body=[1]), "takes no attribute 'body'"),
])
def test_malformed_bodies(saved_fused, change, match):
    path, edit, _ = saved_fused
    edit(change)
    load_fails(path, match)


def test_body_attribute_must_be_a_graph_on_a_fused_node_only(saved_fused):
    path, _, top = saved_fused
    original = json.loads(path.read_text())
    for bad in ([1, 2], {"graph": [1]}, {"graph": {}, "code": "print(1)"}, "graph", {}):
        doc = json.loads(json.dumps(original))
        doc["nodes"][top]["attrs"]["body"] = bad
        write_signed(path, doc)
        load_fails(path, r"attribute 'body': (must be a graph|field 'nodes')")
    doc = json.loads(json.dumps(original))     # a body on another op: an unknown attribute
    x = next(i for i, r in enumerate(doc["nodes"]) if r["name"] == "x")
    doc["nodes"][top].update(op="tanh", inputs=[x])
    write_signed(path, doc)
    load_fails(path, "op tanh takes no attribute 'body'")


def nest(depth: int) -> dict:
    """A body whose one op is a fused node with a body of its own, `depth` levels down."""
    ph = {"op": "placeholder", "inputs": [], "attrs": {}, "shape": [3], "dtype": "float32",
          "name": "in0", "scope": [], "where": "f.py:1", "grad_of": None}
    op = {**ph, "op": "tanh", "inputs": [0], "name": None}
    if depth:
        op.update(op="fused", attrs={"body": nest(depth - 1)})
    return {"graph": {"inputs": [0], "output": 1, "nodes": [ph, op]}}


def test_nesting_is_bounded(tmp_path):
    for depth, match in ((3, None), (40, "nest deeper than 4 levels")):
        doc = {"format": "graphc-graph", "version": 2, "form": "node", "outputs": [1],
               "updates": [], "nodes": [nest(0)["graph"]["nodes"][0],
                                        {**nest(depth)["graph"]["nodes"][1]}]}
        write_signed(tmp_path / "n.json", doc)
        if match:
            load_fails(tmp_path / "n.json", match)
            continue
        got = gc.load(tmp_path / "n")     # no arrays: the .npz is never opened
        value = np.array([0.5, -1.0, 2.0], "float32")
        ph = gc.Graph([got]).placeholders[0]
        np.testing.assert_allclose(got.eval({ph: value}), np.tanh(value), rtol=1e-6)


def test_body_array_missing_or_pickled(saved_fused, tmp_path):
    path, _, top = saved_fused
    npz_path = path.with_suffix(".npz")
    with np.load(npz_path) as npz:
        arrays = dict(npz)
    key = next(k for k in arrays if ".body." in k)
    np.savez(npz_path, **{k: v for k, v in arrays.items() if k != key})
    resign(path)
    load_fails(path, rf"node %{top} body %\d+ \(constant\): no array '{key}'")
    np.savez(npz_path, **{**arrays, key: np.zeros(100_000, "float32")})
    resign(path)
    load_fails(path, "is larger than its declared shape")
    trap = Trap()
    trap.marker = str(tmp_path / "pwned")
    np.savez(npz_path, **{**arrays, key: np.array([trap, 1, 2], dtype=object)})
    resign(path)
    load_fails(path, "pickled objects are refused")
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def fuzz_fused_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz_fused")
    *_, f = small_fused()
    gc.save(f, folder / "f")
    return folder / "f.json", json.loads((folder / "f.json").read_text())


def all_records(records: list) -> list[dict]:
    """The records and those of every body inside them."""
    out = []
    for r in records if isinstance(records, list) else []:
        if not isinstance(r, dict):
            continue
        out.append(r)
        body = r["attrs"].get("body") if isinstance(r.get("attrs"), dict) else None
        if isinstance(body, dict) and isinstance(body.get("graph"), dict):
            out += [body["graph"]] + all_records(body["graph"].get("nodes"))
    return out


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.data())
def test_fuzzed_bodies_load_or_raise_graphc_error(fuzz_fused_file, data):
    path, original = fuzz_fused_file
    doc = json.loads(json.dumps(original))
    for _ in range(data.draw(st.integers(1, 3))):
        record = data.draw(st.sampled_from(all_records(doc["nodes"])))
        key = data.draw(st.sampled_from(sorted(record)))
        record[key] = data.draw(json_values)
    write_signed(path, doc)
    try:
        gc.load(path)
    except gc.GraphcError:
        pass
