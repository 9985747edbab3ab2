"""ONNX import and export. `import graphc` never needs onnx: this package imports it lazily,
inside the functions that read or write ONNX files.

    model = graphc.onnx.load("model.onnx")          # .inputs / .outputs / .params by ONNX name
    graphc.onnx.check("model.onnx")                 # every unsupported op, attribute or type
    graphc.onnx.save("out.onnx", inputs, outputs)   # a graphc graph as an ONNX model
"""
from __future__ import annotations

from graphc.onnx import control, ops_attention, ops_extra, ops_image  # noqa: F401  (the table)
from graphc.onnx import ops_math  # noqa: F401
from graphc.onnx import ops_nn, ops_quant, ops_reduce, ops_shape  # noqa: F401
from graphc.onnx.importer import OnnxModel, check, load  # noqa: F401
from graphc.onnx.table import TABLE, Unsupported  # noqa: F401


def save(path, inputs, outputs, opset: int | None = None):
    """Write the graph from `inputs` to `outputs` as an ONNX model (see exporter.export)."""
    from graphc.onnx.exporter import export
    return export(path, inputs, outputs, opset)


def load_outputs(path) -> list:
    """The output nodes of an ONNX model (for `graphc render/formula model.onnx`)."""
    return list(load(path).outputs.values())


def imported_ops() -> list[str]:
    """The ONNX op types that have an import entry."""
    return sorted(TABLE)
