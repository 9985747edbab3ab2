/* graphc inspector: shows the pictures and node facts that graphc/inspect.py put in the page.
   No request leaves the page: everything it needs is in #graphc-data. */
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("graphc-data").textContent);
  var views = DATA.views, nodes = DATA.nodes;
  var state = { view: 1, mode: null, scope: null, selected: null };
  var panZoom = null;
  var $ = function (id) { return document.getElementById(id); };

  function esc(text) {
    return String(text).replace(/[&<>"]/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c];
    });
  }

  function has(view, key) { return view.svgs[key] !== undefined; }

  function viewIndex(key) {
    for (var i = 0; i < views.length; i++) { if (views[i].key === key) { return i; } }
    return -1;
  }

  function pictureKey(view) {
    if (state.scope !== null && has(view, "scope:" + state.scope)) { return "scope:" + state.scope; }
    state.scope = null;
    if (has(view, state.mode)) { return state.mode; }
    state.mode = view.mode;
    return view.mode;
  }

  function show(i, mode, scope) {
    var view = views[i];
    state.view = i;
    state.mode = mode || view.mode;
    state.scope = scope === undefined ? null : scope;
    var key = pictureKey(view);
    if (panZoom) { panZoom.destroy(); panZoom = null; }
    $("canvas").innerHTML = DATA.pictures[view.svgs[key]];
    var svg = $("canvas").querySelector("svg");
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    var changed = {};
    view.changed.forEach(function (d) { changed[d] = true; });
    svg.querySelectorAll("g.node").forEach(function (g) {
      var t = g.querySelector("title");
      if (t && changed[t.textContent]) { g.classList.add("changed"); }
    });
    panZoom = svgPanZoom(svg, { zoomScaleSensitivity: 0.3, minZoom: 0.02, maxZoom: 50,
                                fit: true, center: true, dblClickZoomEnabled: false });
    toolbar(view, key);
    header(view);
    if (state.selected !== null) { selectNode(state.selected, false); }
  }

  function toolbar(view, key) {
    var toggle = $("toggle");
    toggle.style.display = "none";
    if (key === "full" && has(view, "collapsed")) {
      toggle.textContent = "collapse scopes"; toggle.style.display = "";
      toggle.onclick = function () { show(state.view, "collapsed"); };
    } else if (key === "collapsed" && has(view, "full")) {
      toggle.textContent = "expand scopes"; toggle.style.display = "";
      toggle.onclick = function () { show(state.view, "full"); };
    }
    var crumbs = $("crumbs");
    crumbs.innerHTML = "";
    if (state.scope !== null) {
      var up = document.createElement("a");
      up.textContent = "all scopes";
      up.onclick = function () { show(state.view, "collapsed"); };
      crumbs.appendChild(up);
      crumbs.appendChild(document.createTextNode(" / " + state.scope + " "));
    }
    $("count").textContent = view.nodes + " nodes" +
      (key === "collapsed" ? ", scopes collapsed" : "");
  }

  function header(view) {
    document.querySelectorAll("#views button").forEach(function (b) {
      b.classList.toggle("active", Number(b.dataset.view) === state.view);
    });
    $("slider").value = Math.max(0, state.view - 1);
    $("stage-title").textContent = view.title;
    var info = view.info, text = "";
    if (info && info.pass) {
      var rules = Object.keys(info.rules).map(function (r) { return r + " x" + info.rules[r]; });
      text = info.pass + ": " + info.before + " -> " + info.after + " nodes, " + info.new +
        " new, " + info.removed + " removed, " + info.ms + " ms; rules: " +
        (rules.length ? rules.join(", ") : "none");
    } else if (state.view === 0) {
      text = "the forward graph as built";
    } else {
      text = "as built: forward, gradient and update nodes";
    }
    $("changes").textContent = text;
  }

  function findDrawn(view, index) {
    for (var d in view.drawn) { if (view.drawn[d][0] === index && d.charAt(0) !== "x") { return d; } }
    return null;
  }

  function nodeElement(drawnId) {
    var found = null;
    $("canvas").querySelectorAll("g.node").forEach(function (g) {
      var t = g.querySelector("title");
      if (t && t.textContent === drawnId) { found = g; }
    });
    return found;
  }

  function centerOn(el) {
    var box = el.getBoundingClientRect(), area = $("canvas").getBoundingClientRect();
    panZoom.panBy({ x: area.left + area.width / 2 - (box.left + box.width / 2),
                    y: area.top + area.height / 2 - (box.top + box.height / 2) });
  }

  function selectNode(index, center) {
    var view = views[state.view];
    state.selected = index;
    $("canvas").querySelectorAll("g.node.selected").forEach(function (g) {
      g.classList.remove("selected");
    });
    var drawnId = findDrawn(view, index), el = drawnId && nodeElement(drawnId);
    if (el) { el.classList.add("selected"); if (center) { centerOn(el); } }
    panel(index, drawnId ? view.drawn[drawnId][1] : "", drawnId ? view.drawn[drawnId][2] : undefined);
  }

  function row(term, html) { return "<dt>" + term + "</dt><dd>" + html + "</dd>"; }

  function panel(index, num, group) {
    var n = nodes[index], view = views[state.view], out = [];
    var owner = group === undefined ? null : nodes[group];
    out.push("<h2 id='panel-title'>" + esc((num ? num + " " : "") + n.op) +
             (n.name ? " " + esc("'" + n.name + "'") : "") + "</h2><dl>");
    out.push(row("op", "<span id='panel-op'>" + esc(n.op) + "</span>"));
    out.push(row("shape", "<span id='panel-shape'>" + esc(n.shape) + "</span>"));
    out.push(row("dtype", "<span id='panel-dtype'>" + esc(n.dtype) + "</span>"));
    out.push(row("scope", "<span id='panel-scope'>" + esc(n.scope || "(none)") + "</span>"));
    out.push(row("built at", "<span id='panel-where'>" + esc(n.where) + "</span>"));
    var attrs = Object.keys(n.attrs).filter(function (k) { return k !== "body"; });
    if (attrs.length) {
      out.push(row("attributes", esc(attrs.map(function (k) { return k + "=" + n.attrs[k]; })
        .join(", "))));
    }
    if (n.grad_of !== undefined) {
      var f = nodes[n.grad_of];
      out.push(row("gradient of", "<a id='panel-forward' data-index='" + n.grad_of + "'>" +
        esc(f.op + (f.name ? " '" + f.name + "'" : "")) + " at " + esc(f.where) + "</a>"));
    }
    if (owner) {
      out.push(row("inside", "<span id='panel-group'>" + esc(owner.op) + " " +
        esc(owner.line ? (owner.line[view.linekey] || "").split(" = ")[0] : "") + "</span>"));
    }
    out.push("</dl>");
    var line = n.line && (n.line[view.linekey] || n.line[view.key]);
    if (line) { out.push("<h2>listing</h2><pre id='panel-listing'>" + esc(line) + "</pre>"); }
    if (n.formula) {
      out.push("<h2>formula" + (n.formula.whole ? "" : " (this step)") + "</h2>" +
        "<div id='panel-formula'>" + (n.formula.mathml || "<pre>" + esc(n.formula.text) +
        "</pre>") + "</div>");
    }
    var coded = n.code !== undefined ? n : owner;
    if (coded && coded.code !== undefined) {
      out.push("<h2>generated code, line " + coded.code_line + (coded === n ? "" :
        " (the whole " + esc(coded.op) + " step)") + "</h2><pre id='panel-code'>" +
        esc(coded.code) + "</pre>");
    } else {
      out.push("<p class='hint'>no step of its own in the generated code" +
        " (fused, folded or optimized away)</p>");
    }
    $("panel").innerHTML = out.join("");
    var link = $("panel-forward");
    if (link) { link.onclick = function () { goToForward(Number(link.dataset.index)); }; }
  }

  function goToForward(index) {
    if (findDrawn(views[state.view], index) === null) {
      var built = viewIndex("built");
      var view = views[built];
      var d = findDrawn(view, index), mode = has(view, "full") ? "full" : "collapsed";
      show(built, mode);
      if (d === null) { panel(index, ""); state.selected = index; return; }
    }
    selectNode(index, true);
  }

  function clicked(event) {
    var g = event.target.closest ? event.target.closest("g.node") : null;
    if (!g) { return; }
    var title = g.querySelector("title").textContent, view = views[state.view];
    if (view.boxes[title]) {
      var scope = view.boxes[title].scope;
      if (has(view, "scope:" + scope)) { show(state.view, state.mode, scope); }
      else if (has(view, "full")) { show(state.view, "full"); }
      else {
        $("count").textContent = "this stage is drawn collapsed only: open scopes in the " +
          "forward, backward or optimized view";
      }
      return;
    }
    if (view.drawn[title]) { selectNode(view.drawn[title][0], false); }
  }

  function init() {
    var nav = $("views");
    [["forward", 0], ["backward", 1], ["optimized", views.length - 1]].forEach(function (v) {
      if (v[1] === 1 && views.length < 2) { return; }
      var b = document.createElement("button");
      b.type = "button"; b.textContent = v[0]; b.dataset.view = v[1];
      b.id = "view-" + v[0];
      b.onclick = function () { show(v[1]); };
      nav.appendChild(b);
    });
    var slider = $("slider");
    slider.max = String(views.length - 2);
    slider.oninput = function () { show(1 + Number(slider.value)); };
    $("fit").onclick = function () { if (panZoom) { panZoom.resize(); panZoom.fit(); panZoom.center(); } };
    $("canvas").addEventListener("click", clicked);
    show(views.length > 1 ? 1 : 0);
    window.graphcInspector = { state: state, show: show, select: selectNode, views: views,
                               nodes: nodes, ready: true };
  }

  init();
}());
