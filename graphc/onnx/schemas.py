"""What ONNX's operator schemas say about a node, checked before its entry builds it: which
older opsets graphc imports, the inputs an op takes, and the types its constraints allow.
"""
from __future__ import annotations

import numpy as np

from graphc.onnx.table import Unsupported

MIN_OPSET = 13


# older versions whose differences from the one in force at opset 13 graphc's entries take:
# what graphc does not import (sequence types in If/Loop bodies; Constant's attributes), an
# attribute that became an input (axes, split: the entries read either), Scan's negative axes,
# Softmax's flattening of the axes from `axis` on (the entries flatten at opsets below 13),
# Dropout's ratio attribute and mask type, Upsample's scales attribute
SAME_ON_TENSORS = {"If": 11, "Loop": 11, "Scan": 9, "Constant": 9, "ReduceSum": 1, "Split": 2,
                   "Squeeze": 1, "Unsqueeze": 1, "Softmax": 1, "LogSoftmax": 1, "Hardmax": 1,
                   "Dropout": 7, "Upsample": 7}


def signature(schema) -> tuple:
    """What a node of the op may say: attributes with their defaults, inputs, outputs."""
    return (sorted((a.name, a.type, str(a.default_value)) for a in schema.attributes.values()),
            [(p.name, p.option) for p in schema.inputs],
            [(p.name, p.option) for p in schema.outputs])


def schema_check(node, opset: int) -> None:
    """Older opsets are imported where the op's definition then says what the one in force at
    opset 13 says: the same attributes (and defaults), inputs and outputs, as when a version
    only adds types (Add-7, Relu-6, ReduceMean-11...), or a difference listed above. An op
    its opset no longer has (Upsample from 10, Scatter from 11) is refused, as onnxruntime does."""
    from onnx import defs
    try:
        old = defs.get_schema(node.op_type, opset)
        new = defs.get_schema(node.op_type, max(opset, MIN_OPSET))
    except Exception:
        if opset >= MIN_OPSET:
            return
        raise Unsupported(f"no schema of {node.op_type} at opset {opset}") from None
    if old.deprecated:
        raise Unsupported(f"{node.op_type} is deprecated at opset {opset} (since "
                          f"{node.op_type}-{old.since_version})")
    if opset >= MIN_OPSET:
        return
    if old.since_version < SAME_ON_TENSORS.get(node.op_type, new.since_version) \
            and signature(old) != signature(new):
        raise Unsupported(f"opset {opset} ({node.op_type}-{old.since_version}) is older than "
                          f"the supported opsets {MIN_OPSET}+ ({node.op_type}-"
                          f"{new.since_version}), and differs from it")


def inputs_problem(node, opset: int) -> str | None:
    """What is wrong with the node's inputs by the op's schema: too many, or a required one
    missing or '' (an entry would meet None where it needs a tensor); None if nothing."""
    from onnx import defs
    try:
        formal = defs.get_schema(node.op_type, opset).inputs
    except Exception:
        return None
    option = defs.OpSchema.FormalParameterOption
    if (not formal or formal[-1].option != option.Variadic) and len(node.input) > len(formal):
        return f"{len(node.input)} inputs given; {node.op_type} takes at most {len(formal)}"
    given = list(node.input) + [""] * (len(formal) - len(node.input))
    empty = [f"{k} ({p.name})" for k, (name, p) in enumerate(zip(given, formal))
             if not name and p.option == option.Single]
    return f"required input(s) {empty} are missing or left empty ('')" if empty else None


def onnx_type(dtype: np.dtype) -> str:
    """'tensor(float)' for float32: how ONNX's type constraints name a dtype."""
    from onnx import TensorProto, helper
    return f"tensor({TensorProto.DataType.Name(helper.np_dtype_to_tensor_dtype(dtype)).lower()})"


def declared_type(elem_type: int) -> str:
    from onnx import TensorProto
    try:
        return f"tensor({TensorProto.DataType.Name(elem_type).lower()})"
    except ValueError:
        return f"type {elem_type}"


def types_problem(node, opset: int, args: list) -> str | None:
    """Inputs whose types the op's schema does not allow: an input of a type its constraint
    leaves out (float indices), or two inputs of one type parameter that differ (Add of
    float32 and float64), where NumPy would promote silently and onnxruntime refuses."""
    from onnx import defs
    try:
        schema = defs.get_schema(node.op_type, opset)
    except Exception:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    formal = list(schema.inputs)
    if formal and formal[-1].option == defs.OpSchema.FormalParameterOption.Variadic:
        formal += [formal[-1]] * (len(args) - len(formal))
    bound: dict[str, tuple] = {}
    for k, (p, x) in enumerate(zip(formal, args)):
        if x is None or not p.is_homogeneous:
            continue
        have = onnx_type(x.dtype)
        if have not in allowed.get(p.type_str, {p.type_str}):
            return f"input {k} ({p.name}) is {x.dtype.name}, which {node.op_type} does not take"
        first = bound.setdefault(p.type_str, (k, p.name, x.dtype))
        if first[2] != x.dtype:
            return (f"inputs {first[0]} ({first[1]}) and {k} ({p.name}) must have one type, "
                    f"got {first[2].name} and {x.dtype.name}")
    return None
