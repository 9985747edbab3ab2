"""The op declarations, one module per family; importing this fills the op table."""
from graphc.ops import elementwise, fused, items, nn, reduce, shape  # noqa: F401
