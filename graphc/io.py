"""Save and load graphs: JSON for the structure, an `.npz` beside it for the arrays, no pickle.

`save(outputs, "model")` (or `"model.json"`) writes `model.json` and `model.npz`; the node
records and the array keys are described in `graphc.io_format`. Loading runs no code from the
file: op names are looked up in the op table, attributes may only be plain data (or inner graphs
of the same records, for fused nodes), and every node is rebuilt through its op's shape rule, so
a file that declares a shape or dtype the rule disagrees with is rejected.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from graphc.io_format import FORMAT, VERSION, body_nodes, build_graph, check_graph, \
    encode_graph, field, indices, stored_specs
from graphc.ir import Graph, GraphcError, Node, toposort

HEADER_ROOM = 1 << 16    # bytes an .npy member may hold beyond its data (its header)


def file_paths(path) -> tuple[str, str]:
    """'model' or 'model.json' -> ('model.json', 'model.npz')."""
    base = os.fspath(path)
    base = base[:-5] if base.endswith(".json") else base
    return base + ".json", base + ".npz"


# saving -------------------------------------------------------------------------------

def save(outputs, path, updates: Sequence[tuple[Node, Node]] = ()) -> str:
    """Write a node, a list of nodes or a Graph (with updates) to path.json + path.npz."""
    graph, form = as_graph(outputs, updates)
    nodes = with_grad_targets(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    arrays: dict[str, np.ndarray] = {}
    records = encode_graph(nodes, index, "", arrays)
    header = {"format": FORMAT, "version": VERSION, "form": form,
              "outputs": [index[id(o)] for o in graph.outputs],
              "updates": [[index[id(v)], index[id(u)]] for v, u in graph.updates]}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    text = "{\n" + "\n".join(lines) + '\n "nodes": [\n' \
        + ",\n".join("  " + json.dumps(r) for r in records) + "\n ]\n}\n"
    json_path, npz_path = file_paths(path)
    write_atomic(npz_path, lambda f: np.savez(f, **arrays))
    write_atomic(json_path, lambda f: f.write(text.encode("utf-8")))
    return json_path


def as_graph(outputs, updates) -> tuple[Graph, str]:
    if isinstance(outputs, Graph):
        form, updates = "graph", tuple(outputs.updates) + tuple(updates)
        outputs = outputs.outputs
    else:
        form = "node" if isinstance(outputs, Node) else "list"
        outputs, updates = ([outputs] if form == "node" else list(outputs)), tuple(updates)
    for o in outputs:
        if not isinstance(o, Node):
            raise GraphcError(f"save: outputs must be graph nodes, got {type(o).__name__}")
    for pair in updates:
        if not (len(pair) == 2 and all(isinstance(x, Node) for x in pair)
                and pair[0].op == "variable" and pair[0].shape == pair[1].shape):
            raise GraphcError(f"save: an update is a pair (variable, node of its shape), "
                              f"got {pair!r}")
    return Graph(outputs, updates), ("graph" if updates else form)


def with_grad_targets(graph: Graph) -> list[Node]:
    """The graph's nodes, then the forward nodes that gradient nodes point to (and their inputs).

    Those extra nodes are not part of the graph; they are kept so `grad_of` survives a load,
    also the tags of nodes inside fused bodies.
    """
    nodes = list(graph.nodes)
    seen = {id(n) for n in nodes}
    i = 0
    while i < len(nodes):
        for m in [nodes[i]] + body_nodes(nodes[i]):
            target = m.grad_of
            if target is not None and id(target) not in seen:
                for n in toposort([target]):
                    if id(n) not in seen:
                        seen.add(id(n))
                        nodes.append(n)
        i += 1
    return nodes


def write_atomic(path: str, write) -> None:
    """Write through a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=folder)
    except OSError as e:
        raise GraphcError(f"save: cannot write {path}: {e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise GraphcError(f"save: cannot write {path}: {e}") from None
        raise


# loading ------------------------------------------------------------------------------

def load(path):
    """Read what `save` wrote, in the form it was saved: a node, a list of nodes or a Graph.

    Variables come back as new variables holding the saved values.
    """
    json_path, npz_path = file_paths(path)
    doc = read_json(json_path)
    try:
        return load_document(doc, npz_path)
    except GraphcError as e:
        raise GraphcError(f"{json_path}: {e}") from None


def load_document(doc: dict, npz_path: str):
    records = field(doc, "nodes", list, "the file")
    specs = check_graph(records, len(records))
    nodes = build_graph(specs, read_arrays(npz_path, stored_specs(specs)))
    outputs = [nodes[j] for j in indices(field(doc, "outputs", list, "the file"), len(nodes),
                                        "outputs")]
    updates = []
    for pair in field(doc, "updates", list, "the file"):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise GraphcError("an update must be a pair [variable, value]")
        v, u = indices(pair, len(nodes), "an update")
        if nodes[v].op != "variable" or nodes[v].shape != nodes[u].shape:
            raise GraphcError(f"update {pair} does not pair a variable with a node of its shape")
        updates.append((nodes[v], nodes[u]))
    form = doc["form"]
    if form == "graph":
        return Graph(outputs, updates)
    if updates or (form == "node" and len(outputs) != 1):
        raise GraphcError(f"a {form!r} file has {len(outputs)} outputs and {len(updates)} "
                          "updates")
    return outputs[0] if form == "node" else outputs


def read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise GraphcError(f"cannot read graph file {path}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:   # bad UTF-8, bad JSON, absurd nesting
        raise GraphcError(f"{path} is not a graphc graph file (not valid JSON: "
                          f"{str(e)[:200]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphcError(f"{path} is not a graphc graph file (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise GraphcError(f"{path}: format version {doc.get('version')!r} is not supported "
                          f"(this graphc reads version {VERSION})")
    if doc.get("form") not in ("node", "list", "graph"):
        raise GraphcError(f"{path}: unknown form {doc.get('form')!r}")
    return doc


def read_arrays(path: str, specs: list[dict]) -> dict[str, np.ndarray]:
    """The arrays of variables and constants (by key), each no bigger than its node declares."""
    if not specs:
        return {}
    out = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = set(npz.files)
            for s in specs:
                key, at = s["key"], s["at"]
                if key not in present:
                    raise GraphcError(f"the arrays file {path} has no array {key} for {at}")
                if npz.zip.getinfo(key + ".npy").file_size > nbytes(s) + HEADER_ROOM:
                    raise GraphcError(f"array {key} in {path} is larger than {at} "
                                      f"declares ({list(s['shape'])} {s['dtype'].name})")
                out[key] = npz[key]
    except GraphcError:
        raise
    except OSError as e:
        raise GraphcError(f"cannot read the arrays file {path}: {e.strerror or e}") from None
    except (ValueError, zipfile.BadZipFile, EOFError, MemoryError, KeyError) as e:
        raise GraphcError(f"{path} is not a valid arrays file (pickled objects are "
                          f"refused): {str(e)[:200]}") from None
    return out


def nbytes(spec: dict) -> int:
    if not all(isinstance(d, int) for d in spec["shape"]):
        raise GraphcError(f"a {spec['op']} needs a fixed shape, got {list(spec['shape'])}")
    return int(np.prod(spec["shape"], dtype=object)) * spec["dtype"].itemsize
