"""The graph file's node records: nodes to JSON records and back, checking every field first.

A graph is a list of records whose inputs are indices of earlier records. An attribute that
holds an inner graph (the body of a `fused` node) is a nested list of records under
{"graph": {"inputs", "output", "nodes"}}; `grad_of` always indexes the top-level list. Arrays
of constants and variables live in the `.npz` under the key of their record's path, `n4` at
the top and `n4.body.n2` inside node 4's body. Nothing here runs code the file names.
"""
from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass

import numpy as np

from graphc import api
from graphc.ir import OPS, GraphcError, Node, _context, apply, constant
from graphc.ops.fused import Body

FORMAT, VERSION = "graphc-graph", 2
LEAVES = ("placeholder", "variable", "constant")
STORED = ("variable", "constant")      # leaves whose array is in the .npz
DTYPES = frozenset(np.dtype(t).name for t in (
    bool, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64)) | {"void"}     # void: a tuple-valued node
MAX_RANK = 32      # NumPy's limit on dimensions
MAX_SIZE = 1 << 62      # bytes any one declared array may hold (NumPy's own bound is 2**63-1)
MAX_DEPTH = 8      # how deeply attribute tuples may nest
MAX_NESTING = 4    # how deeply graphs may sit inside graph attributes


# encoding -----------------------------------------------------------------------------

def encode_graph(nodes: list[Node], top: dict[int, int], prefix: str,
                 arrays: dict[str, np.ndarray]) -> list[dict]:
    """Records of `nodes` (inputs before users); stored arrays go into `arrays` by key.

    `top` maps the top-level nodes to their index, which is what `grad_of` refers to.
    """
    index = {id(n): i for i, n in enumerate(nodes)}
    records = []
    for i, n in enumerate(nodes):
        key = f"{prefix}n{i}"
        if n.op in STORED:
            arrays[key] = np.asarray(n.value)
        attrs = {k: {"graph": encode_body(v, top, f"{key}.{k}.", arrays)}
                 if isinstance(v, Body) else encode_attr(v, n, k) for k, v in n.attrs.items()}
        records.append({"op": n.op, "inputs": [index[id(x)] for x in n.inputs], "attrs": attrs,
                        "shape": list(n.shape), "dtype": n.dtype.name, "name": n.name,
                        "scope": list(n.scope), "where": n.where,
                        "grad_of": None if n.grad_of is None else top[id(n.grad_of)]})
    return records


def encode_body(body: Body, top: dict[int, int], prefix: str, arrays: dict) -> dict:
    nodes = list(body.nodes) + [p for p in body.inputs if all(p is not n for n in body.nodes)]
    index = {id(n): i for i, n in enumerate(nodes)}
    return {"inputs": [index[id(p)] for p in body.inputs],
            "outputs": [index[id(o)] for o in body.outputs],
            "nodes": encode_graph(nodes, top, prefix, arrays)}


def body_nodes(n: Node) -> list[Node]:
    """Every node inside n's graph attributes, at any depth (their grad_of tags need saving)."""
    out = []
    for v in n.attrs.values():
        if isinstance(v, Body):
            for m in list(v.nodes) + list(v.inputs):
                out += [m] + body_nodes(m)
    return out


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


# checking: types of every field, before anything is built ----------------------------

@dataclass(frozen=True)
class BodySpec:
    """A checked inner graph: its node specs, which of them are the inputs, the outputs."""
    specs: list
    inputs: list[int]
    outputs: list[int]


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


def check_graph(records: list, top: int, prefix: str = "", depth: int = 0) -> list[dict]:
    """Checked specs of a record list; `top` is the length of the top-level list."""
    return [check_record(r, i, top, prefix, depth) for i, r in enumerate(records)]


def check_record(r, i: int, top: int, prefix: str, depth: int) -> dict:
    """The node record's fields with their types checked; nothing is built yet."""
    key = f"{prefix}n{i}"
    at = "node " + " ".join("%" + p[1:] if k % 2 == 0 else p
                            for k, p in enumerate(key.split(".")))   # node %3 body %2
    if not isinstance(r, dict):
        raise GraphcError(f"{at}: expected an object, got {type(r).__name__}")
    op = field(r, "op", str, at)
    at = f"{at} ({op[:40]})"
    if op not in OPS and op not in LEAVES:
        raise GraphcError(f"{at}: unknown op {op[:40]!r} (an op of your own? import the module "
                          "that registers it with gc.register_op before gc.load)")
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
    if len(shape) > MAX_RANK:
        raise GraphcError(f"{at}: rank {len(shape)} is above the limit of {MAX_RANK}")
    for d in shape:
        if not (d is None or (isinstance(d, str) and len(d) <= 100)
                or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)):
            raise GraphcError(f"{at}: bad dimension {str(d)[:40]} in shape")
    size = math.prod(d for d in shape if isinstance(d, int))
    if size * np.dtype(dtype).itemsize > MAX_SIZE:
        raise GraphcError(f"{at}: shape {shape} holds more than {MAX_SIZE} bytes")
    if op in STORED and not all(isinstance(d, int) for d in shape):
        raise GraphcError(f"{at}: a {op} needs a fixed shape, got {shape}")
    name, grad_of = r.get("name"), r.get("grad_of")
    if name is not None and not isinstance(name, str):
        raise GraphcError(f"{at}: name must be a string or null")
    if grad_of is not None:
        indices([grad_of], top, f"{at} grad_of")
    scope = field(r, "scope", list, at)
    if not all(isinstance(s, str) for s in scope):
        raise GraphcError(f"{at}: scope must be a list of strings")
    attrs = decode_attrs(field(r, "attrs", dict, at), op, len(inputs), at,
                         (top, key, depth))
    return {"op": op, "inputs": inputs, "attrs": attrs, "shape": tuple(shape),
            "dtype": np.dtype(dtype), "name": name, "scope": tuple(scope),
            "where": field(r, "where", str, at), "grad_of": grad_of, "key": key, "at": at,
            "nbytes": size * np.dtype(dtype).itemsize}


