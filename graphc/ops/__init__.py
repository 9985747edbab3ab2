"""The op declarations, one module per family; importing this fills the op table."""
from graphc.ops import activations, elementwise, fused, indexing, items, layout, linalg, nn, \
    random, reduce, shape, statistics  # noqa: F401
