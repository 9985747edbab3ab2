"""examples/tour.ipynb runs top to bottom in a real kernel and every object shows a rich form;
without any renderer a notebook gets a one-time hint, not an error."""
from __future__ import annotations

import os

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed")
nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed")
pytest.importorskip("ipykernel", reason="ipykernel is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(nb, folder, monkeypatch):
    """Execute in `folder`, graphc imported from this checkout."""
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def outputs(cell, kind: str) -> list:
    return [o for o in cell.outputs if kind in o.get("data", {})]


def test_tour_notebook_runs_and_shows_rich_forms(tmp_path, monkeypatch):
    from graphc.renderer import pure_executable
    import shutil
    if shutil.which("dot") is None and pure_executable() is None:
        pytest.skip("no layout program (graphviz `dot` or graphviz-pure)")
    nb = nbformat.read(os.path.join(ROOT, "examples", "tour.ipynb"), as_version=4)
    cells = run(nb, tmp_path, monkeypatch)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    by_source = {c.source.splitlines()[0]: c for c in cells}
    first = lambda start: next(c for s, c in by_source.items() if s.startswith(start))  # noqa
    for start in ("import numpy", "gW, gb", "gc.render", "step = gc.function"):
        svg = outputs(first(start), "image/svg+xml")
        assert svg and "<svg" in svg[0]["data"]["image/svg+xml"], start
    explain = first("gc.explain")
    assert outputs(explain, "text/latex") or outputs(explain, "text/markdown")
    plain = outputs(explain, "text/plain")[0]["data"]["text/plain"]
    assert "dL/dW = " in plain and "\\n" not in plain and not plain.startswith("'")
    assert outputs(first("gc.formula"), "text/latex")
    profile = outputs(first("step.profile"), "text/html")[0]["data"]["text/html"]
    assert profile.startswith("<table>") and "<th>step</th>" in profile
    link = outputs(first("gc.inspect"), "text/html")[0]["data"]["text/html"]
    assert "tour.html" in link and (tmp_path / "tour.html").stat().st_size > 10_000
    assert (tmp_path / "tour_graph.svg").read_text().lstrip().startswith("<?xml")


def test_without_a_renderer_a_notebook_gets_one_hint_not_an_error(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import os\nos.environ['PATH'] = ''\nimport numpy as np, graphc as gc\n"
        "import graphc.renderer\ngraphc.renderer.PURE = 'no-such-graphviz-pure'\n"
        "x = gc.placeholder((None, 2), name='x')\nloss = gc.sum(gc.tanh(x))")]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in
                 ("loss", "gc.render(loss)", "gc.Graph([loss])", "print('still running')")]
    cells = run(nb, tmp_path, monkeypatch)
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    text = [o.get("text", "") for c in cells for o in c.outputs if o.output_type == "stream"]
    assert sum(t.count("pip install graphviz-pure") for t in text) == 1
    assert any("still running" in t for t in text)
    assert all(outputs(c, "text/plain") for c in cells[1:4])
    assert not [o for c in cells for o in outputs(c, "image/svg+xml")]
