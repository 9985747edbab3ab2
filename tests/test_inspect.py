"""The inspector page: its data (stages, node facts, pictures) and, in a real headless
Chromium, clicks on nodes, the panel, the pass slider, scopes, and no request or error."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.formula import formula
from graphc.inspect import BIG, inspect
from graphc.ir import Graph
from graphc.renderer import pure_executable
from graphc.symbolic import text

pytestmark = pytest.mark.skipif(shutil.which("dot") is None and pure_executable() is None,
                                reason="no layout program (graphviz `dot` or graphviz-pure)")


def mlp_step(optimizer="adam"):
    model = nn.Sequential([nn.Dense(16, "relu"), nn.Dense(8, "relu"), nn.Dense(3)], seed=0)
    x = gc.placeholder((None, 6), "float32", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    loss = gc.mean(nn.softmax_cross_entropy(model(x), y))
    opt = nn.Adam(1e-3) if optimizer == "adam" else nn.SGD(0.1)
    return gc.function([x, y], loss, updates=opt.updates(loss, model.params))


def deep(blocks: int, width: int = 4) -> Graph:
    """A residual stack with two name scopes per block, its gradients and SGD updates."""
    rng = np.random.default_rng(0)
    x = gc.placeholder((None, width), name="x")
    y = gc.placeholder((None,), dtype="int64", name="y")
    h, params = x, []
    for k in range(blocks):
        with gc.name_scope(f"block{k}"):
            with gc.name_scope("dense"):
                W = gc.variable(rng.normal(size=(width, width)).astype(np.float32), name="W")
                b = gc.variable(np.zeros(width, np.float32), name="b")
                a = gc.tanh(h @ W + b)
            with gc.name_scope("mix"):
                h = (a - gc.mean(a, axis=1, keepdims=True)) * gc.sigmoid(a) + h
        params += [W, b]
    loss = gc.mean(gc.softmax_cross_entropy(h, y))
    grads = gc.grad(loss, params)
    return Graph([loss], [(p, p - 0.1 * g) for p, g in zip(params, grads)])


def page_data(path) -> dict:
    page = open(path, encoding="utf-8").read()
    raw = re.search(r'<script type="application/json" id="graphc-data">(.*?)</script>', page,
                    re.S).group(1)
    return json.loads(raw)


@pytest.fixture(scope="module")
def mlp_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "mlp.html"
    fn = mlp_step()
    inspect(fn, path)
    return fn, path


def test_page_is_self_contained(mlp_page):
    _, path = mlp_page
    page = open(path, encoding="utf-8").read()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"<(script|img|link|iframe)[^>]*\s(src|href)=", page)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", page)
    urls = set(re.findall(r"https?://[^\s\"'<>)]+", page))
    namespaces = {u for u in urls if u.startswith("http://www.w3.org/")}
    assert urls - namespaces <= {"https://github.com/bumbu/svg-pan-zoom"}   # licence comment


def test_stages_follow_the_pass_pipeline_with_what_each_pass_did(mlp_page):
    fn, path = mlp_page
    data = page_data(path)
    keys = [v["key"] for v in data["views"]]
    assert keys[:2] == ["forward", "built"] and keys[-1].startswith("pass")
    _, report = gc.optimize(fn.original, report=True)
    infos = [v["info"] for v in data["views"][2:]]
    assert [(i["pass"], i["before"], i["after"]) for i in infos] == \
        [(name, before, after) for name, before, after, _ in report.passes]
    fired = {}
    for i in infos:
        for rule, n in i["rules"].items():
            fired[rule] = fired.get(rule, 0) + n
    assert fired == dict(report.rules)
    assert any(i["new"] and i["removed"] for i in infos)          # fusion replaced nodes
    assert data["views"][-1]["title"].endswith("optimized")


def test_every_drawn_node_has_its_facts_and_gradients_point_to_their_forward_node(mlp_page):
    fn, path = mlp_page
    data = page_data(path)
    nodes = data["nodes"]
    built = next(v for v in data["views"] if v["key"] == "built")
    for drawn, (index, num, *_) in built["drawn"].items():
        n = nodes[index]
        line = n["line"]["built"]
        assert line.startswith(f"{num} = {n['op']}(") and n["shape"] in line
    grads = [n for n in nodes if "grad_of" in n]
    assert grads and all(nodes[n["grad_of"]]["op"] for n in grads)


def test_optimized_nodes_show_their_generated_code_line(mlp_page):
    fn, path = mlp_page
    data = page_data(path)
    last = data["views"][-1]
    lines = fn.source.split("\n")
    with_code = [data["nodes"][i] for i, *_ in last["drawn"].values()
                 if "code" in data["nodes"][i]]
    assert len(with_code) >= 10
    for n in with_code:
        comment = lines[n["code_line"] - 2].strip()              # the listing line above it
        assert comment.startswith("# %") and f"= {n['op']}(" in comment


def test_formulas_are_mathml_and_agree_with_gc_formula(tmp_path):
    x = gc.placeholder((), name="x")
    y = gc.placeholder((), name="y")
    w = gc.variable(np.float32(0.5), name="w")
    b = gc.variable(np.float32(0.0), name="b")
    p = gc.sigmoid(w * x + b)
    loss = -(y * gc.log(p) + (1 - y) * gc.log(1 - p))
    gw, gb = gc.grad(loss, [w, b])
    inspect(Graph([loss, gw, gb]), tmp_path / "lr.html")
    data = page_data(tmp_path / "lr.html")
    facts = [n for n in data["nodes"] if n.get("formula") and n["formula"]["whole"]]
    texts = {n["formula"]["text"] for n in facts}
    assert text(formula(gw)) in texts and text(formula(gb)) in texts
    assert all(n["formula"]["mathml"].startswith("<math") for n in facts)


@pytest.fixture(scope="module")
def deep_page(tmp_path_factory):
    path = tmp_path_factory.mktemp("inspect") / "deep.html"
    graph = deep(24)
    inspect(graph, path)
    return graph, path


def test_a_big_graph_starts_collapsed_with_one_picture_per_scope(deep_page):
    graph, path = deep_page
    assert len(graph) > BIG
    data = page_data(path)
    built = next(v for v in data["views"] if v["key"] == "built")
    assert built["mode"] == "collapsed" and "full" not in built["svgs"]
    scopes = {k for k in built["svgs"] if k.startswith("scope:")}
    assert scopes == {f"scope:block{k}" for k in range(24)}
    assert {b["scope"] for b in built["boxes"].values()} >= {"block0", "block23"}
    picture = data["pictures"][built["svgs"]["scope:block3"]]
    assert "block3" in picture and "block7" not in picture


def test_cli_inspect_writes_the_page(tmp_path):
    graph = deep(2)
    gc.save(graph, tmp_path / "g")
    out = subprocess.run([sys.executable, "-m", "graphc.cli", "inspect", "g.json", "-o",
                          "page.html"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    assert "page.html" in out.stdout
    assert page_data(tmp_path / "page.html")["views"][1]["nodes"] == len(graph)


# in a real browser --------------------------------------------------------------------

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,900")


def chromium_paths():
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    return browser, shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary, driver_path = chromium_paths()
    if binary is None or driver_path is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get install "
                    "chromium chromium-driver); the browser tests need them")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="graphc-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.binary_location = binary
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path):
    driver.get_log("performance")
    driver.get_log("browser")                                  # start with empty logs
    driver.get("file://" + os.path.abspath(path))
    assert driver.execute_script("return window.graphcInspector.ready") is True


def requests_and_errors(driver, path):
    """URLs the page asked for besides itself, and console messages of level SEVERE."""
    own = "file://" + os.path.abspath(path)
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            url = params["request"]["url"]
            # the page's own requests, and anything at all to the network (the browser's
            # start page asks for chrome:// resources, which are not the page's)
            if params.get("documentURL") == own or not url.startswith(("chrome", "devtools")):
                urls.append(url)
    others = [u for u in urls if u != own and not u.startswith("data:")]
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return others, errors


def click(driver, element):
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(driver).move_to_element(element).click().perform()


def drawn_node(driver, predicate: str):
    """The first `g.node` on screen whose node facts satisfy a JS predicate on `n`."""
    return driver.execute_script("""
        const I = window.graphcInspector, view = I.views[I.state.view];
        for (const g of document.querySelectorAll('#canvas g.node')) {
            const d = view.drawn[g.querySelector('title').textContent];
            if (!d) continue;
            const n = I.nodes[d[0]], group = d[2] === undefined ? null : I.nodes[d[2]];
            if (%s) return g;
        }
        return null;""" % predicate)


def test_browser_click_shows_the_node_in_the_panel(browser, mlp_page):
    fn, path = mlp_page
    open_page(browser, path)
    browser.find_element("id", "view-optimized").click()
    g = drawn_node(browser, "n.op === 'matmul' && group && group.op === 'dense'")
    assert g is not None
    click(browser, g)
    panel = browser.find_element("id", "panel")
    assert browser.find_element("id", "panel-op").text == "matmul"
    assert browser.find_element("id", "panel-group").text.startswith("dense %")
    assert browser.find_element("id", "panel-shape").text.startswith("(")
    assert "xp.matmul" in browser.find_element("id", "panel-code").text
    assert re.match(r"%\d+\.\d+ = matmul\(", browser.find_element("id", "panel-listing").text)
    assert ".py:" in browser.find_element("id", "panel-where").text
    assert "selected" in g.get_attribute("class")
    assert panel.find_elements("css selector", "#panel-formula math, #panel-formula pre")
    others, errors = requests_and_errors(browser, path)
    assert others == [] and errors == []


def test_browser_gradient_node_links_to_its_forward_node(browser, mlp_page):
    fn, path = mlp_page
    open_page(browser, path)
    g = drawn_node(browser, "n.grad_of !== undefined && n.op === 'matmul'")
    click(browser, g)
    forward = browser.execute_script(
        "const I = window.graphcInspector; return I.nodes[I.state.selected].grad_of")
    browser.find_element("id", "panel-forward").click()
    assert browser.execute_script("return window.graphcInspector.state.selected") == forward
    assert "gradient of" not in browser.find_element("id", "panel").text
    selected = browser.find_elements("css selector", "#canvas g.node.selected")
    assert len(selected) == 1
    others, errors = requests_and_errors(browser, path)
    assert others == [] and errors == []


def test_browser_slider_steps_through_the_passes(browser, mlp_page):
    fn, path = mlp_page
    open_page(browser, path)
    data = page_data(path)
    slider = browser.find_element("id", "slider")
    seen = []
    for k in range(len(data["views"]) - 1):
        browser.execute_script("arguments[0].value = arguments[1];"
                               "arguments[0].dispatchEvent(new Event('input'))", slider, k)
        seen.append((browser.find_element("id", "stage-title").text,
                     browser.find_element("id", "changes").text,
                     len(browser.find_elements("css selector", "#canvas g.node.changed"))))
    assert [s[0] for s in seen] == [v["title"] for v in data["views"][1:]]
    fusion = [s for s in seen if "fuse_elementwise" in s[0]]
    assert fusion and "fuse_elementwise" in fusion[0][1] and fusion[0][2] > 0
    assert seen[0][2] == 0                                    # as built: nothing changed
    others, errors = requests_and_errors(browser, path)
    assert others == [] and errors == []


def test_browser_scopes_collapse_and_open(browser, deep_page):
    _, path = deep_page
    open_page(browser, path)
    assert "scopes collapsed" in browser.find_element("id", "count").text
    box = browser.execute_script("""
        const I = window.graphcInspector, view = I.views[I.state.view];
        for (const g of document.querySelectorAll('#canvas g.node'))
            if ((view.boxes[g.querySelector('title').textContent] || {}).scope === 'block5')
                return g;""")
    click(browser, box)
    assert browser.execute_script("return window.graphcInspector.state.scope") == "block5"
    assert "block5" in browser.find_element("id", "crumbs").text
    g = drawn_node(browser, "n.scope.startsWith('block5') && n.op === 'tanh'")
    click(browser, g)
    assert browser.find_element("id", "panel-scope").text == "block5/dense"
    browser.find_element("css selector", "#crumbs a").click()
    assert browser.execute_script("return window.graphcInspector.state.scope") is None
    others, errors = requests_and_errors(browser, path)
    assert others == [] and errors == []


def test_cli_inspect_reads_an_onnx_model(tmp_path):
    pytest.importorskip("graphc.onnx", reason="graphc.onnx (the ONNX importer) is not here")
    onnx = pytest.importorskip("onnx", reason="the onnx package is not installed")
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((3, 2), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], [w])
    onnx.save(helper.make_model(graph), tmp_path / "tiny.onnx")
    out = subprocess.run([sys.executable, "-m", "graphc.cli", "inspect", "tiny.onnx"],
                         cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    ops = {n["op"] for n in page_data(tmp_path / "tiny.html")["nodes"]}
    assert {"matmul", "relu"} <= ops
