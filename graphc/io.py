"""Save and load graphs: JSON for the structure, an `.npz` beside it for the arrays, no pickle.

`save(outputs, "model")` (or `"model.json"`) writes `model.json` and `model.npz`; the node
records and the array keys are described in `graphc.io_format`. Loading runs no code from the
file: op names are looked up in the op table, attributes may only be plain data (or inner graphs
of the same records, for fused nodes), and every node is rebuilt through its op's shape rule, so
a file that declares a shape or dtype the rule disagrees with is rejected.

The `.json` carries the sha256 of its own content and of its `.npz`, so a damaged file or a
pair from two different saves is refused. A save replaces the pair so that a reader sees the
old pair or the new one: the new `.npz` is first written under a staged name
(`model.npz.graphc-staged-<digest>`), then the `.json` naming its digest replaces the old one,
then the staged file is renamed to `model.npz`. A reader whose `model.npz` does not match looks
for the staged file, and reads the `.json` again when a save raced it; the next save finishes
(or removes) what a killed save left.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from typing import Sequence

import numpy as np

from graphc.io_arrays import open_npz, read_member, write_npz
from graphc.io_files import fsync_folder, folder_lock, open_regular, read_all, \
    remove_leftovers, replace, sha256_of, write_temp
from graphc.io_format import FORMAT, VERSION, body_nodes, build_graph, check_graph, \
    encode_graph, field, indices, stored_specs
from graphc.ir import Graph, GraphcError, Node, as_graph, storage_locks, toposort

MAX_BYTES = 1 << 32      # default limit on what one load reads (the .json and the arrays)
STAGED = ".graphc-staged-"
HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def file_paths(path) -> tuple[str, str]:
    """'model' or 'model.json' -> ('model.json', 'model.npz')."""
    base = os.fspath(path)
    base = base[:-5] if base.endswith(".json") else base
    return base + ".json", base + ".npz"


def staged_path(npz_path: str, digest: str) -> str:
    return npz_path + STAGED + digest[:16]


def document_digest(doc: dict) -> str:
    """sha256 of the document without its own "sha256" field, in a canonical JSON form."""
    rest = {k: v for k, v in doc.items() if k != "sha256"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# saving -------------------------------------------------------------------------------

def save(outputs, path, updates: Sequence[tuple[Node, Node]] = ()) -> str:
    """Write a node, a list of nodes or a Graph (with updates) to path.json + path.npz."""
    graph, form = saved_graph(outputs, updates)
    nodes = with_grad_targets(graph)
    index = {id(n): i for i, n in enumerate(nodes)}
    arrays: dict[str, np.ndarray] = {}
    variables = [n for n in nodes if n.op == "variable"]
    stored = {id(v.value) for v in variables}
    with locked(storage_locks(variables)):     # the values of one moment: a call of another
        records = encode_graph(nodes, index, "", arrays)        # thread writes them in place
        arrays = {k: np.array(a) if id(a) in stored else a for k, a in arrays.items()}
    json_path, npz_path = file_paths(path)
    folder = os.path.dirname(os.path.abspath(json_path))
    with folder_lock(folder):
        finish_killed_save(json_path, npz_path)
        tmp, digest = write_temp(npz_path, lambda f: write_npz(f, arrays), "save")
        staged = staged_path(npz_path, digest)
        replace(tmp, staged, "save")
        header = {"format": FORMAT, "version": VERSION, "sha256": "", "form": form,
                  "arrays": {"sha256": digest},
                  "outputs": [index[id(o)] for o in graph.outputs],
                  "updates": [[index[id(v)], index[id(u)]] for v, u in graph.updates]}
        text = document_text(header, records)
        header["sha256"] = document_digest(json.loads(text))    # as a reader will see it
        text = document_text(header, records).encode("utf-8")
        fsync_folder(folder)
        tmp, _ = write_temp(json_path, lambda f: f.write(text), "save")
        replace(tmp, json_path, "save")         # the new pair is what readers see from here
        fsync_folder(folder)
        replace(staged, npz_path, "save")
        fsync_folder(folder)
    return json_path


@contextlib.contextmanager
def locked(locks: list):
    """Hold `locks` (taken in the order given: the global order of storage_locks)."""
    for lock in locks:
        lock.acquire()
    try:
        yield
    finally:
        for lock in reversed(locks):
            lock.release()


def document_text(header: dict, records: list[dict]) -> str:
    """One header field and one node record per line, so that diffs of graph files read well."""
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in header.items()]
    return "{\n" + "\n".join(lines) + '\n "nodes": [\n' \
        + ",\n".join("  " + json.dumps(r) for r in records) + "\n ]\n}\n"


def finish_killed_save(json_path: str, npz_path: str) -> None:
    """Complete a save killed after its .json was replaced; remove temp and staged files."""
    folder = os.path.dirname(os.path.abspath(json_path))
    with contextlib.suppress(GraphcError, OSError, ValueError, LookupError, TypeError):
        with open_regular(json_path, "graph file", MAX_BYTES) as f:
            doc = json.loads(read_all(f, json_path, "graph file", MAX_BYTES))
        digest = doc["arrays"]["sha256"]
        if HEX64.match(digest) and os.path.exists(staged_path(npz_path, digest)):
            os.replace(staged_path(npz_path, digest), npz_path)
    name = os.path.basename(npz_path)
    remove_leftovers(folder, [os.path.basename(json_path), name],
                     re.compile(re.escape(name + STAGED) + r"[0-9a-f]{16}\Z"))


def saved_graph(outputs, updates) -> tuple[Graph, str]:
    """The graph to save, with the updates given, and the form `load` gives back."""
    graph = as_graph(outputs, "save")
    updates = graph.updates + tuple(updates)
    form = "graph" if isinstance(outputs, Graph) or updates else \
        "node" if isinstance(outputs, Node) else "list"
    for pair in updates:
        if not (len(pair) == 2 and all(isinstance(x, Node) for x in pair)
                and pair[0].op == "variable" and pair[0].shape == pair[1].shape):
            raise GraphcError(f"save: an update is a pair (variable, node of its shape), "
                              f"got {pair!r}")
    return Graph(graph.outputs, updates), form


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



# loading ------------------------------------------------------------------------------

def load(path, *, max_bytes: int = MAX_BYTES):
    """Read what `save` wrote, in the form it was saved: a node, a list of nodes or a Graph.

    Variables come back as new variables holding the saved values. Every refusal is a
    GraphcError; at most `max_bytes` are read (the .json, and again the arrays).
    """
    json_path, npz_path = file_paths(path)
    try:
        return load_pair(json_path, npz_path, max_bytes)
    except GraphcError:
        raise
    except Exception as e:     # a case the checks missed: still a refusal, with its cause
        raise GraphcError(f"{json_path} cannot be loaded: {type(e).__name__}: "
                          f"{str(e)[:200]}") from e


def load_pair(json_path: str, npz_path: str, max_bytes: int):
    """Load the pair; read the .json again while a save is replacing the pair under us."""
    last = None
    for attempt in range(20):              # each retry means a save moved files meanwhile
        text, doc = read_json(json_path, max_bytes)
        try:
            return load_document(doc, json_path, npz_path, max_bytes - len(text))
        except StalePair as e:
            if (text, e.seen) == last:
                break                        # nothing moved since the last try: the pair is bad
            last, problem = (text, e.seen), e.problem
            time.sleep(min(0.002 * attempt, 0.05))
    raise GraphcError(f"{json_path}: {problem}")


class StalePair(Exception):
    """The .npz beside the .json is missing or is not the one the .json names; `seen` tells
    which files were there (a save may have moved them since)."""

    def __init__(self, problem: str, seen: tuple):
        super().__init__(problem)
        self.problem, self.seen = problem, seen


def load_document(doc: dict, json_path: str, npz_path: str, budget: int):
    try:
        records = field(doc, "nodes", list, "the file")
        specs = check_graph(records, len(records))
        stored = stored_specs(specs)
        need = sum(s["nbytes"] for s in stored)
        if need > budget:
            raise GraphcError(f"its arrays declare {need} bytes, more than the limit of "
                              f"{budget} (raise it with max_bytes=)")
        arrays = {}
        if stored:                        # a graph without arrays never opens its .npz
            with open_arrays(npz_path, doc["arrays"]["sha256"], budget) as f:
                arrays = read_arrays(f, npz_path, stored)
        return assemble(doc, build_graph(specs, arrays))
    except GraphcError as e:
        raise GraphcError(f"{json_path}: {e}") from None


def assemble(doc: dict, nodes: list[Node]):
    outputs = [nodes[j] for j in indices(field(doc, "outputs", list, "the file"), len(nodes),
                                        "outputs")]
    updates = []
    for pair in field(doc, "updates", list, "the file"):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise GraphcError("an update must be a pair [variable, value]")
        v, u = indices(pair, len(nodes), "an update")
        if nodes[v].op != "variable" or nodes[v].shape != nodes[u].shape \
                or nodes[v].dtype != nodes[u].dtype:
            raise GraphcError(f"update {pair} does not pair a variable with a node of its "
                              "shape and dtype")
        updates.append((nodes[v], nodes[u]))
    form = doc["form"]
    if form == "graph":
        return Graph(outputs, updates)
    if updates or (form == "node" and len(outputs) != 1):
        raise GraphcError(f"a {form!r} file has {len(outputs)} outputs and {len(updates)} "
                          "updates")
    return outputs[0] if form == "node" else outputs


def read_json(path: str, limit: int) -> tuple[bytes, dict]:
    with open_regular(path, "graph file", limit) as f:
        try:
            text = read_all(f, path, "graph file", limit)
        except OSError as e:
            raise GraphcError(f"cannot read graph file {path}: {e.strerror or e}") from None
    try:
        doc = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as e:   # bad UTF-8, bad JSON, absurd nesting
        raise GraphcError(f"{path} is not a graphc graph file (not valid JSON: "
                          f"{str(e)[:200]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise GraphcError(f"{path} is not a graphc graph file (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise GraphcError(f"{path}: format version {str(doc.get('version'))[:20]} is not "
                          f"supported (this graphc reads version {VERSION}; save the graph "
                          "again with this graphc)")
    digest = doc.get("sha256")
    if not isinstance(digest, str) or digest != document_digest(doc):
        raise GraphcError(f"{path} is damaged: its content does not match its sha256 "
                          "(graph files are not meant to be edited by hand)")
    arrays = doc.get("arrays")
    if not (isinstance(arrays, dict) and isinstance(arrays.get("sha256"), str)
            and HEX64.match(arrays["sha256"])):
        raise GraphcError(f"{path}: field \"arrays\" must name the sha256 of the .npz")
    if doc.get("form") not in ("node", "list", "graph"):
        raise GraphcError(f"{path}: unknown form {str(doc.get('form'))[:40]!r}")
    return text, doc


@contextlib.contextmanager
def open_arrays(npz_path: str, digest: str, limit: int):
    """The .npz whose sha256 is `digest`: path.npz, or the file a running save staged."""
    problem, seen = f"the arrays file {npz_path} is missing", []
    for candidate in (npz_path, staged_path(npz_path, digest)):
        try:
            f = open_regular(candidate, "arrays file", limit)
        except GraphcError:
            if os.path.lexists(candidate):
                raise
            seen.append(None)
            continue
        with f:
            info = os.fstat(f.fileno())
            seen.append((info.st_ino, info.st_size, info.st_mtime_ns))
            if sha256_of(f) == digest:
                yield f
                return
        problem = (f"the arrays file {npz_path} does not match the sha256 its graph file "
                   "names (it is damaged, or the two files come from different saves)")
    raise StalePair(problem, tuple(seen))


def read_arrays(f, path: str, specs: list[dict]) -> dict[str, np.ndarray]:
    """The arrays of variables and constants (by key), each exactly as its node declares."""
    with open_npz(f, path) as z:
        return {s["key"]: read_member(z, s["key"], s["shape"],
                                      lambda d, want=s["dtype"]: d == want, s["at"],
                                      stored_only=True, itemsize=s["dtype"].itemsize)
                for s in specs}
