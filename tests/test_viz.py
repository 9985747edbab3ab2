"""Pictures: every node drawn, kinds told apart by colour, fused clusters, the no-`dot` fallback."""
from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import graphc as gc
from graphc import renderer
from graphc.ir import OPS, Graph, Node, apply
from graphc.viz import FILL, INSTALL_HINT, is_scalar_constant, repr_svg

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
SVG = "{http://www.w3.org/2000/svg}"


def mlp(updates: bool = False):
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, 4), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    params = []
    h = x
    for k, units in enumerate((8, 3)):
        with gc.name_scope(f"dense{k}"):
            W = gc.variable(rng.normal(size=(h.shape[1], units)).astype(np.float32), name="W")
            b = gc.variable(np.zeros(units, np.float32), name="b")
            h = h @ W + b
            h = gc.relu(h) if k == 0 else h
        params += [W, b]
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    grads = gc.grad(loss, params)
    if updates:
        return Graph([loss], [(p, p - 0.1 * g) for p, g in zip(params, grads)])
    return Graph([loss] + grads)


def svg_nodes(svg: bytes) -> dict[str, str]:
    """Drawn node id -> its fill colour, read from the SVG."""
    out = {}
    for g in ET.fromstring(svg).iter(SVG + "g"):
        if g.get("class") == "node":
            title = g.find(SVG + "title").text
            shapes = [e for e in g.iter() if e.tag in (SVG + "polygon", SVG + "path",
                                                       SVG + "ellipse")]
            if shapes:                          # the legend is a table without a shape
                out[title] = shapes[0].get("fill")
    return out


def drawn(graph: Graph) -> list[tuple[str, Node]]:
    return [(f"n{i}", n) for i, n in enumerate(graph.nodes) if not is_scalar_constant(n)]


@needs_dot
def test_mlp_svg_has_every_node_and_backward_nodes_in_their_colour(tmp_path):
    graph = mlp()
    path = tmp_path / "mlp.svg"
    gc.render(graph, path)
    fills = svg_nodes(path.read_bytes())
    for nid, n in drawn(graph):
        assert nid in fills, f"{nid} {n!r} missing from the SVG"
        want = FILL["gradient"] if n.grad_of is not None else FILL["forward"]
        assert fills[nid].lower() == want, (nid, n)
    assert FILL["gradient"] != FILL["forward"]
    assert any(n.grad_of is not None for _, n in drawn(graph))


def test_labels_show_op_name_shape_and_the_forward_node_of_a_gradient():
    graph = mlp()
    src = gc.render(graph).source
    num = {id(n): i for i, n in enumerate(graph.nodes)}
    matmul = next(n for n in graph.nodes if n.op == "matmul" and n.grad_of is None)
    assert f'n{num[id(matmul)]} [label="%{num[id(matmul)]} matmul\n(?, 8)"' in src
    assert 'label="W\n(4, 8)"' in src and "shape=cylinder" in src
    assert 'label="x\n(?, 4)"' in src and "shape=parallelogram" in src
    grad = next(n for n in graph.nodes if n.grad_of is not None and n.op == "matmul")
    assert f"∂ of %{num[id(grad.grad_of)]}" in src
    assert f"backward pass of %{num[id(grad.grad_of)]} {grad.grad_of.op}" in src


def test_saved_activations_are_dashed_edges_into_the_backward_pass():
    graph = mlp()
    src = gc.render(graph).source
    num = {id(n): i for i, n in enumerate(graph.nodes)}
    relu = next(n for n in graph.nodes if n.op == "relu")
    users = [u for u in graph.users()[id(relu)] if u.grad_of is not None]
    assert users
    for u in users:
        assert f'n{num[id(relu)]} -> n{num[id(u)]} [color="#c26a12" style=dashed]' in src


def test_backward_false_draws_only_forward_nodes():
    graph = mlp(updates=True)
    src = gc.render(graph, backward=False).source
    assert "∂ of" not in src and FILL["update"] not in src.split("legend")[0]
    for i, n in enumerate(graph.nodes):
        if n.grad_of is None and n.op == "matmul":
            assert f"\tn{i} [" in src


def test_updates_have_their_own_colour_and_an_edge_to_the_variable():
    graph = mlp(updates=True)
    src = gc.render(graph).source
    num = {id(n): i for i, n in enumerate(graph.nodes)}
    for var, new in graph.updates:
        assert f'n{num[id(new)]} -> n{num[id(var)]} [color="#38761d"' in src
        assert f'n{num[id(new)]} [label="%{num[id(new)]} sub' in src
    assert src.count(f'fillcolor="{FILL["update"]}"') >= 2 * len(graph.updates)


