"""Ops ONNX models need beyond the core families: cumulative sums, top-k, resizing."""
from __future__ import annotations

__all__: list[str] = []
