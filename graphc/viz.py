"""Graphviz pictures of graphs: forward, backward and update nodes, fused groups, layer boxes.

`render` draws a graph (nodes, a Graph or a compiled Function) as a `graphviz.Digraph`; the
picture is deterministic: node ids follow the listing's `%i` numbering of the stable order.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from graphc.autodiff import grad
from graphc.ir import OPS, Graph, GraphcError, Node, as_graph, format_node, format_shape, \
    toposort, user_line
from graphc.renderer import (INSTALL_HINT, MissingRenderer, hint_once, load_graphviz,  # noqa
                             mimebundle, new_digraph, pipe, write)
from graphc.viz_style import (BORDER, FILL, LEAF_SHAPE, SAVED_EDGE, UPDATE_EDGE,  # noqa: F401
                              body_input, draw_legend, fused_body, has_body, is_scalar_constant,
                              loop_label, node_label, node_tooltip)

FUSED = "fused:"                   # marks a fused node's cluster among scope names
# the most boxes one picture draws: graphviz's layout grows faster than the graph (3,000 boxes
# ~3 s, 75,000 more than 11 minutes); a bigger drawing is refused with the ways to shrink it
MAX_BOXES = 5000


@dataclass
class Options:
    backward: bool = True
    legend: bool = True
    scopes: bool = True                 # draw name scopes as clusters
    collapse: object = None             # None, True, depth (int), or scope prefixes
    inline_scalars: bool = True         # scalar constants written into their user's label
    rankdir: str = "TB"
    only: frozenset | None = None       # ids of the nodes to draw; inputs from outside are
    tooltips: bool = True               # drawn as small dashed stand-ins


# what to draw -----------------------------------------------------------------------------

def before_graph(obj) -> Graph | None:
    """The graph as built (before optimization); None for a Function that did not keep it."""
    for attr in ("original", "unoptimized", "source_graph"):
        g = getattr(obj, attr, None)
        if isinstance(g, Graph):
            return g
    if isinstance(getattr(obj, "graph", None), Graph):
        return None
    return as_graph(obj, "render")


def optimized_graph(graph: Graph) -> Graph:
    try:
        from graphc.passes import optimize
    except ImportError:
        print("graphc.render: graphc.passes.optimize is not available yet; drawing the graph "
              "as built", file=sys.stderr)
        return graph
    return optimize(graph)


def tagged(n: Node) -> bool:
    """A gradient node: tagged itself, or a fused group with tagged ops inside (fusion keeps
    only the last member's tag on the group)."""
    if n.grad_of is not None:
        return True
    body = n.attrs.get("body") if n.op == "fused" else None
    return isinstance(body, Graph) and any(b.grad_of is not None for b in body.nodes)


def kinds(graph: Graph) -> dict[int, str]:
    """id(node) -> 'forward' | 'gradient' | 'update'.

    Gradient nodes carry grad_of; update nodes compute only new values of variables. An
    untagged node outside the outputs' graph that feeds gradient nodes counts as gradient.
    """
    kind = {id(n): "gradient" if tagged(n) else "forward" for n in graph.nodes}
    reached = {id(n) for n in toposort(graph.outputs)}
    users = graph.users()
    new_values = {id(u) for _, u in graph.updates}
    for n in reversed(graph.nodes):
        if id(n) in reached or n.grad_of is not None or not n.inputs:
            continue
        if id(n) in new_values:
            kind[id(n)] = "update"         # a fused group may end a gradient in the update
        elif tagged(n):
            continue
        elif all(kind[id(u)] == "update" for u in users[id(n)]):
            kind[id(n)] = "update"
        else:
            kind[id(n)] = "gradient"
    return kind


def analyse(graph: Graph) -> tuple[dict[int, str], dict[int, tuple]]:
    """The kind of every node, and for update nodes the scope of the variable they update
    (computed once per graph: drawing one graph many times reuses it)."""
    kind = kinds(graph)
    update_scope: dict[int, tuple] = {}
    for var, new in graph.updates:
        stack, seen = [new], set()
        while stack:                       # only through update nodes: linear, not n x updates
            n = stack.pop()
            if id(n) in seen or kind[id(n)] != "update":
                continue
            seen.add(id(n))
            update_scope.setdefault(id(n), var.scope)
            stack.extend(n.inputs)
    return kind, update_scope


def home_scope(n: Node, kind: dict, update_scope: dict) -> tuple:
    """The scope a node is boxed in: gradients in their forward node's, updates in their
    variable's."""
    return {"gradient": n.grad_of.scope if n.grad_of is not None else (),
            "update": update_scope.get(id(n), ())}.get(kind[id(n)], n.scope)


# drawing ----------------------------------------------------------------------------------

class Drawer:
    """Draws one graph into a Digraph (or a cluster of one), node ids prefixed by `prefix`."""

    def __init__(self, dot, graph: Graph, opts: Options, prefix: str = "",
                 analysis: tuple | None = None):
        self.dot, self.graph, self.opts, self.prefix = dot, graph, opts, prefix
        self.num = {id(n): f"%{i}" for i, n in enumerate(graph.nodes)}
        self.kind, self.update_scope = analysis or analyse(graph)
        self.clusters: dict[tuple, list] = {}     # cluster path -> [(method, args, kwargs)]
        self.edges: list[tuple] = []
        self.ids: dict[int, str] = {}              # id(node) -> drawn id (node, box or body)
        self.body_kind: dict[str, str] = {}        # drawn id of an op inside a fused node -> kind
        self.fused: set[int] = set()               # fused nodes drawn as clusters
        self.drawn: dict[str, Node] = {}           # drawn id -> the node (or body op) it shows
        self.boxes: dict[str, tuple] = {}          # drawn id of a collapsed box -> (kind, scope)
        self.owner: dict[str, tuple] = {}          # body op's drawn id -> (fused, body names)

    def cluster(self, path: tuple):
        for k in range(len(path)):                # every enclosing scope is drawn too
            self.clusters.setdefault(path[:k], [])
        return self.clusters.setdefault(path, [])

    def visible(self) -> list[Node]:
        out = []
        for n in self.graph.nodes:
            if not self.opts.backward and self.kind[id(n)] != "forward":
                continue
            if self.opts.inline_scalars and is_scalar_constant(n) and not n.name:
                continue
            if self.opts.only is not None and id(n) not in self.opts.only:
                continue
            out.append(n)
        return out

    def box_of(self, n: Node) -> tuple | None:
        """The collapsed scope box `n` falls in, as (kind, scope prefix), or None."""
        c = self.opts.collapse
        if not c:
            return None
        kind = self.kind[id(n)]
        scope = home_scope(n, self.kind, self.update_scope)
        if not scope:
            return None
        if c is True:
            prefix = scope[:1]
        elif isinstance(c, int):
            prefix = scope[:c]
        else:
            wanted = [tuple(p.split("/")) if isinstance(p, str) else tuple(p)
                      for p in ([c] if isinstance(c, str) else c)]
            prefix = next((p for p in wanted if scope[:len(p)] == p), None)
        return (kind, prefix) if prefix else None

    def draw(self):
        nodes = self.visible()
        boxes: dict[tuple, list[Node]] = {}
        for n in nodes:
            box = self.box_of(n)
            if box is not None:
                boxes.setdefault(box, []).append(n)
                self.ids[id(n)] = self.prefix + "box_" + box[0] + "_" + "/".join(box[1])
                self.boxes[self.ids[id(n)]] = box
            elif not (has_body(n) and self.draw_fused(n)):
                self.draw_node(n)
        for (kind, scope), members in boxes.items():
            self.draw_box(kind, scope, members)
        if len(self.drawn) + len(self.boxes) > MAX_BOXES:
            raise GraphcError(
                f"picture of {len(self.drawn) + len(self.boxes):,} boxes: more than graphviz "
                f"lays out in reasonable time (graphc.viz.MAX_BOXES = {MAX_BOXES:,}); render "
                f"can fold name scopes (collapse=True or a depth; graphc render --collapse), "
                f"leave out the backward pass (backward=False; --forward) or draw fewer "
                f"outputs\n  at {user_line()}")
        for n in nodes:
            self.draw_inputs(n)
        self.draw_updates()
        self.flush()

    def node_attrs(self, n: Node) -> dict:
        kind = self.kind[id(n)]
        attrs = {"label": node_label(n, self.num, self.opts),
                 "tooltip": node_tooltip(n, self.num), "fillcolor": FILL[kind],
                 "color": BORDER[kind], "shape": LEAF_SHAPE.get(n.op, "box")}
        if n.op not in LEAF_SHAPE:
            attrs["style"] = "filled,rounded"
        if any(n is o for o in self.graph.outputs):
            attrs["penwidth"] = "2.5"
        return attrs

    def draw_node(self, n: Node):
        nid = self.prefix + f"n{self.num[id(n)][1:]}"
        self.ids[id(n)] = nid
        self.drawn[nid] = n
        path = n.scope if self.opts.scopes and self.kind[id(n)] == "forward" else ()
        self.cluster(path).append(("node", (nid,), self.node_attrs(n)))

    def draw_box(self, kind: str, scope: tuple, members: list[Node]):
        ops = sum(1 for m in members if m.inputs)
        name = {"gradient": "∂ ", "update": "update "}.get(kind, "") + "/".join(scope)
        leaves = len(members) - ops
        label = f"{name}\n{ops} ops" + (f", {leaves} leaves" if leaves else "") \
            + f"\n→ {format_shape(members[-1].shape)}"
        tip = "\n".join(format_node(m, self.num) for m in members)
        self.cluster(()).append(("node", (self.ids[id(members[0])],), {
            "label": label, "tooltip": tip, "shape": "box3d", "fillcolor": FILL[kind],
            "color": BORDER[kind]}))

    def draw_fused(self, n: Node) -> bool:
        """A fused node (or a loop) as a cluster of the ops inside it; edges go to the ops
        that read each input, and users read the body's output (a loop's users read its head
        node, which the body's outputs feed). False when it has no body to show."""
        nid = self.prefix + f"n{self.num[id(n)][1:]}"
        body = fused_body(n)
        if body is None or not body.outputs or not body.outputs[0].inputs:
            return False
        kind = self.kind[id(n)]
        inner: dict[int, str] = {}
        loop = n.op == "scan"
        title = f"{self.num[id(n)]} {n.op}" + (" (reverse)" if loop and n.attrs["reverse"]
                                                else "")
        items = [("attr", (), {"label": title, "style": "filled,dashed",
                               "fillcolor": "#f3f3f3", "color": "#674ea7",
                               "tooltip": node_tooltip(n, self.num)})]
        bnum = {id(b): f"{self.num[id(n)]}.{j}" for j, b in enumerate(body.nodes)}
        for b in body.nodes:
            if b.op == "placeholder" or (self.opts.inline_scalars and is_scalar_constant(b)):
                continue
            inner[id(b)] = f"{nid}_{bnum[id(b)].split('.')[1]}"
            bkind = "gradient" if b.grad_of is not None else kind   # tags survive in bodies
            attrs = {"label": node_label(b, bnum, self.opts), "shape": "box",
                     "style": "filled,rounded", "fillcolor": FILL[bkind],
                     "color": BORDER[bkind]}
            items.append(("node", (inner[id(b)],), attrs))
            self.drawn[inner[id(b)]] = b
            self.owner[inner[id(b)]] = (n, bnum)
            self.body_kind[inner[id(b)]] = bkind
            for i in b.inputs:
                if i.op == "placeholder":
                    k = body_input(body, i)
                    self.edges.append((("outer", n.inputs[k]), inner[id(b)], {}))
                elif id(i) in inner:
                    self.edges.append((inner[id(i)], inner[id(b)], {}))
        if loop:                  # the head: one step's results, carried or stacked
            items.append(("node", (nid,), {**self.node_attrs(n), "shape": "cds",
                                           "label": loop_label(n, self.num)}))
            self.drawn[nid] = n
            for k, o in enumerate(body.outputs):
                if id(o) in inner:
                    carry = k < n.attrs["carries"]
                    self.edges.append((inner[id(o)], nid, {
                        "style": "bold" if carry else "solid",
                        "tooltip": f"carry {k}" if carry else f"y {k - n.attrs['carries']}"}))
        path = n.scope if self.opts.scopes and kind == "forward" else ()
        self.cluster(path + (FUSED + nid,)).extend(items)
        self.ids[id(n)] = nid if loop else inner[id(body.outputs[0])]
        self.fused.add(id(n))
        return True

    def draw_inputs(self, n: Node):
        if id(n) in self.fused:
            return                                  # edges drawn with the body
        dst = self.ids[id(n)]
        for k, i in enumerate(n.inputs):
            shape_only = k in OPS[n.op].shape_only
            self.edges.append((("outer", i), dst, {"style": "dotted", "color": "#999999",
                                                   "tooltip": "reads only the shape"}
                               if shape_only else {}))

    def draw_updates(self):
        for var, new in self.graph.updates:
            if self.opts.backward and id(var) in self.ids and id(new) in self.ids:
                self.edges.append((self.ids[id(new)], self.ids[id(var)], {
                    "color": UPDATE_EDGE, "style": "bold", "constraint": "false",
                    "tooltip": f"update {self.num[id(var)]} {var.label()}"}))

    def edge_attrs(self, src: Node, dst_kind: str) -> dict:
        if self.kind[id(src)] == "forward" and dst_kind == "gradient":
            return {"color": SAVED_EDGE, "style": "dashed"}
        return {}

    def flush(self):
        kind_of_id = dict(self.body_kind)
        for n in self.graph.nodes:
            if id(n) in self.ids:
                kind_of_id.setdefault(self.ids[id(n)], self.kind[id(n)])
        seen = set()
        for src, dst, attrs in self.edges:
            if isinstance(src, tuple):
                node = src[1]
                if id(node) not in self.ids and self.opts.only is not None:
                    self.draw_ghost(node)
                if id(node) not in self.ids:
                    continue                        # inlined scalar or hidden backward node
                attrs = {**self.edge_attrs(node, kind_of_id.get(dst, "forward")), **attrs}
                src = self.ids[id(node)]
            if src == dst or (src, dst) in seen:
                continue
            seen.add((src, dst))
            if kind_of_id.get(src) == kind_of_id.get(dst) == "gradient":
                # the backward pass is laid out bottom-up, beside the forward values it
                # reads: saved-activation edges stay short instead of spanning every rank
                # (long edges made dot's layout quadratic in the depth of the model)
                src, dst, attrs = dst, src, {**attrs, "dir": "back"}
            self.cluster(()).append(("edge", (src, dst), attrs))
        self.emit(self.dot, ())

    def draw_ghost(self, n: Node):
        """A node from outside the drawn part (`only`), small and dashed."""
        if (self.opts.inline_scalars and is_scalar_constant(n)) or \
                (not self.opts.backward and self.kind[id(n)] != "forward"):
            return
        gid = self.prefix + f"x{self.num[id(n)][1:]}"
        self.ids[id(n)], self.drawn[gid] = gid, n
        self.cluster(()).append(("node", (gid,), {
            "label": f"{self.num[id(n)]} {n.name or n.op}", "shape": "box", "style": "dashed",
            "color": "#999999", "fontcolor": "#555555", "fontsize": "8",
            "tooltip": node_tooltip(n, self.num)}))

    def emit(self, target, path: tuple):
        for method, args, attrs in self.clusters.get(path, []):
            if not self.opts.tooltips:
                attrs = {k: v for k, v in attrs.items() if k != "tooltip"}
            if method == "attr":
                target.attr(**attrs)
            else:
                getattr(target, method)(*args, **attrs)
        for sub in sorted(k for k in self.clusters if len(k) == len(path) + 1
                          and k[:len(path)] == path):
            fused = sub[-1].startswith(FUSED)
            name = sub[-1][len(FUSED):] if fused else self.prefix + "scope_" + "/".join(sub)
            with target.subgraph(name="cluster_" + name) as c:
                if not fused:
                    c.attr(label=sub[-1], style="dashed", color="#999999", fontcolor="#555555")
                self.emit(c, sub)


# the public function ----------------------------------------------------------------------

def render(nodes_or_function, path: str | os.PathLike | None = None, backward: bool = True,
           optimized: bool = False, collapse=None, compare: bool = False, legend: bool = True,
           scopes: bool = True, inline_scalars: bool = True, rankdir: str = "TB"):
    """Draw the graph as a `graphviz.Digraph`; write `path` (svg/png/pdf/dot by suffix).

    A Function (or `optimized=True`) draws the optimized graph with fused nodes as clusters;
    `compare=True` draws the graph before and after optimization side by side; `collapse`
    folds name scopes into one box (True: top-level scopes, an int: scope depth, or prefixes).
    `scopes` draws name scopes as dashed clusters, `inline_scalars` writes scalar constants
    into their user's label (`mul(·, 0.1)`), `legend` adds the colour key.
    """
    opts = Options(backward, legend, scopes, collapse, inline_scalars, rankdir)
    dot = new_digraph(rankdir)
    is_function = not isinstance(nodes_or_function, (Node, Graph, list, tuple))
    before = before_graph(nodes_or_function) if compare else None
    if compare and before is None:
        print("graphc.render: this Function keeps only its optimized graph; draw the nodes "
              "instead (gc.render(outputs, compare=True)) to see them before optimization",
              file=sys.stderr)
    if before is not None:
        after = as_graph(nodes_or_function, "render") if is_function else optimized_graph(before)
        for tag, g, title in (("a_", before, "as built"), ("b_", after, "optimized")):
            with dot.subgraph(name=f"cluster_{tag}") as c:
                c.attr(label=f"{title} ({len(g)} nodes)", style="rounded", color="#666666")
                Drawer(c, g, opts, tag).draw()
    else:
        graph = as_graph(nodes_or_function, "render")
        if backward and not is_function:
            graph = with_gradients(graph)
        if optimized and not is_function:
            graph = optimized_graph(graph)
        Drawer(dot, graph, opts).draw()
    if opts.legend:
        draw_legend(dot, backward)
    dot.written = write(dot, path) if path is not None else None   # the file really written
    dot._repr_mimebundle_ = lambda include=None, exclude=None, **_: mimebundle(dot)
    return dot


def with_gradients(graph: Graph) -> Graph:
    """A forward-only graph with a scalar output gets the gradients of that output with
    respect to its variables, so `render(loss, backward=True)` shows the backward pass."""
    if any(n.grad_of is not None for n in graph.nodes) or graph.updates:
        return graph
    cost = next((o for o in graph.outputs if o.shape == () and o.dtype.kind == "f"), None)
    variables = [v for v in graph.variables if v.dtype.kind == "f"]
    if cost is None or not variables:
        return graph
    return Graph(list(graph.outputs) + grad(cost, variables))


def repr_svg(obj) -> str | None:
    """SVG text for Jupyter's `_repr_svg_`; without a renderer None (Jupyter shows the text
    form) and a hint, once per session, instead of an error in the notebook."""
    try:
        return pipe(render(obj, legend=False).source, "svg").decode("utf-8")
    except MissingRenderer as e:
        hint_once(f"graphc: no picture ({e}); {INSTALL_HINT}")
        return None