def test_scopes_are_clusters_and_collapse_into_boxes():
    graph = mlp(updates=True)
    src = gc.render(graph).source
    assert "subgraph cluster_scope_dense0" in src and "subgraph cluster_scope_dense1" in src
    small = gc.render(graph, collapse=True).source
    for box in ("box_forward_dense0", "box_gradient_dense0", "box_update_dense1"):
        assert f"\t{box} [" in small
    assert "matmul" not in small.split("box_forward_dense0 [")[0]   # no op drawn one by one
    assert small.count("\n\tn") < src.count("\n\tn") / 3
    only = gc.render(graph, collapse=["dense1"]).source
    assert "box_forward_dense1" in only and "box_forward_dense0" not in only


def fused_graph():
    """A hand-built fused node, as the passes make them: body over placeholders in0, in1."""
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, np.float32), name="w")
    in0 = Node("placeholder", (), {}, x.shape, x.dtype, "in0")
    in1 = Node("placeholder", (), {}, w.shape, w.dtype, "in1")
    body = Graph([apply("tanh", apply("mul", in0, in1)) + 1.0])
    fused = Node("fused", (x, w), {"body": body}, x.shape, x.dtype)
    out = Node("sum", (fused,), {"axis": (0, 1), "keepdims": False}, (), x.dtype)
    return Graph([out]), fused


def test_fused_node_is_a_cluster_showing_its_body_ops():
    graph, fused = fused_graph()
    src = gc.render(graph, backward=False).source
    k = graph.nodes.index(fused)
    assert f"subgraph cluster_n{k}" in src and f'label="%{k} fused"' in src
    for op in ("mul", "tanh", "add(·, 1)"):
        assert f"{op}\n" in src
    assert f"\tn0 -> n{k}_" in src or f"\tn1 -> n{k}_" in src      # inputs enter the body
    assert f" -> n{len(graph.nodes) - 1}\n" in src                 # users read the output


def test_dense_node_is_a_cluster_of_matmul_add_activation():
    x = gc.placeholder((None, 3), name="x")
    W = gc.variable(np.ones((2, 3), np.float32), name="W")
    b = gc.variable(np.ones(2, np.float32), name="b")
    dense = Node("dense", (x, W, b), {"activation": "relu", "transpose_a": False,
                                      "transpose_b": True}, (None, 2), x.dtype)
    src = gc.render(dense).source
    assert "subgraph cluster_n3" in src
    for op in ("transpose", "matmul", "add", "relu"):
        assert f" {op}\n" in src


@pytest.mark.skipif("fused" not in OPS and "dense" not in OPS,
                    reason="the passes do not make fused/dense nodes yet")
def test_compiled_function_draws_fused_clusters():
    x = gc.placeholder((None, 4), name="x")
    W = gc.variable(np.ones((4, 3), np.float32), name="W")
    b = gc.variable(np.ones(3, np.float32), name="b")
    out = gc.sum(gc.tanh(gc.exp(x @ W + b) * 2.0 + 1.0))
    fn = gc.function([x], out)
    kinds = {n.op for n in fn.graph.nodes}
    if not kinds & {"fused", "dense"}:
        pytest.skip("the default pipeline made no fused node for this graph")
    src = gc.render(fn).source
    assert "subgraph cluster_n" in src
    both = gc.render(fn, compare=True).source
    if isinstance(getattr(fn, "original", None), Graph):
        assert "cluster_a_" in both and "cluster_b_" in both and "optimized" in both
    else:                   # only the optimized graph is kept: drawn alone, with a note
        assert "cluster_a_" not in both and "subgraph cluster_n" in both


def test_compare_draws_before_and_after_side_by_side():
    graph = mlp()
    src = gc.render(graph, compare=True).source
    assert "subgraph cluster_a_" in src and "subgraph cluster_b_" in src
    assert f"as built ({len(graph)} nodes)" in src and "optimized (" in src
    assert "\ta_n0 [" in src and "\tb_n0 [" in src
    if hasattr(gc, "function") and ("fused" in OPS or "dense" in OPS):
        assert "subgraph cluster_b_n" in src          # fused nodes on the optimized side


def test_rendering_is_deterministic():
    assert gc.render(mlp(updates=True)).source == gc.render(mlp(updates=True)).source


@needs_dot
@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                          (".svg", b"<?xml")])
def test_format_from_suffix(tmp_path, suffix, magic):
    path = tmp_path / ("g" + suffix)
    gc.render(mlp(), path)
    assert path.read_bytes().startswith(magic)


