"""The inspector: one self-contained HTML page to look at a graph from every side.

Forward, backward and optimized graphs (and the graph after each pass of the pipeline) drawn
by graphviz, with pan and zoom; a click on a node shows its op, shape, scope, the user's line,
its listing line, its formula and the generated code that computes it. Big graphs start
collapsed by name scope and each scope has its own picture, so no layout is ever of the whole
big graph. Script, style and pictures are inline: the page makes no request when viewed.
"""
from __future__ import annotations

import html
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field

import sympy as sp

from graphc.ir import Graph, GraphcError, Node, format_node, format_shape
from graphc.renderer import INSTALL_HINT, MissingRenderer, write_file
from graphc.viz import (Drawer, Options, analyse, as_graph, home_scope, new_digraph, pipe,
                        with_gradients)

BIG = 300                 # nodes above which a view opens collapsed and is drawn per scope
FULL_FORMULA_NODES = 30   # full formula (in the leaves' names) up to this many ancestors
FULL_SECONDS = 3.0        # time for full formulas; after it, each node shows its own step
FORMULA_SECONDS = 10.0    # time for formulas at all (sympy takes ms per node); then none
STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


@dataclass
class Stage:
    """One picture the page can show: the graph after some pass (or as built)."""
    key: str
    title: str
    graph: Graph
    backward: bool = True
    info: dict = field(default_factory=dict)      # what the pass did
    per_scope: bool = True                        # big graphs: a picture of each scope


def inspect(obj, path: str | os.PathLike = "graph.html", title: str | None = None) -> str:
    """Write the inspector page for nodes, a Graph or a Function to `path`; returns the path."""
    started = time.perf_counter()
    stages, code = pipeline(obj)
    page = Page(stages, code)
    data = page.build()
    data["title"] = title or "graphc inspector"
    data["seconds"] = round(time.perf_counter() - started, 2)
    path = write_file(os.fspath(path), render_html(data).encode("utf-8"), "inspect")
    return PagePath(path)


class PagePath(str):
    """The written page's path; in Jupyter a link to open it."""

    def _repr_html_(self) -> str:
        size = os.path.getsize(self) / 1e6 if os.path.exists(self) else 0.0
        return (f'<a href="{html.escape(self)}" target="_blank">open the graphc inspector: '
                f"{html.escape(self)}</a> ({size:.1f} MB, works offline)")


# the stages: as built, after each pass --------------------------------------------------

def built_graph(obj) -> Graph:
    """The graph as the user built it (a Function keeps it as `original`); a lone scalar
    loss gets its gradients, as in `gc.render`."""
    if isinstance(getattr(obj, "original", None), Graph):
        return obj.original
    return with_gradients(as_graph(obj))


def pipeline(obj) -> tuple[list[Stage], dict[int, tuple[int, str]]]:
    """The stages to show and the generated code of the optimized graph's steps."""
    from graphc.passes import DEFAULT_PIPELINE
    from graphc.passes.rewrite import counting

    graph = built_graph(obj)
    passes = [] if getattr(obj, "report", True) is None else DEFAULT_PIPELINE
    stages = [Stage("forward", "forward", graph, backward=False),
              Stage("built", "as built (forward and backward)", graph)]
    for k, p in enumerate(passes):
        rules: Counter = Counter()
        start = time.perf_counter()
        with counting(rules):
            new = p(graph)
        before = {id(n) for n in graph.nodes}
        name = getattr(p, "__name__", repr(p))
        stages.append(Stage(f"pass{k}", f"{k + 1}. {name}", new, info={
            "pass": name, "before": len(graph.nodes), "after": len(new.nodes),
            "ms": round((time.perf_counter() - start) * 1e3, 1),
            "rules": dict(sorted(rules.items())),
            "new": sum(1 for n in new.nodes if id(n) not in before),
            "removed": len(before - {id(n) for n in new.nodes})}))
        graph = new
    for stage in stages[2:-1]:
        stage.per_scope = False          # passes between: collapsed only (size and time)
    stages[-1].title += " = optimized" if passes else ""
    return stages, generated_code(graph)


def generated_code(graph: Graph) -> dict[int, tuple[int, str]]:
    """id(node) -> (line, code) in the Function compiled from the optimized graph."""
    from graphc.runtime import function
    try:
        fn = function(graph.placeholders, list(graph.outputs), list(graph.updates),
                      optimize=False)
        lines = fn.source.split("\n")
        plan = fn.last_plan
    except GraphcError:            # a graph the runtime cannot lower: no code to show
        return {}
    return {id(n): (first + 1, "\n".join(lines[first:last])) for n, first, last in plan.steps}


