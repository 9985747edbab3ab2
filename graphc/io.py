"""Save and load graphs: JSON for the structure, an `.npz` beside it for the arrays, no pickle.

`save(outputs, "model")` (or `"model.json"`) writes `model.json` and `model.npz`; the arrays of
constants and variables sit in the `.npz` under the key `n<i>`, `i` being the node's index in
the JSON. Loading runs no code from the file: op names are looked up in the op table, attributes
may only be plain data, and every node is rebuilt through its op's shape rule, so a file that
declares a shape or dtype the rule disagrees with is rejected.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from graphc import api
from graphc.ir import OPS, Graph, GraphcError, Node, _context, apply, constant, toposort

FORMAT, VERSION = "graphc-graph", 1
LEAVES = ("placeholder", "variable", "constant")
DTYPES = frozenset(np.dtype(t).name for t in (
    bool, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64))
MAX_DEPTH = 8    # how deeply attribute tuples may nest
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
    records = [encode_node(n, index) for n in nodes]
    arrays = {f"n{i}": np.asarray(n.value) for i, n in enumerate(nodes)
              if n.op in ("variable", "constant")}
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

    Those extra nodes are not part of the graph; they are kept so `grad_of` survives a load.
    """
    nodes = list(graph.nodes)
    seen = {id(n) for n in nodes}
    i = 0
    while i < len(nodes):
        target = nodes[i].grad_of
        if target is not None and id(target) not in seen:
            for n in toposort([target]):
                if id(n) not in seen:
                    seen.add(id(n))
                    nodes.append(n)
        i += 1
    return nodes


def encode_node(n: Node, index: dict[int, int]) -> dict:
    return {"op": n.op, "inputs": [index[id(i)] for i in n.inputs],
            "attrs": {k: encode_attr(v, n, k) for k, v in n.attrs.items()},
            "shape": list(n.shape), "dtype": n.dtype.name, "name": n.name,
            "scope": list(n.scope), "where": n.where,
            "grad_of": None if n.grad_of is None else index[id(n.grad_of)]}


def encode_attr(v, node: Node, key: str):
    """Attribute values as JSON: tuples become lists, dtypes their names."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic) and v.dtype.kind in "biuf":
        return v.item()
    if isinstance(v, np.dtype) or (isinstance(v, type) and issubclass(v, np.generic)):
        return np.dtype(v).name
    if isinstance(v, (tuple, list)):
        return [encode_attr(x, node, key) for x in v]
    raise GraphcError(f"save: attribute {key}={v!r} of {node.op} node {node.label()} "
                      f"(built at {node.where}) is a {type(v).__name__}, which cannot be saved")


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
    specs = [check_record(r, i, len(records)) for i, r in enumerate(records)]
    arrays = read_arrays(npz_path, specs)
    nodes: list = [None] * len(specs)        # filled in build order
    for i in build_order(specs):
        nodes[i] = build(specs[i], i, nodes, arrays.get(f"n{i}"))
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
    """The arrays of variables and constants, each no bigger than its node declares."""
    wanted = {i: s for i, s in enumerate(specs) if s["op"] in ("variable", "constant")}
    if not wanted:
        return {}
    out = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            present = set(npz.files)
            for i, s in wanted.items():
                key = f"n{i}"
                if key not in present:
                    raise GraphcError(f"the arrays file {path} has no array {key} for "
                                      f"node %{i}")
                if npz.zip.getinfo(key + ".npy").file_size > nbytes(s) + HEADER_ROOM:
                    raise GraphcError(f"array {key} in {path} is larger than node %{i} "
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


KINDS = {list: "a list", dict: "an object", str: "a string", int: "an integer"}


def field(record: dict, key: str, kind: type, where: str):
    value = record.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = type(value).__name__ if key in record else "nothing"
        raise GraphcError(f"{where}: field {key!r} must be {KINDS[kind]}, got {got}")
    return value


def indices(values: list, count: int, what: str) -> list[int]:
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < count:
            raise GraphcError(f"{what}: {v!r} is not a node index (0..{count - 1})")
    return values


def check_record(r, i: int, count: int) -> dict:
    """The node record's fields with their types checked; nothing is built yet."""
    at = f"node %{i}"
    if not isinstance(r, dict):
        raise GraphcError(f"{at}: expected an object, got {type(r).__name__}")
    op = field(r, "op", str, at)
    at = f"node %{i} ({op[:40]})"
    if op not in OPS and op not in LEAVES:
        raise GraphcError(f"{at}: unknown op {op[:40]!r}")
    inputs = field(r, "inputs", list, at)
    for j in inputs:
        if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < i:
            raise GraphcError(f"{at}: input {j!r} is not the index of an earlier node "
                              f"(below {i})")
    if op in LEAVES and inputs:
        raise GraphcError(f"{at}: a {op} has no inputs")
    dtype = field(r, "dtype", str, at)
    if dtype not in DTYPES:
        raise GraphcError(f"{at}: unsupported dtype {dtype[:40]!r}")
    shape = field(r, "shape", list, at)
    for d in shape:
        if not (d is None or isinstance(d, str)
                or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)):
            raise GraphcError(f"{at}: bad dimension {d!r} in shape {shape}")
    name, grad_of = r.get("name"), r.get("grad_of")
    if name is not None and not isinstance(name, str):
        raise GraphcError(f"{at}: name must be a string or null")
    if grad_of is not None:
        indices([grad_of], count, f"{at} grad_of")
    scope = field(r, "scope", list, at)
    if not all(isinstance(s, str) for s in scope):
        raise GraphcError(f"{at}: scope must be a list of strings")
    return {"op": op, "inputs": inputs, "attrs": decode_attrs(field(r, "attrs", dict, at), op,
                                                             len(inputs), at),
            "shape": tuple(shape), "dtype": np.dtype(dtype), "name": name,
            "scope": tuple(scope), "where": field(r, "where", str, at), "grad_of": grad_of}


