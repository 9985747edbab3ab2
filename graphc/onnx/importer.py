"""ONNX graph -> graphc nodes: a walk over the ONNX nodes in order, one table entry each.

Every check happens while importing, before anything runs: an op without an entry, an unknown
attribute, an unsupported attribute value or data type raises `GraphcError` naming the ONNX
node and its op type (`check` collects all of them instead). Nodes whose inputs are all
constants are folded into constants, so the shape arithmetic of exported models (Shape ->
Gather -> Concat -> Reshape) becomes plain constants that later entries can read.
"""
from __future__ import annotations

import os

import numpy as np

from graphc.feeds import checked_feed
from graphc.ir import GraphcError, Node, constant, evaluate, name_scope, toposort
from graphc.onnx.schemas import (declared_type, inputs_problem, onnx_type, schema_check,
                                 types_problem)
from graphc.onnx.table import REQUIRED, TABLE, Ctx, RuntimeSizes, Unsupported


class OnnxModel:
    """An imported ONNX model: placeholders, outputs and parameters keyed by their ONNX names."""

    def __init__(self, inputs: dict, outputs: dict, params: dict, proto, opset: int):
        self.inputs, self.outputs, self.params = inputs, outputs, params
        self.proto, self.opset = proto, opset

    @property
    def variables(self) -> list[Node]:
        return [p for p in self.params.values() if p.op == "variable"]

    def __repr__(self) -> str:
        return (f"<OnnxModel opset {self.opset}: inputs {list(self.inputs)}, outputs "
                f"{list(self.outputs)}, {len(self.params)} params>")


def read_model(model):
    """A ModelProto from a path or a ModelProto, with model-local functions inlined."""
    import onnx
    what = "the model"
    if isinstance(model, (str, os.PathLike)):
        what = repr(os.fspath(model))
        try:
            model = onnx.load(os.fspath(model))
        except Exception as e:   # a damaged file: protobuf's own error, said plainly
            raise GraphcError(f"cannot read ONNX model {what}: {e}") from None
    elif isinstance(model, onnx.ModelProto):
        # onnx.load(path) reads a model's external data from the model's folder; a model in
        # memory has none, and NumPy would read the file from the working folder
        outside = external_tensors(model.graph)
        if outside:
            raise GraphcError(f"tensor(s) {outside} of the model keep their data in an external "
                              "file; load the model from its path (graphc.onnx.load(path))")
    else:
        raise GraphcError(f"graphc.onnx.load needs a path or an onnx.ModelProto, got "
                          f"{type(model).__name__}")
    if not model.graph.output:   # an empty file parses as an empty ModelProto
        raise GraphcError(f"cannot read ONNX model {what}: its graph has no outputs (an "
                          f"empty file, or not an ONNX model)")
    if model.functions:
        from onnx import inliner
        model = inliner.inline_local_functions(model)
    return model


def external_tensors(graph) -> list[str]:
    """Names of the tensors (initializers, attributes, in subgraphs too) stored outside."""
    from onnx import TensorProto
    tensors = list(graph.initializer)
    graphs = []
    for node in graph.node:
        for a in node.attribute:
            tensors += [a.t] * a.HasField("t") + list(a.tensors)
            graphs += [a.g] * a.HasField("g") + list(a.graphs)
    names = [t.name or "(unnamed)" for t in tensors if t.data_location == TensorProto.EXTERNAL]
    return names + [n for g in graphs for n in external_tensors(g)]


def model_opset(model) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    return versions[0] if versions else 1


def np_dtype(elem_type: int, what: str) -> np.dtype:
    """The NumPy dtype of an ONNX tensor type, or Unsupported for those graphc has not."""
    from onnx import helper
    try:
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except Exception:
        dt = np.dtype(object)
    if dt.kind not in "biuf" or dt.name in ("bfloat16",) or "float8" in dt.name:
        try:
            name = helper.tensor_dtype_to_string(elem_type) if elem_type else "undefined"
        except Exception:               # not an ONNX type at all
            name = f"{elem_type} (no ONNX type)"
        raise Unsupported(f"{what} has data type {name.replace('TensorProto.', '')}, which "
                          "graphc does not support (bool, ints, uints, float16/32/64 only)")
    return dt