def no_renderer(tmp_path, monkeypatch):
    """Neither `dot` nor graphviz-pure can be found."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(renderer, "PURE", "no-such-graphviz-pure")


def test_without_any_renderer_the_dot_source_is_written_with_a_hint(tmp_path, monkeypatch,
                                                                    capsys):
    no_renderer(tmp_path, monkeypatch)
    graph = mlp()
    with pytest.warns(UserWarning, match="apt-get install graphviz") as record:
        dot = gc.render(graph, tmp_path / "mlp.svg")
    assert not (tmp_path / "mlp.svg").exists()
    assert (tmp_path / "mlp.dot").read_text() == dot.source
    assert dot.written == str(tmp_path / "mlp.dot")       # what was really written
    assert len(record) == 1 and INSTALL_HINT in str(record[0].message)
    renderer.hint_once.cache_clear()
    assert repr_svg(graph) is None and repr_svg(graph) is None   # Jupyter shows the text
    assert capsys.readouterr().err.count("pip install graphviz-pure") == 1   # hint once


needs_pure = pytest.mark.skipif(renderer.pure_executable() is None,
                                reason="graphviz-pure is not installed")


def only_pure(tmp_path, monkeypatch):
    """PATH holds graphviz-pure but no `dot` (a machine with nothing but pip)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / renderer.PURE).symlink_to(renderer.pure_executable())
    monkeypatch.setenv("PATH", str(folder))


@needs_pure
@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml")])
def test_without_dot_graphviz_pure_draws_svg_and_png(tmp_path, monkeypatch, suffix, magic):
    only_pure(tmp_path, monkeypatch)
    path = tmp_path / ("g" + suffix)
    dot = gc.render(mlp(updates=True), path)
    assert dot.written == str(path) and path.read_bytes().startswith(magic)
    assert not (tmp_path / "g.dot").exists()
    if suffix == ".svg":
        assert set(svg_nodes(path.read_bytes())) >= {nid for nid, _ in drawn(mlp(True))}
        assert repr_svg(mlp()).lstrip().startswith("<?xml")


@needs_pure
def test_without_dot_a_pdf_is_dot_source_with_a_hint(tmp_path, monkeypatch):
    only_pure(tmp_path, monkeypatch)
    with pytest.warns(UserWarning, match="graphviz-pure has no pdf"):
        dot = gc.render(mlp(), tmp_path / "g.pdf")
    assert dot.written == str(tmp_path / "g.dot")


def test_legend_and_labels_use_only_glyphs_every_renderer_font_has():
    """graphviz-pure's fonts (Arimo, Tinos, Cousine) lack ▱, ⛁, ╌, ⊙: PNGs showed boxes."""
    known = set("·∂→")
    src = gc.render(mlp(updates=True), collapse=["dense1"]).source
    assert {c for c in src if ord(c) > 127} <= known


def test_fused_group_with_gradient_ops_is_drawn_as_gradient():
    """Fusion keeps only the last member's tag: a gradient chain fused with an untagged tail
    and read only by an update must still be drawn in the gradient colour."""
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, np.float32), name="w")
    loss = gc.sum(gc.tanh(x * w))
    in0 = Node("placeholder", (), {}, (None, 3), np.float32, "in0")
    with gc.ir.backward_of(loss):
        tagged = apply("mul", apply("neg", in0), 2.0)
    body = Graph([apply("sum", tagged, axis=0)])        # untagged last member
    fused = Node("fused", (x,), {"body": body}, (3,), np.float32)
    graph = Graph([loss], [(w, w - fused)])
    src = gc.render(graph).source
    k = graph.nodes.index(fused)
    body_lines = [line for line in src.split("\n") if line.startswith(f"\tn{k}_")]
    colours = {line.split("fillcolor=")[1].split()[0].strip('"') for line in src.split("\t")
               if line.startswith(f"n{k}_") and "fillcolor" in line}
    assert body_lines and colours == {FILL["gradient"]}
    assert gc.viz.kinds(graph)[id(fused)] == "gradient"