def decode_attrs(attrs: dict, op: str, n_inputs: int, at: str) -> dict:
    allowed = () if op in LEAVES else allowed_attrs(op, n_inputs)
    out = {}
    for k, v in attrs.items():
        if allowed is not None and k not in allowed:
            raise GraphcError(f"{at}: op {op} takes no attribute {k[:40]!r} "
                              f"(it takes {', '.join(sorted(allowed)) or 'none'})")
        if k.startswith("_") or k == "rng":
            raise GraphcError(f"{at}: attribute name {k[:40]!r} is not allowed")
        out[k] = decode_attr(v, f"{at} attribute {k!r}", 0)
    return out


def decode_attr(v, at: str, depth: int):
    """JSON lists back to tuples; only None, bool, int, float, str and lists of them."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, list) and depth < MAX_DEPTH:
        return tuple(decode_attr(x, at, depth + 1) for x in v)
    raise GraphcError(f"{at}: a {type(v).__name__} is not an allowed value "
                      "(only null, bool, numbers, strings and lists of them)")


@functools.lru_cache(maxsize=None)
def allowed_attrs(op: str, n_inputs: int) -> frozenset | None:
    """Attribute names the op's rule (or else its kernel) takes; None when it takes any."""
    opdef = OPS[op]
    for fn in (opdef.infer, opdef.kernel):
        if isinstance(fn, np.ufunc):          # ufunc keywords (out=, where=) are not attrs
            return frozenset()
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):
            return None
        if any(p.kind is p.VAR_KEYWORD for p in params):
            continue
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY,
                                                      p.POSITIONAL_OR_KEYWORD)]
        return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY) | frozenset(
            p.name for p in positional[n_inputs:] if p.kind is p.POSITIONAL_OR_KEYWORD)
    return None


def build_order(specs: list[dict]) -> list[int]:
    """Indices with every node after its inputs and its grad_of target (which may come later)."""
    deps = [s["inputs"] + ([s["grad_of"]] if s["grad_of"] is not None else []) for s in specs]
    state = [0] * len(specs)     # 0 new, 1 being visited, 2 done
    order: list[int] = []
    for root in range(len(specs)):
        if state[root]:
            continue
        state[root], stack = 1, [(root, 0)]
        while stack:
            i, k = stack[-1]
            if k < len(deps[i]):
                stack[-1] = (i, k + 1)
                j = deps[i][k]
                if state[j] == 1:
                    raise GraphcError(f"node %{i}: grad_of links form a cycle through %{j}")
                if state[j] == 0:
                    state[j] = 1
                    stack.append((j, 0))
            else:
                stack.pop()
                state[i] = 2
                order.append(i)
    return order


def build(s: dict, i: int, nodes: list, array: np.ndarray | None) -> Node:
    at = f"node %{i} ({s['op']})"
    grad_of = None if s["grad_of"] is None else nodes[s["grad_of"]]
    token = _context.set((s["scope"], grad_of))    # the builders read scope and grad_of here
    try:
        node = build_node(s, nodes, array)
    except GraphcError as e:
        raise GraphcError(f"{at}: {e}") from None
    except Exception as e:    # a rule given attributes it cannot use; nothing else can run
        raise GraphcError(f"{at}: the op rejects its attributes {s['attrs']}: "
                          f"{type(e).__name__}: {str(e)[:200]}") from None
    finally:
        _context.reset(token)
    if node.shape != s["shape"] or node.dtype != s["dtype"]:
        raise GraphcError(f"{at}: the file declares {list(s['shape'])} {s['dtype'].name} but "
                          f"the shape rule gives {list(node.shape)} {node.dtype.name}")
    return node


def build_node(s: dict, nodes: list, array: np.ndarray | None) -> Node:
    op = s["op"]
    if op not in LEAVES:
        return apply(op, *[nodes[j] for j in s["inputs"]], _where=s["where"], _name=s["name"],
                     _scope=s["scope"], **s["attrs"])
    if op == "placeholder":
        node = api.placeholder(s["shape"], s["dtype"], s["name"])
    else:
        if array.dtype != s["dtype"] or array.shape != s["shape"]:
            raise GraphcError(f"its array is {list(array.shape)} {array.dtype}, the file "
                              f"declares {list(s['shape'])} {s['dtype'].name}")
        build_leaf = api.variable if op == "variable" else constant
        node = build_leaf(array, s["dtype"], s["name"])
    node.where = s["where"]   # a fresh node nobody holds yet; builders record the caller's line
    return node