def tensor_array(tensor, what: str) -> np.ndarray:
    """A TensorProto's values; a damaged one (its data does not fill its dims) is named."""
    from onnx import numpy_helper
    np_dtype(tensor.data_type, what)
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as e:
        raise GraphcError(f"{what} is damaged: {e} (dims {list(tensor.dims)})") from None


def value_type(vi) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of an ONNX ValueInfo; an unknown dim is None, a symbolic one its name."""
    kind = vi.type.WhichOneof("value")
    if kind != "tensor_type":
        raise Unsupported(f"input {vi.name!r} is a {kind or 'value of unknown type'}; graphc "
                          "imports tensors only")
    tt = vi.type.tensor_type
    dtype = np_dtype(tt.elem_type, f"input {vi.name!r}")
    if not tt.HasField("shape"):
        raise Unsupported(f"input {vi.name!r} has no shape (not even a rank)")
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tt.shape.dim)
    return dims, dtype


def attribute_values(node, entry) -> dict:
    """The node's attributes as Python values, defaults applied; unknown ones are Unsupported."""
    from onnx import helper
    given = {}
    for a in node.attribute:
        if a.name not in entry.attrs:
            raise Unsupported(f"attribute {a.name!r} is not supported")
        if a.ref_attr_name:
            raise Unsupported(f"attribute {a.name!r} refers to a function attribute")
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        elif a.type == a.TENSOR:
            v = tensor_array(v, f"attribute {a.name!r}")
        elif a.type in (a.GRAPHS, a.SPARSE_TENSOR, a.TYPE_PROTO):
            raise Unsupported(f"attribute {a.name!r} holds a list of subgraphs or a type")
        given[a.name] = v
    missing = [k for k, d in entry.attrs.items() if d is REQUIRED and k not in given]
    if missing:
        raise Unsupported(f"required attribute(s) {missing} missing")
    return {**entry.attrs, **given}


SHAPE_ONLY = ("Shape", "Size")      # read only their input's shape, never its values


def frozen_names(graph) -> set[str]:
    """Values that entries read as constants (shapes, axes, running stats): never variables.

    The set is closed backwards: a value computed into a shape (Sub, Concat, Cast...) needs its
    own inputs constant too, up to Shape and Size, which read only a shape.
    """
    frozen = set()
    for node in graph.node:
        entry = TABLE.get(node.op_type)
        if entry is None:
            continue
        for i, name in enumerate(node.input):
            if i in entry.const_inputs or (entry.weights is not None and i not in entry.weights):
                frozen.add(name)
    producers = {o: n for n in graph.node for o in n.output}
    todo = list(frozen)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.op_type in SHAPE_ONLY:
            continue
        for name in node.input:
            if name and name not in frozen:
                frozen.add(name)
                todo.append(name)
    return frozen


def label(node: Node, known: set[int], name: str | None, where: str) -> None:
    """Name the output and point `where` at the ONNX node, on the nodes just built for it.

    These nodes are fresh (no graph holds them yet), so setting the labels is still part of
    building them.
    """
    for n in toposort([node]):
        if id(n) not in known:
            n.where = where
    if id(node) not in known and name:
        node.name = name


def fold(outs: list[Node]) -> list[Node]:
    """Outputs computed from constants alone become constants (random ops stay as they are)."""
    nodes = toposort(outs)
    if any(n.op in ("placeholder", "variable") or n.opdef.random for n in nodes
           if n.op != "constant"):
        return outs
    values = evaluate(outs, {})
    return [o if o.op == "constant" else constant(v, dtype=v.dtype) for o, v in zip(outs, values)]


