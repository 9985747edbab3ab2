"""Running a layout program: graphviz's `dot` when installed, else the graphviz-pure wheel's
program for svg and png, else the DOT source with a hint (pictures with nothing but pip).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings

from graphc.ir import GraphcError

INSTALL_HINT = ("pip install graphviz-pure (svg and png) or install graphviz's `dot` program "
                "to get pictures (apt-get install graphviz, brew install graphviz or conda "
                "install graphviz)")
PURE = "graphviz-pure"             # the graphviz-pure wheel's program (svg and png only)
PURE_FORMATS = ("svg", "png")


def write(dot, path) -> str:
    """Write the picture; without a renderer write the DOT source and say how to get pictures."""
    path = os.fspath(path)
    stem, suffix = os.path.splitext(path)
    fmt = suffix.lstrip(".").lower()
    if fmt in ("dot", "gv", ""):
        return write_file(path or "graph.dot", dot.source.encode("utf-8"))
    if fmt not in load_graphviz().FORMATS:
        raise GraphcError(f"render: cannot write {path!r}: unknown picture format {fmt!r} "
                          "(use .svg, .png, .pdf or .dot)")
    try:
        data = pipe(dot.source, fmt)
    except MissingRenderer as e:
        src = write_file(stem + ".dot", dot.source.encode("utf-8"))
        warnings.warn(f"graphc.render: {e}, so DOT source is written instead of pictures; "
                      f"{INSTALL_HINT}", stacklevel=3)
        return src
    return write_file(path, data)


def write_file(path: str, data: bytes, what: str = "render") -> str:
    """Write a picture or page; a missing folder or a read-only place is a GraphcError that
    names the path (it was a FileNotFoundError traceback out of `graphc render -o`)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise GraphcError(f"{what}: cannot write {path!r}: {e.strerror or e}") from None
    return path


class MissingRenderer(GraphcError):
    """Neither graphviz's `dot` nor graphviz-pure (for svg/png) can be run."""


def pure_executable() -> str | None:
    """The `graphviz-pure` program of the graphviz-pure wheel: on PATH or beside Python (a
    virtual environment that is not activated has it in its scripts folder only)."""
    found = shutil.which(PURE)
    if found:
        return found
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        for name in (PURE, PURE + ".exe"):
            exe = os.path.join(folder, name)
            if os.path.isfile(exe) and os.access(exe, os.X_OK):
                return exe
    return None


def pipe(source: str, fmt: str) -> bytes:
    """The picture in `fmt`: graphviz's `dot` first, then graphviz-pure for svg and png.
    Several digraphs in one source give the pictures one after another (one process)."""
    graphviz = load_graphviz()
    try:
        return graphviz.pipe("dot", fmt, source.encode("utf-8"), quiet=True)
    except graphviz.ExecutableNotFound:
        pass
    exe = pure_executable() if fmt in PURE_FORMATS else None
    if exe is None:
        raise MissingRenderer("the graphviz `dot` program is missing"
                              + (" and graphviz-pure is not installed"
                                 if fmt in PURE_FORMATS else f" (graphviz-pure has no {fmt})"))
    run = subprocess.run([exe, "-q", f"-T{fmt}"], input=source.encode("utf-8"),
                         capture_output=True)
    if run.returncode != 0:
        raise GraphcError(f"render: graphviz-pure failed: {run.stderr.decode(errors='replace')}")
    return run.stdout


def load_graphviz():
    """The graphviz Python package, imported on first use so graphc imports without it."""
    try:
        import graphviz
    except ImportError:
        raise GraphcError("render needs the graphviz Python package: pip install graphviz") \
            from None
    return graphviz


@functools.lru_cache(maxsize=None)
def hint_once(text: str) -> None:
    print(text, file=sys.stderr)


def new_digraph(rankdir: str = "TB"):
    """An empty Digraph with graphc's fonts and arrow sizes."""
    return load_graphviz().Digraph(
        "graphc", graph_attr={"rankdir": rankdir, "fontname": "Helvetica"},
        node_attr={"fontname": "Helvetica", "fontsize": "10", "style": "filled"},
        edge_attr={"arrowsize": "0.6", "fontname": "Helvetica", "fontsize": "9"})


def mimebundle(dot) -> dict:
    """Jupyter's picture of a rendered Digraph through `pipe` (graphviz-pure included); the
    DOT text and a one-time hint instead of an error when nothing can draw it."""
    try:
        return {"image/svg+xml": pipe(dot.source, "svg").decode("utf-8")}
    except MissingRenderer as e:
        hint_once(f"graphc: no picture ({e}); {INSTALL_HINT}")
        return {"text/plain": dot.source}