# the page's data ---------------------------------------------------------------------

class Page:
    """Pictures and node facts of every stage, shared where stages share nodes."""

    def __init__(self, stages: list[Stage], code: dict[int, tuple[int, str]]):
        self.stages, self.code = stages, code
        self.nodes: list[dict] = []               # facts of each node, once
        self.index: dict[int, int] = {}            # id(node) -> place in self.nodes
        self.keep: list[Node] = []                 # keeps ids unique while we work
        self.sources: list[str] = []               # DOT sources, drawn in one run
        self.formula_time = 0.0
        self.numbering: dict[int, dict] = {}        # id(graph) -> listing names
        self.analysis: dict[int, tuple] = {}        # id(graph) -> (kinds, update scopes)

    def build(self) -> dict:
        views, previous = [], None
        for stage in self.stages:
            same = previous is not None and stage.backward and previous.backward and \
                [id(n) for n in previous.graph.nodes] == [id(n) for n in stage.graph.nodes]
            view = dict(views[-1]) if same else self.view(stage)
            view.update(key=stage.key, title=stage.title, info=stage.info,
                        changed=[] if same else view.get("changed", []))
            if previous is not None and stage.info and not same:
                old = {id(n) for n in previous.graph.nodes}
                view["changed"] = [d for d, entry in view["drawn"].items()
                                   if id(self.keep[entry[-1] if len(entry) > 2 else entry[0]])
                                   not in old]
            views.append(view)
            previous = stage
        for view in views:                      # stages that change nothing share pictures
            view["svgs"] = view.pop("pictures")
        return {"views": views, "nodes": self.nodes, "pictures": self.draw_all()}

    def view(self, stage: Stage) -> dict:
        graph = stage.graph
        num = self.numbers(graph)
        if id(graph) not in self.analysis:
            self.analysis[id(graph)] = analyse(graph)
        kind, update_scope = analysis = self.analysis[id(graph)]
        shown = [n for n in graph.nodes if stage.backward or kind[id(n)] == "forward"]
        home = {id(n): home_scope(n, kind, update_scope) for n in shown}
        scoped = any(home.values())
        big = len(shown) > BIG
        opts = Options(backward=stage.backward, legend=False, tooltips=False)
        view = {"drawn": {}, "boxes": {}, "pictures": {}, "mode": "full", "nodes": len(shown),
                "linekey": stage.key}
        if not big or not scoped:           # no scopes to fold: the whole graph it is
            view["pictures"]["full"] = self.picture(graph, opts, num, view, analysis)
        if scoped:
            view["pictures"]["collapsed"] = self.picture(
                graph, Options(**{**opts.__dict__, "collapse": True}), num, view, analysis)
            view["mode"] = "collapsed" if big else "full"
        if scoped and big and stage.per_scope:
            for scope in sorted({h[:1] for h in home.values()} - {()}):
                members = frozenset(i for i, h in home.items() if h[:1] == scope)
                key = "scope:" + "/".join(scope)
                view["pictures"][key] = self.picture(
                    graph, Options(**{**opts.__dict__, "only": members}), num, view, analysis)
        for n in graph.nodes:
            if id(n) in self.index:
                self.nodes[self.index[id(n)]].setdefault("line", {})[stage.key] = \
                    format_node(n, num)
        return view

    def picture(self, graph: Graph, opts: Options, num: dict, view: dict, analysis) -> int:
        dot = new_digraph()
        drawer = Drawer(dot, graph, opts, analysis=analysis)
        drawer.draw()
        for did, n in drawer.drawn.items():
            if did in drawer.owner:                 # an op inside a fused node's body
                group, names = drawer.owner[did]
                k = self.fact(n, graph)
                self.nodes[k].setdefault("line", {})[view["linekey"]] = format_node(n, names)
                view["drawn"].setdefault(did, [k, names[id(n)], self.fact(group, graph)])
            else:
                view["drawn"].setdefault(did, [self.fact(n, graph), num.get(id(n), "")])
        for did, (kind, scope) in drawer.boxes.items():
            view["boxes"][did] = {"kind": kind, "scope": "/".join(scope)}
        self.sources.append(dot.source)
        return len(self.sources) - 1

    def draw_all(self) -> list[str]:
        """Every picture of the page from one run of the layout program."""
        try:
            out = pipe("\n".join(self.sources), "svg").decode("utf-8")
        except MissingRenderer as e:
            raise GraphcError(f"inspect: {e}; {INSTALL_HINT}") from None
        svgs = [m.group(0) for m in re.finditer(r"<svg.*?</svg>", out, re.S)]
        if len(svgs) != len(self.sources):
            raise GraphcError(f"inspect: the layout program drew {len(svgs)} pictures of "
                              f"{len(self.sources)}")
        return [slim(s) for s in svgs]

    # node facts ------------------------------------------------------------------------
    def fact(self, n: Node, graph: Graph) -> int:
        if id(n) in self.index:
            return self.index[id(n)]
        entry = {"op": n.op, "name": n.name, "shape": format_shape(n.shape),
                 "dtype": n.dtype.name, "scope": "/".join(n.scope), "where": n.where,
                 "attrs": {k: short(v) for k, v in n.attrs.items()}}
        self.index[id(n)] = len(self.nodes)
        self.nodes.append(entry)
        self.keep.append(n)
        if n.grad_of is not None:
            entry["grad_of"] = self.fact(n.grad_of, graph)
        if id(n) in self.code:
            entry["code_line"], entry["code"] = self.code[id(n)]
        entry["formula"] = self.formula(n, graph)
        return self.index[id(n)]

    def numbers(self, graph: Graph) -> dict[int, str]:
        if id(graph) not in self.numbering:
            self.numbering[id(graph)] = {id(m): f"%{i}" for i, m in enumerate(graph.nodes)}
        return self.numbering[id(graph)]

    def formula(self, n: Node, graph: Graph) -> dict | None:
        """MathML of the full formula while it is small and time is left, else of the
        node's own step in its inputs' listing names."""
        from graphc.formula import formula, local_formula
        from graphc.symbolic import text
        if n.op in ("placeholder", "variable") or n.attrs.get("body") is not None:
            return None
        start = time.perf_counter()
        expr, whole, math = None, False, ""
        try:
            if self.formula_time > FORMULA_SECONDS:
                return None
            if self.formula_time < FULL_SECONDS and n.inputs and \
                    few_ancestors(n, FULL_FORMULA_NODES):
                expr, whole = formula(n), True
            elif n.inputs:
                names = self.numbers(graph)
                expr = local_formula(n, [names.get(id(i), "?") for i in n.inputs])
            else:
                expr = formula(n, simplify=False)
        except (GraphcError, TypeError, ValueError, AttributeError, NotImplementedError):
            expr = None
        if expr is not None:
            math = mathml(expr)
        self.formula_time += time.perf_counter() - start
        if expr is None:
            return None
        return {"mathml": math, "text": text(expr), "whole": whole}


