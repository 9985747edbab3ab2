"""Multi-head scaled dot-product attention as one layer, written with batched matmuls.

The heads are an axis, not a loop: the projections are kept per head, W_q of shape
(H, D, d_head), so (B, 1, T, D) @ W_q is every head's queries (B, H, T, d_head) in one
batched matmul, the scores are one (B, H, Tq, d) @ (B, H, d, Tk) matmul, and the output
projection W_o (H, d_head, D) sums the heads back to (B, T, D) (the einsum
'bhtd,hdD->btD'). No tensor is reshaped after a transpose, so nothing is copied.
"""
from __future__ import annotations

import zlib

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn.module import Layer
from graphc.scope import user_line


def swap_last(x: Node) -> Node:
    return gc.transpose(x, tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2))


class MultiHeadAttention(Layer):
    """softmax(Q K^T / sqrt(d_head)) V for `num_heads` heads, then an output projection.

    `mha(x)` is self-attention; `mha(q, kv)` attends from q to kv, `mha(q, k, v)` takes
    keys and values apart. Inputs are (..., T, D) with the embedding last (PyTorch's
    batch_first=True); the output has the query's shape, D = embed size, d_head = D / H.
    `causal=True` lets query position i see only key positions <= i. Variables: `W_q`,
    `W_k`, `W_v` (H, D_in, d_head), their biases (H, 1, d_head), `W_o` (H, d_head, D) and
    `b_o` (D,), Glorot-initialized as the (D_in, D) matrices they are slices of. After a
    call, `.attention` is the node of the attention weights (B, H, Tq, Tk).
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

    def build(self, q, k=None, v=None):
        k = q if k is None else k
        v = k if v is None else v
        for x in (q, k, v):
            if x.ndim < 2 or not isinstance(x.shape[-1], int):
                raise GraphcError(f"MultiHeadAttention {self.name!r}: inputs are (..., T, D) "
                                  f"with a known D, got {format_shape(x.shape)} "
                                  f"(built at {x.where})")
        d, h = q.shape[-1], self.num_heads
        if d % h:
            raise GraphcError(f"MultiHeadAttention {self.name!r}: the embedding size {d} "
                              f"does not split into {h} heads\n  at {user_line()}")
        self.d_model, self.d_head = d, d // h
        dtype = q.dtype if q.dtype.kind == "f" else np.dtype("float32")
        for what, x in (("q", q), ("k", k), ("v", v)):
            w = self.add_variable(f"W_{what}", (h, x.shape[-1], self.d_head), "glorot",
                                  x.shape[-1], d, dtype, kernel=True)
            b = (self.add_variable(f"b_{what}", (h, 1, self.d_head), "zeros", d, d, dtype)
                 if self.use_bias else None)
            setattr(self, f"W_{what}", w)
            setattr(self, f"b_{what}", b)
        self.W_o = self.add_variable("W_o", (h, self.d_head, d), "glorot", d, d, dtype,
                                     kernel=True)
        self.b_o = (self.add_variable("b_o", (d,), "zeros", d, d, dtype)
                    if self.use_bias else None)

    def forward(self, q, k=None, v=None, *, training, attn_mask=None, key_padding_mask=None):
        k = q if k is None else k
        v = k if v is None else v
        if q.shape[-1] != self.d_model:
            raise GraphcError(f"MultiHeadAttention {self.name!r} was built for D = "
                              f"{self.d_model}, got a query {format_shape(q.shape)} "
                              f"(built at {q.where})")
        scale = float(1.0 / np.sqrt(self.d_head))
        q4, k4, v4 = self.add_head_axis(q, k, v)                  # (B, 1, T, D)
        qh = self.project(q4, self.W_q, self.b_q) * scale         # (B, H, Tq, d)
        kh = self.project(k4, self.W_k, self.b_k)                 # (B, H, Tk, d)
        vh = self.project(v4, self.W_v, self.b_v)                 # (B, H, Tk, d)
        scores = qh @ swap_last(kh)                               # (B, H, Tq, Tk)
        if self.causal:
            scores = self.mask_future(scores)
        if attn_mask is not None:
            scores = self.mask(scores, self.attn_mask(attn_mask, scores), "attn_mask")
        if key_padding_mask is not None:
            scores = self.mask(scores, self.padding_mask(key_padding_mask, scores),
                               "key_padding_mask")
        weights = gc.softmax(scores, axis=-1)
        self.attention = weights
        if training and self.dropout > 0.0:
            seed = zlib.crc32(f"{self.seed or 0}/{self.full_name}".encode())
            weights = gc.dropout(weights, self.dropout, seed=seed)
        out = gc.sum((weights @ vh) @ self.W_o, axis=-3)          # (B, Tq, D)
        return out + self.b_o if self.b_o is not None else out

    def add_head_axis(self, *xs: Node) -> list[Node]:
        """(..., T, D) -> (..., 1, T, D), once per distinct input (self-attention: once)."""
        done: dict[int, Node] = {}
        for x in xs:
            if id(x) not in done:
                dims = tuple(d if isinstance(d, int) else -1 for d in x.shape)
                if dims.count(-1) > 1:
                    raise GraphcError(f"MultiHeadAttention {self.name!r}: an input "
                                      f"{format_shape(x.shape)} may have only one unknown "
                                      f"size (the batch); give the sequence length (built "
                                      f"at {x.where})")
                done[id(x)] = gc.reshape(x, dims[:-2] + (1,) + dims[-2:])
        return [done[id(x)] for x in xs]

    def project(self, x4: Node, w: Node, b: Node | None) -> Node:
        """(..., 1, T, D_in) @ (H, D_in, d_head) -> (..., H, T, d_head): every head at once."""
        y = x4 @ w
        return y + b if b is not None else y

    # masks, PyTorch's meanings: True (bool) = may not attend; a float mask is added ------
    def mask(self, scores: Node, mask: Node, what: str) -> Node:
        if mask.dtype == bool:
            return gc.where(mask, self.never(scores), scores)
        mask = mask if mask.dtype == scores.dtype else gc.cast(mask, scores.dtype)
        # -inf is a True: a row of them attends uniformly (PyTorch's softmax gives NaN, and
        # NaN gradients to every weight); values and gradients as PyTorch's elsewhere
        ninf = gc.constant(np.asarray(-np.inf, scores.dtype))
        return gc.where(gc.equal(mask, ninf), self.never(scores), scores + mask)

    def never(self, scores: Node) -> Node:
        """The score of a masked position: exp of it minus the row's max is 0, and a row
        with every key masked attends uniformly instead of giving NaN (as -inf would)."""
        return gc.constant(np.asarray(max(-1e9, float(np.finfo(scores.dtype).min)),
                                      scores.dtype))

    def as_mask(self, mask, what: str) -> Node:
        mask = mask if isinstance(mask, Node) else gc.constant(np.asarray(mask))
        if mask.dtype != bool and mask.dtype.kind != "f":
            raise GraphcError(f"MultiHeadAttention {self.name!r}: {what} must be bool (True: "
                              f"may not attend) or float (added to the scores), got "
                              f"{mask.dtype.name}\n  at {user_line()}")
        return mask

    def refuse(self, what: str, mask: Node, scores: Node, want: str) -> None:
        raise GraphcError(f"MultiHeadAttention {self.name!r}: {what} {format_shape(mask.shape)} "
                          f"does not fit the scores {format_shape(scores.shape)} (batch..., "
                          f"heads, query, key): give {want}\n  at {user_line()}")

    def attn_mask(self, mask, scores: Node) -> Node:
        """(Tq, Tk) for every example and head; (B * H, Tq, Tk) as PyTorch (example b, head h
        at b * H + h); or any shape that broadcasts to the scores (B, H, Tq, Tk)."""
        mask = self.as_mask(mask, "attn_mask")
        want = "(query, key), (batch * heads, query, key) or (batch, heads, query, key)"
        if mask.ndim == 3 and scores.ndim == 4:
            rows = mask.shape[0]
            if not all(isinstance(d, int) for d in mask.shape[1:]) \
                    or isinstance(rows, int) and rows % self.num_heads:
                self.refuse("attn_mask", mask, scores, want)
            mask = gc.reshape(mask, (-1, self.num_heads) + mask.shape[1:])
        if mask.ndim < 2 or mask.ndim > scores.ndim or not fits(mask.shape, scores.shape):
            self.refuse("attn_mask", mask, scores, want)
        return mask

    def padding_mask(self, mask, scores: Node) -> Node:
        """(B, Tk): the keys each example ignores, for every head and query ((Tk,) without
        a batch)."""
        mask = self.as_mask(mask, "key_padding_mask")
        if mask.ndim == scores.ndim - 2 and mask.ndim >= 1:
            mask = gc.expand_dims(mask, (-2, -3)) if mask.ndim > 1 else mask
        else:
            self.refuse("key_padding_mask", mask, scores, "(batch, key)")
        if not fits(mask.shape, scores.shape):
            self.refuse("key_padding_mask", mask, scores, "(batch, key)")
        return mask

    def mask_future(self, scores: Node) -> Node:
        tq, tk = scores.shape[-2:]
        if not (isinstance(tq, int) and isinstance(tk, int)):
            raise GraphcError(f"MultiHeadAttention {self.name!r}: causal=True needs known "
                              f"sequence lengths, got scores {format_shape(scores.shape)}")
        allowed = gc.constant(np.tril(np.ones((tq, tk), bool)))
        return gc.where(allowed, scores, self.never(scores))


def fits(small, big) -> bool:
    """Shape `small` broadcasts to `big` (right-aligned; unknown sizes fit anything)."""
    for a, b in zip(reversed(small), reversed(big)):
        if isinstance(a, int) and isinstance(b, int) and a not in (1, b):
            return False
    return len(small) <= len(big)
