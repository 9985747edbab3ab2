"""Import entries for the remaining ONNX ops: cumulative sums, top-k, scatter and gather
variants, einsum, recurrent layers (unrolled over a static sequence length)."""
from __future__ import annotations