class Importer:
    def __init__(self, proto, trainable: bool, input_values: dict | None, collect: bool):
        self.proto, self.collect = proto, collect
        self.trainable, self.input_values = trainable, dict(input_values or {})
        self.opset = model_opset(proto)
        self.env: dict[str, Node] = {}
        self.errors: list[str] = []
        self.poisoned: set[str] = set()
        self.runtime = RuntimeSizes()
        self.scope: list[str] = []          # the nodes whose subgraphs are being imported

    def fail(self, where: str, e: Exception) -> None:
        msg = f"{where}: {e}"
        if not self.collect:       # an enclosing node adds its own name as the error passes
            raise (Unsupported if isinstance(e, Unsupported) else GraphcError)(msg) from None
        self.errors.append(": ".join(self.scope + [msg]))

    def run(self) -> OnnxModel:
        graph = self.proto.graph
        frozen = frozen_names(graph)
        params = self.leaves(graph, frozen)
        inputs = self.placeholders(graph)
        for i, node in enumerate(graph.node):
            self.import_node(node, i)
        outputs = {}
        for vi in graph.output:
            declared = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
            if vi.name in self.env:
                outputs[vi.name] = out = self.env[vi.name]
                if declared and onnx_type(out.dtype) != declared_type(declared):
                    self.fail(f"graph output {vi.name!r}", GraphcError(
                        f"is declared {declared_type(declared)}, but its node computes "
                        f"{out.dtype.name}"))
            elif vi.name not in self.poisoned:
                self.fail(f"graph output {vi.name!r}", GraphcError("is produced by no node"))
        self.refuse_stand_ins(list(outputs.values()))
        return OnnxModel(inputs, outputs, params, self.proto, self.opset)

    def subgraph(self, graph, values: list[Node]) -> list[Node]:
        """The outputs of a subgraph (a loop body, a branch) with its inputs bound to `values`;
        it reads the enclosing graph's values by name."""
        if len(graph.input) != len(values):
            raise Unsupported(f"subgraph {graph.name!r} takes {len(graph.input)} inputs, the "
                              f"op gives {len(values)}")
        outer = dict(self.env)
        try:
            self.env.update((vi.name, v) for vi, v in zip(graph.input, values))
            for init in graph.initializer:
                arr = tensor_array(init, f"initializer {init.name!r}")
                self.env[init.name] = constant(arr, dtype=arr.dtype, name=init.name)
            for i, node in enumerate(graph.node):
                self.import_node(node, i)
            missing = [o.name for o in graph.output if o.name not in self.env]
            if missing:
                raise Unsupported(f"subgraph {graph.name!r}: output(s) {missing} not imported")
            return [self.env[o.name] for o in graph.output]
        finally:
            self.env = outer

    def refuse_stand_ins(self, outputs: list[Node]) -> None:
        """A size known only at run time, used as a value, would compute with its stand-in."""
        for n in toposort(outputs):
            used = [a for a in n.inputs if self.runtime.is_marked(a)]
            if used or self.runtime.is_marked(n) and n in outputs:
                self.fail(n.where or f"graph output {n.name!r}", Unsupported(
                    "uses a size known only at run time as a value (computed from Shape of a "
                    "dynamic dim); give the input a fixed size"))

    def leaves(self, graph, frozen) -> dict[str, Node]:
        params = {}
        unknown = sorted(set(self.input_values) - {vi.name for vi in graph.input})
        if unknown:
            self.fail("input_values", GraphcError(
                f"{unknown} are not inputs of the model (its inputs: "
                f"{[vi.name for vi in graph.input]})"))
        for init in graph.initializer:
            if init.name in self.input_values:    # an input whose initializer is a default
                continue
            try:
                arr = tensor_array(init, f"initializer {init.name!r}")
            except GraphcError as e:
                self.fail(f"initializer {init.name!r}", e)
                self.poisoned.add(init.name)
                continue
            # a scalar is a scale, an eps or a fill value, not a weight to train
            if self.trainable and arr.dtype.kind == "f" and arr.ndim and init.name not in frozen:
                from graphc.api import variable
                node = variable(arr.copy(), name=init.name)
            else:
                node = constant(arr, dtype=arr.dtype, name=init.name)
            node.where = f"ONNX initializer {init.name!r}"
            params[init.name] = self.env[init.name] = node
        for sparse in graph.sparse_initializer:
            self.fail(f"initializer {sparse.values.name!r}",
                      Unsupported("sparse initializers are not supported"))
        return params

    def placeholders(self, graph) -> dict[str, Node]:
        from graphc.api import placeholder
        inputs = {}
        for vi in graph.input:
            if vi.name in self.env:            # an initializer listed as an input (IR < 4)
                continue
            try:
                shape, dtype = value_type(vi)
            except Unsupported as e:
                self.fail(f"graph input {vi.name!r}", e)
                self.poisoned.add(vi.name)
                continue
            node = placeholder(shape, dtype=dtype, name=vi.name)
            if vi.name in self.input_values:   # checked as a feed of the input would be
                try:
                    arr = checked_feed(node, self.input_values[vi.name])
                except GraphcError as e:
                    self.fail(f"input_values[{vi.name!r}]", e)
                    self.poisoned.add(vi.name)
                    continue
                node = constant(arr, dtype=dtype, name=vi.name)
            else:
                inputs[vi.name] = node
            node.where = f"ONNX graph input {vi.name!r}"
            self.env[vi.name] = node
        return inputs

    def import_node(self, node, index: int) -> None:
        name = node.name or f"{node.op_type}_{index}"
        where = f"ONNX node {name!r} ({node.op_type})"
        try:
            if node.domain not in ("", "ai.onnx"):
                raise Unsupported(f"domain {node.domain!r} is not supported")
            entry = TABLE.get(node.op_type)
            if entry is None:
                raise Unsupported(f"op type {node.op_type} is not supported")
            schema_check(node, self.opset)
            attrs = attribute_values(node, entry)
        except GraphcError as e:
            self.fail(where, e)
            self.poisoned.update(node.output)
            return
        if any(i in self.poisoned for i in node.input):
            self.poisoned.update(node.output)
            return
        try:
            missing = [i for i in node.input if i and i not in self.env]
            if missing:
                raise GraphcError(f"input(s) {missing} are produced by no earlier node")
            problem = inputs_problem(node, self.opset)
            if problem:
                raise GraphcError(problem)
            again = [o for o in node.output if o in self.env]
            if again:
                raise GraphcError(f"output(s) {again} already name another value (a graph "
                                  "input, an initializer or an earlier node's output); ONNX "
                                  "assigns each name once")
            args = [self.env[i] if i else None for i in node.input]
            problem = types_problem(node, self.opset, args)
            if problem:
                raise GraphcError(problem)
            ctx = Ctx(node.op_type, name, self.opset, len(node.output), self.runtime,
                      self.subgraph)
            self.scope.append(where)
            try:
                with name_scope(name):
                    outs = entry.build(ctx, *args, **attrs)
            finally:
                self.scope.pop()
            outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
            wanted = [k for k, o in enumerate(node.output) if o]
            if wanted and max(wanted) >= len(outs) or any(outs[k] is None for k in wanted):
                raise Unsupported(f"output {max(wanted)} ({node.output[max(wanted)]!r}) is "
                                  "not supported")
            outs = fold([outs[k] for k in wanted])
            if any(self.runtime.is_marked(a) for a in args):
                for out in outs:
                    if out.op == "constant":
                        self.runtime.mark(out)
        except GraphcError as e:
            self.fail(where, e)
            self.poisoned.update(node.output)
            return
        except (ValueError, TypeError, IndexError, ArithmeticError, MemoryError) as e:
            # a hostile or damaged model's values (ConstantOfShape of [-3] or [10**10], a
            # Range of 10**12) met NumPy while folding: said as the node's error
            self.fail(where, GraphcError(f"{type(e).__name__}: {e}"))
            self.poisoned.update(node.output)
            return
        known = {id(a) for a in args if a is not None}
        for k, out in zip(wanted, outs):
            label(out, known, node.output[k], where)
            self.env[node.output[k]] = out


def load(model, trainable: bool = False, input_values: dict | None = None) -> OnnxModel:
    """Import an ONNX model (path or ModelProto) as graphc nodes; raises on anything unsupported."""
    return Importer(read_model(model), trainable, input_values, collect=False).run()


def check(model, input_values: dict | None = None) -> list[str]:
    """Every unsupported op, attribute value or data type of the model, one message each."""
    importer = Importer(read_model(model), False, input_values, collect=True)
    importer.run()
    return importer.errors
