"""Running onnx's own node test cases through import + gc.function.

A case's graph is built when its inputs are seen: placeholders take the inputs' concrete
shapes, and inputs that an op reads as constants (shapes, axes, pads) are frozen to their
values. `run_case` says "pass", "fail" (a bug inside the supported set) or "unsupported"
(with the reason), never a silent pass.
"""
from __future__ import annotations

import numpy as np

from graphc.onnx.importer import Importer, frozen_names, read_model
from graphc.onnx.table import Unsupported

# out-of-scope families: the reason is reported once per family, the cases are skipped
OUT_OF_SCOPE = {
    "strings": "string tensors (graphc arrays are numbers and bools)",
    "sequences": "sequence and optional types (graphc values are tensors)",
    "quantized": "8/4/2-bit float, 4/2-bit int and bfloat16 types, BitCast",
    "training": "random ops (Bernoulli, RandomNormal...): values differ from onnx's generator",
    "ml": "other domains: ai.onnx.ml (classical ML), ai.onnx.preview.training",
}
FAMILY_OPS = {
    "strings": {"StringNormalizer", "StringConcat", "StringSplit", "RegexFullMatch",
                "TfIdfVectorizer", "LabelEncoder", "ImageDecoder"},
    "sequences": {"SequenceInsert", "SequenceMap", "SplitToSequence", "OptionalHasElement",
                  "OptionalGetElement", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
                  "SequenceErase", "SequenceLength", "ConcatFromSequence", "Optional"},
    "quantized": {"BitCast"},
    "training": {"Bernoulli", "RandomNormal", "RandomUniform",
                 "RandomNormalLike", "RandomUniformLike", "Multinomial"},
    "ml": {"TreeEnsemble", "ArrayFeatureExtractor", "Binarizer"},
}
# failures understood but not fixed: the conformance test expects them to fail (strict xfail)
KNOWN_FAILURES = {
    "test_dft_inverse": "the expected output carries the FFT's float32 round-off (1.9e-7 where "
                        "the exact value is 0); graphc's DFT is an exact matmul; atol is 1e-7",
    "test_dft_inverse_opset19": "as test_dft_inverse",
}
SMALL_TYPES = ("float8", "float4", "int4", "uint4", "int2", "uint2", "bfloat16", "e8m0")


def family(model) -> str | None:
    """The out-of-scope family of a case, from its ops and the types of its inputs/outputs."""
    from onnx import helper
    ops = {n.op_type for n in model.graph.node}
    for fam, members in FAMILY_OPS.items():
        if ops & members:
            return fam
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return "ml"
    for vi in list(model.graph.input) + list(model.graph.output):
        kind = vi.type.WhichOneof("value")
        if kind in ("sequence_type", "optional_type", "map_type"):
            return "sequences"
        if kind == "tensor_type":
            name = helper.tensor_dtype_to_string(vi.type.tensor_type.elem_type).lower()
            if "string" in name:
                return "strings"
            if any(t in name for t in SMALL_TYPES):
                return "quantized"
    for n in model.graph.node:
        for a in n.attribute:
            if a.name == "to" and any(t in helper.tensor_dtype_to_string(a.i).lower()
                                      for t in SMALL_TYPES + ("string",)):
                return "quantized" if "string" not in helper.tensor_dtype_to_string(a.i) \
                    .lower() else "strings"
    return None


def build(model, inputs: list[np.ndarray]):
    """Import the case's model with placeholders of the inputs' shapes; (function, feeds)."""
    import graphc as gc
    model = read_model(model)
    graph = model.graph
    names = [vi.name for vi in graph.input if vi.name not in {i.name for i in graph.initializer}]
    arrays = dict(zip(names, inputs))
    frozen = frozen_names(graph)
    for vi in graph.input:          # the placeholder takes the data's concrete shape
        if vi.name in arrays and vi.type.WhichOneof("value") == "tensor_type":
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in np.shape(arrays[vi.name]):
                shape.dim.add().dim_value = d
    values = {k: v for k, v in arrays.items() if k in frozen}
    imported = Importer(model, False, values, collect=False).run()
    feeds_for = [imported.inputs[n] for n in names if n in imported.inputs]
    outs = [imported.outputs[vi.name] for vi in graph.output]
    fn = gc.function(feeds_for, outs)
    return fn, [arrays[n] for n in names if n in imported.inputs]


def run_case(model, data_sets, rtol: float, atol: float) -> tuple[str, str]:
    """('pass' | 'fail' | 'unsupported' | 'out of scope', detail)."""
    fam = family(model)
    if fam is not None:
        return "out of scope", fam
    try:
        for inputs, expected in data_sets:
            inputs, expected = [array(a) for a in inputs], [array(e) for e in expected]
            fn, feeds = build(model, inputs)
            got = fn(*feeds)
            for g, e in zip(got, expected):
                compare(np.asarray(g), np.asarray(e), rtol, atol)
    except Unsupported as e:
        return "unsupported", str(e)
    except Exception as e:     # every other error is a bug inside the supported set
        return "fail", f"{type(e).__name__}: {e}"
    return "pass", ""


def array(value) -> np.ndarray:
    """A case's input or output as an array (some cases hold TensorProtos)."""
    from onnx import TensorProto, numpy_helper
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def compare(got: np.ndarray, want: np.ndarray, rtol: float, atol: float) -> None:
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape}, expected {want.shape}")
    if got.dtype != want.dtype:
        raise AssertionError(f"dtype {got.dtype}, expected {want.dtype}")
    if want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