def slim(svg: str) -> str:
    """The SVG without comments and the font family the page's style sets once."""
    svg = re.sub(r"<!--.*?-->\n?", "", svg, flags=re.S)
    return svg.replace(' font-family="Helvetica,sans-Serif"', "")


def few_ancestors(n: Node, limit: int) -> bool:
    """Whether n depends on at most `limit` nodes (stops looking past the limit)."""
    seen, stack = {id(n)}, [n]
    while stack:
        for i in stack.pop().inputs:
            if id(i) not in seen:
                seen.add(id(i))
                stack.append(i)
                if len(seen) > limit:
                    return False
    return True


def short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def mathml(expr) -> str:
    """Presentation MathML (browsers draw it with no script); '' where sympy cannot."""
    try:
        body = sp.mathml(expr, printer="presentation")
    except Exception:              # sympy's printer has no form for some matrix objects
        return ""
    return f'<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">{body}</math>'


# the page --------------------------------------------------------------------------------

def static(name: str) -> str:
    with open(os.path.join(STATIC, name), encoding="utf-8") as f:
        return f.read()


def render_html(data: dict) -> str:
    """The page: template with style, vendored svg-pan-zoom, our script and the data inline.
    In the JSON `</` is written `<\\/` and `<!--` `\\u003c!--`, so no string can end the script
    element or open a comment in it (a node named `<!--<script>` kept the element open past its
    end: no page); the slots are filled in one pass, so a title `{{data}}` stays text."""
    parts = {"title": html.escape(data["title"]), "style": static("inspector.css"),
             "panzoom": static("svg-pan-zoom.min.js"), "script": static("inspector.js"),
             "data": json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
             .replace("<!--", "\\u003c!--")}
    return re.sub(r"\{\{(title|style|panzoom|script|data)\}\}", lambda m: parts[m.group(1)],
                  static("inspector.html"))