def test_backward_edges_are_laid_out_upwards_beside_the_forward_pass():
    """Gradient-to-gradient edges are reversed for layout (dir=back): the backward pass runs
    bottom-up next to the forward values it reads, so no saved-activation edge spans the
    whole depth (that made dot quadratic: a 60-block model never finished)."""
    graph = mlp(updates=True)
    src = gc.render(graph).source
    kind = gc.viz.kinds(graph)
    num = {f"n{i}": n for i, n in enumerate(graph.nodes)}
    for line in src.split("\n"):
        parts = line.strip().split(" ")
        if len(parts) >= 3 and parts[1] == "->" and parts[0] in num and parts[2] in num:
            a, b = kind[id(num[parts[0]])], kind[id(num[parts[2]])]
            assert ("dir=back" in line) == (a == b == "gradient"), line


def test_render_of_a_loss_alone_draws_its_backward_pass():
    x = gc.placeholder((None, 3), name="x")
    w = gc.variable(np.ones(3, np.float32), name="w")
    loss = gc.mean(gc.sigmoid(x @ w))
    forward_only = gc.render(loss, backward=False).source
    both = gc.render(loss).source
    assert "∂ of" not in forward_only and "∂ of" in both


def test_dot_suffix_writes_source_without_graphviz(tmp_path, monkeypatch):
    no_renderer(tmp_path, monkeypatch)
    dot = gc.render(mlp(), tmp_path / "g.gv")
    assert (tmp_path / "g.gv").read_text() == dot.source


@needs_dot
def test_repr_svg_for_jupyter():
    svg = repr_svg(mlp())
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


def test_visualize_example_writes_pictures_and_prints_formulas(tmp_path, capsys):
    import importlib.util
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location(
        "visualize", os.path.join(here, os.pardir, "examples", "visualize.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.main(["--out", str(tmp_path), "--format", "dot"])
    assert len(written) >= 5 and all(os.path.getsize(p) > 0 for p in written)
    out = capsys.readouterr().out
    assert "dL/dw = x*(-y + sigmoid(b + w*x))" in out
    assert "let z1 = b1 + x·W1" in out and "dW1 = xᵀ·" in out


def test_unknown_picture_format_is_a_clear_error(tmp_path):
    with pytest.raises(gc.GraphcError, match="unknown picture format 'xyz'"):
        gc.render(mlp(), tmp_path / "g.xyz")


def test_untagged_node_feeding_the_backward_pass_counts_as_gradient():
    from graphc.viz import kinds
    x = gc.placeholder((), name="x")
    W = gc.variable(np.float32(2.0), name="W")
    loss = x * W
    (gW,) = gc.grad(loss, [W])
    helper = gc.exp(x)                        # built outside backward_of, read by a gradient
    with gc.ir.backward_of(loss):
        g2 = gW * helper
    new = W - 0.1 * g2
    graph = Graph([loss], [(W, new)])
    kind = kinds(graph)
    assert kind[id(helper)] == "gradient" and kind[id(g2)] == "gradient"
    assert kind[id(new)] == "update" and kind[id(new.inputs[1])] == "update"
    assert kind[id(loss)] == "forward"


def test_optimized_true_draws_the_optimized_graph_of_nodes():
    passes = pytest.importorskip("graphc.passes")
    graph = mlp(updates=True)
    after = passes.optimize(graph)
    src = gc.render(graph, optimized=True).source
    assert len(after) < len(graph)
    assert src.count("[label=") < gc.render(graph).source.count("[label=")
    fused = [n for n in after.nodes if n.op in ("fused", "dense")]
    for n in fused:
        assert f"subgraph cluster_n{after.nodes.index(n)}" in src


def test_a_picture_too_big_for_graphviz_is_refused_at_once_with_the_ways_to_shrink_it(
        monkeypatch, tmp_path):
    """graphviz's layout grows faster than the graph (a 75,000-node chain ran `dot` for more
    than 11 minutes): past viz.MAX_BOXES the drawing stops before dot runs."""
    from graphc import viz
    monkeypatch.setattr(viz, "MAX_BOXES", 60)
    x = gc.placeholder((None, 4), name="x")
    h = x
    for i in range(6):
        with gc.name_scope(f"block{i}"):
            w = gc.variable(np.full(4, 0.5, np.float32), name="w")
            h = gc.tanh(h * w) + 0.5 * h
    loss = gc.mean(h * h)
    path = tmp_path / "big.svg"
    with pytest.raises(gc.GraphcError, match=r"picture of \d+ boxes: .*MAX_BOXES = 60.*"
                                             r"collapse=True.*backward=False") as e:
        gc.render(loss, path)
    assert "test_viz.py" in str(e.value) and not path.exists()
    drawn = gc.render(loss, collapse=True)      # six scope boxes and the rest
    assert drawn.source.count("block") >= 6
    assert gc.render(loss, backward=False).source.count("tanh") >= 6
