"""Neural-network ops: softmax family, losses, convolution, pooling, dropout."""
from __future__ import annotations

__all__: list[str] = []
