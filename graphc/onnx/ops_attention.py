"""Import entries for ONNX's fused transformer ops (Attention, RotaryEmbedding, SwiGLU) as
compositions of graphc ops, following the ONNX definitions step by step."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.onnx.ops_math import like, need_float
from graphc.onnx.ops_shape import pad_axis, reshape_to
from graphc.onnx.table import onnx_op


def heads_first(x, heads):
    """(B, S, H*D) -> (B, H, S, D)."""
    b, s, hidden = x.shape
    return gc.transpose(reshape_to(x, (b, s, heads, hidden // heads)), (0, 2, 1, 3))


def frontier(q, kv, offset, left=-1, right=-1, causal=True):
    """The additive causal / sliding-window bias: 0 where a query may attend, -inf elsewhere."""
    i = np.arange(q).reshape(q, 1)
    j = np.arange(kv).reshape(1, kv)
    per_batch = np.ndim(offset) > 0
    pos = i + (np.reshape(offset, (-1, 1, 1)) if per_batch else int(offset))
    if causal:
        allowed = j <= pos
    else:
        diff = pos - j
        allowed = np.ones(diff.shape, bool)
        if left >= 0:
            allowed &= diff <= left
        if right >= 0:
            allowed &= -diff <= right
    bias = np.where(allowed, 0.0, -np.inf)
    return bias.reshape(bias.shape[0], 1, q, kv) if per_batch else bias


@onnx_op("Attention", const=(6,), is_causal=0, kv_num_heads=None, q_num_heads=None,
         qk_matmul_output_mode=0, scale=None, softcap=0.0, softmax_precision=None,
         left_window_size=-1, right_window_size=-1)
def attention(ctx, q, k, v, mask=None, past_key=None, past_value=None, nonpad=None, *,
              is_causal, kv_num_heads, q_num_heads, qk_matmul_output_mode, scale, softcap,
              softmax_precision, left_window_size, right_window_size):
    need_float(q)
    ctx.need((past_key is None) == (past_value is None), "past_key without past_value")
    rank = q.ndim
    if rank == 3:
        ctx.need(q_num_heads is not None and kv_num_heads is not None, "3-D inputs need heads")
        q, k, v = heads_first(q, q_num_heads), heads_first(k, kv_num_heads), \
            heads_first(v, kv_num_heads)
    dt = q.dtype
    if scale is None:
        scale = 1 / np.sqrt(q.shape[3])
    root = like(q, np.sqrt(scale))
    if past_key is not None:
        k, v = gc.concat([past_key, k], axis=2), gc.concat([past_value, v], axis=2)
    present_key, present_value = k, v
    nq, nkv = q.shape[2], k.shape[2]
    offset = past_key.shape[2] if past_key is not None else 0
    if nonpad is not None and past_key is None:
        offset = ctx.const(nonpad, "nonpad_kv_seqlen").reshape(-1) - nq
    bias = gc.constant(np.zeros((nq, nkv), dt))
    if mask is not None and mask.shape[-1] < nkv:
        fill = like(mask, False if mask.dtype == bool else -np.inf)
        mask = pad_axis(ctx, mask, mask.ndim - 1, 0, nkv - mask.shape[-1], "constant", fill)
    if mask is not None and mask.dtype == bool:
        mask = gc.where(mask, like(q, 0), like(q, -np.inf))
    window = left_window_size >= 0 or right_window_size >= 0
    if is_causal:
        base = bias if mask is None else mask
        if window:
            base = bias + base
        bias = base + gc.constant(frontier(nq, nkv, offset).astype(dt))
    elif mask is not None:
        bias = bias + mask
    if window:
        bias = gc.constant(np.zeros((nq, nkv), dt)) + bias
        bias = bias + gc.constant(frontier(nq, nkv, offset, left_window_size,
                                           right_window_size, causal=False).astype(dt))
    if nonpad is not None:
        lengths = ctx.const(nonpad, "nonpad_kv_seqlen").reshape(-1, 1)
        pad = np.where(np.arange(nkv) < lengths, 0.0, -np.inf).reshape(-1, 1, 1, nkv)
        bias = bias + gc.constant(pad.astype(dt))
    heads_q = q.shape[1]
    heads_k = k.shape[1]
    if heads_q != heads_k and heads_q % heads_k == 0:
        index = gc.constant(np.repeat(np.arange(heads_k), heads_q // heads_k))
        k, v = gc.take(k, index, axis=1), gc.take(v, index, axis=1)
    qk = gc.matmul(q * root, gc.swapaxes(k, -1, -2) * root)
    if softcap is not None and softcap > 0:
        qk = gc.tanh(qk / like(qk, softcap)) * like(qk, softcap)
    scores = qk + bias
    out_qk = scores if qk_matmul_output_mode == 2 else qk
    if softmax_precision is not None:
        from graphc.onnx.ops_math import to_dtype
        scores = gc.cast(scores, to_dtype(softmax_precision))
    probs = gc.softmax(scores, axis=-1)
    top = gc.max(bias, axis=-1, keepdims=True)
    all_masked = gc.logical_and(gc.isinf(top), gc.less(top, like(top, 0)))
    probs = gc.where(all_masked, like(probs, 0), probs)
    if qk_matmul_output_mode == 3:
        out_qk = probs
    out_qk, probs = gc.cast(out_qk, dt), gc.cast(probs, dt)
    y = gc.matmul(probs, v)
    if rank == 3:
        y = gc.transpose(y, (0, 2, 1, 3))
        y = reshape_to(y, y.shape[:2] + (y.shape[2] * y.shape[3],))
    return y, present_key, present_value, out_qk