def decode_attrs(attrs: dict, op: str, n_inputs: int, at: str, nest: tuple) -> dict:
    allowed = () if op in LEAVES else allowed_attrs(op, n_inputs)
    out = {}
    for k, v in attrs.items():
        if allowed is not None and k not in allowed:
            raise GraphcError(f"{at}: op {op} takes no attribute {k[:40]!r} "
                              f"(it takes {', '.join(sorted(allowed)) or 'none'})")
        if k.startswith("_") or k == "rng":
            raise GraphcError(f"{at}: attribute name {k[:40]!r} is not allowed")
        if k in OPS[op].graph_attrs:
            out[k] = decode_body(v, f"{at} attribute {k!r}", n_inputs, k, *nest)
        else:
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


def decode_body(v, at: str, n_inputs: int, attr: str, top: int, key: str,
                depth: int) -> BodySpec:
    """{"graph": {"inputs", "outputs", "nodes"}}: placeholders standing for the node's inputs
    ("output": one index, in files of fused bodies written before loops had bodies)."""
    if not (isinstance(v, dict) and list(v) == ["graph"] and isinstance(v["graph"], dict)):
        raise GraphcError(f"{at}: must be a graph {{\"graph\": {{...}}}}")
    if depth >= MAX_NESTING:
        raise GraphcError(f"{at}: graphs nest deeper than {MAX_NESTING} levels")
    doc = v["graph"]
    specs = check_graph(field(doc, "nodes", list, at), top, f"{key}.{attr}.", depth + 1)
    inputs = indices(field(doc, "inputs", list, at), len(specs), f"{at} inputs")
    outputs = [field(doc, "output", int, at)] if "output" in doc \
        else field(doc, "outputs", list, at)
    outputs = indices(outputs, len(specs), f"{at} outputs")
    placeholders = [j for j, s in enumerate(specs) if s["op"] == "placeholder"]
    if len(inputs) != n_inputs or sorted(inputs) != placeholders:
        raise GraphcError(f"{at}: its inputs {inputs} must be its placeholders "
                          f"{placeholders}, one for each of the node's {n_inputs} inputs")
    return BodySpec(specs, inputs, outputs)


def stored_specs(specs: list[dict]) -> list[dict]:
    """The specs whose array is in the .npz, inner graphs included."""
    out = []
    for s in specs:
        if s["op"] in STORED:
            out.append(s)
        for v in s["attrs"].values():
            if isinstance(v, BodySpec):
                out += stored_specs(v.specs)
    return out


def inner_grad_of(s: dict) -> list[int]:
    """The top-level nodes that nodes inside s's graph attributes are gradients of."""
    out = []
    for v in s["attrs"].values():
        if isinstance(v, BodySpec):
            for t in v.specs:
                out += ([t["grad_of"]] if t["grad_of"] is not None else []) + inner_grad_of(t)
    return out


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


# building -----------------------------------------------------------------------------

def build_order(specs: list[dict]) -> list[int]:
    """Indices with every node after its inputs and the grad_of targets of it and its inner
    graphs (targets may come later in the list)."""
    deps = [s["inputs"] + ([s["grad_of"]] if s["grad_of"] is not None else [])
            + inner_grad_of(s) for s in specs]
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


def build_graph(specs: list[dict], arrays: dict[str, np.ndarray]) -> list[Node]:
    """The top-level nodes, in file order."""
    nodes: list = [None] * len(specs)        # filled in build order
    for i in build_order(specs):
        nodes[i] = build(specs[i], nodes, nodes, arrays)
    return nodes


def build_body(b: BodySpec, top: list[Node], arrays: dict) -> Body:
    nodes: list[Node] = []
    for s in b.specs:                        # inputs come first; grad_of targets are built
        nodes.append(build(s, nodes, top, arrays))
    return Body([nodes[j] for j in b.inputs], [nodes[j] for j in b.outputs])


def build(s: dict, nodes: list, top: list, arrays: dict) -> Node:
    grad_of = None if s["grad_of"] is None else top[s["grad_of"]]
    attrs = {k: build_body(v, top, arrays) if isinstance(v, BodySpec) else v
             for k, v in s["attrs"].items()}
    token = _context.set((s["scope"], grad_of))    # the builders read scope and grad_of here
    try:
        node = build_node(s, [nodes[j] for j in s["inputs"]], attrs, arrays.get(s["key"]))
    except GraphcError as e:
        raise GraphcError(f"{s['at']}: {e}") from None
    except Exception as e:    # a rule given attributes it cannot use; nothing else can run
        raise GraphcError(f"{s['at']}: the op rejects its attributes {s['attrs']}: "
                          f"{type(e).__name__}: {str(e)[:200]}") from None
    finally:
        _context.reset(token)
    if node.shape != s["shape"] or node.dtype != s["dtype"]:
        raise GraphcError(f"{s['at']}: the file declares {list(s['shape'])} {s['dtype'].name} "
                          f"but the shape rule gives {list(node.shape)} {node.dtype.name}")
    return node


def build_node(s: dict, inputs: list[Node], attrs: dict, array: np.ndarray | None) -> Node:
    op = s["op"]
    if op not in LEAVES:
        return apply(op, *inputs, _where=s["where"], _name=s["name"], _scope=s["scope"],
                     **attrs)
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
