"""The op declarations, one module per family; importing this fills the op table."""
from graphc.ops import activations, elementwise, fused, indexing, items, layout, linalg, nn, \
    random, reduce, shape, statistics  # noqa: F401
from graphc.ops import image, integer, trig  # noqa: F401  (ONNX-needed families)
