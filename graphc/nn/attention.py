"""Multi-head scaled dot-product attention as one layer, written with batched matmuls.

The heads are an axis, not a loop: (B, T, D) is reshaped to (B, T, H, D/H) and transposed
to (B, H, T, D/H), so every head's scores are one (B, H, Tq, D/H) @ (B, H, D/H, Tk) matmul
and the graph stays the same size for any number of heads.
"""
from __future__ import annotations

import zlib

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn.layers import Dense
from graphc.nn.module import Layer


def swap_axes(x: Node, a: int, b: int) -> Node:
    axes = list(range(x.ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return gc.transpose(x, tuple(axes))


class MultiHeadAttention(Layer):
    """softmax(Q K^T / sqrt(d_head)) V for `num_heads` heads, then an output projection.

    `mha(x)` is self-attention; `mha(q, kv)` attends from q to kv, `mha(q, k, v)` takes
    keys and values apart. Inputs are (..., T, D) with the embedding last (PyTorch's
    batch_first=True); the output has the query's shape. `causal=True` lets position i see
    only positions <= i. Q, K, V and the output projection are Dense layers (`query`, `key`,
    `value`, `output`) of D units each; after a call, `.attention` is the node of the
    attention weights (B, H, Tq, Tk), e.g. to look at or render.
    """
    kind = "attention"

    def __init__(self, num_heads: int, causal: bool = False, use_bias: bool = True,
                 dropout: float = 0.0, name: str | None = None, seed: int | None = None):
        super().__init__(name, seed)
        if int(num_heads) < 1:
            raise GraphcError(f"MultiHeadAttention needs num_heads >= 1, got {num_heads}")
        self.num_heads, self.causal, self.use_bias = int(num_heads), causal, use_bias
        self.dropout = float(dropout)
        self.attention: Node | None = None

    def named_children(self):
        if not self.built:
            return []
        return [("query", self.query), ("key", self.key), ("value", self.value),
                ("output", self.output)]

    def build(self, q, k=None, v=None):
        for x in (q, k, v):
            if x is not None and (x.ndim < 2 or not isinstance(x.shape[-1], int)):
                raise GraphcError(f"MultiHeadAttention {self.name!r}: inputs are (..., T, D) "
                                  f"with a known D, got {format_shape(x.shape)} "
                                  f"(built at {x.where})")
        d = q.shape[-1]
        if d % self.num_heads:
            raise GraphcError(f"MultiHeadAttention {self.name!r}: the embedding size {d} "
                              f"does not split into {self.num_heads} heads")
        self.d_model, self.d_head = d, d // self.num_heads
        self.query, self.key, self.value, self.output = (
            Dense(d, use_bias=self.use_bias, seed=self.seed) for _ in range(4))
        self.built = True                 # so that named_children lists them now

    def forward(self, q, k=None, v=None, *, training):
        k = q if k is None else k
        v = k if v is None else v
        if q.shape[-1] != self.d_model:
            raise GraphcError(f"MultiHeadAttention {self.name!r} was built for D = "
                              f"{self.d_model}, got a query {format_shape(q.shape)} "
                              f"(built at {q.where})")
        qh = self.heads(self.query(q)) * (1.0 / np.sqrt(self.d_head))
        kh, vh = self.heads(self.key(k)), self.heads(self.value(v))
        scores = qh @ swap_axes(kh, -1, -2)                      # (B, H, Tq, Tk)
        if self.causal:
            scores = self.mask_future(scores)
        weights = gc.softmax(scores, axis=-1)
        self.attention = weights
        if training and self.dropout > 0.0:
            seed = zlib.crc32(f"{self.seed or 0}/{self.full_name}".encode())
            weights = gc.dropout(weights, self.dropout, seed=seed)
        mixed = swap_axes(weights @ vh, -3, -2)                  # (B, Tq, H, d_head)
        shape = self.known(mixed.shape[:-2]) + (self.d_model,)
        return self.output(gc.reshape(mixed, shape))

    def known(self, dims) -> tuple[int, ...]:
        """dims with the one unknown size as -1, for reshape."""
        out = tuple(d if isinstance(d, int) else -1 for d in dims)
        if out.count(-1) > 1:
            raise GraphcError(f"MultiHeadAttention {self.name!r}: the sizes "
                              f"{format_shape(tuple(dims))} before D may have only one "
                              f"unknown (the batch); give the sequence length")
        return out

    def heads(self, x: Node) -> Node:
        """(..., T, D) -> (..., H, T, d_head)."""
        split = gc.reshape(x, self.known(x.shape[:-1]) + (self.num_heads, self.d_head))
        return swap_axes(split, -3, -2)

    def mask_future(self, scores: Node) -> Node:
        tq, tk = scores.shape[-2:]
        if not (isinstance(tq, int) and isinstance(tk, int)):
            raise GraphcError(f"MultiHeadAttention {self.name!r}: causal=True needs known "
                              f"sequence lengths, got scores {format_shape(scores.shape)}")
        allowed = gc.constant(np.tril(np.ones((tq, tk), bool)))
        never = gc.constant(np.asarray(-1e9, scores.dtype))
        return gc.where(allowed, scores, never)
