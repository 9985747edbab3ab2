"""Import entries for ONNX's fused transformer ops (Attention, RotaryEmbedding, SwiGLU) as
compositions of graphc ops, following the ONNX definitions step by step."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.onnx.ops_math import like, need_float
from graphc.onnx.ops_shape import pad_axis, reshape_to
from graphc.onnx.table import REQUIRED, onnx_op


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


@onnx_op("LinearAttention", chunk_size=64, kv_num_heads=REQUIRED, q_num_heads=REQUIRED,
         scale=0.0, update_rule="gated_delta")
def linear_attention(ctx, q, k, v, past_state=None, decay=None, beta=None, *, chunk_size,
                     kv_num_heads, q_num_heads, scale, update_rule):
    """The recurrent form, one step per token (float32 state, as ONNX's definition)."""
    need_float(q)
    ctx.need(update_rule in ("linear", "gated", "delta", "gated_delta"), update_rule)
    ctx.need(q.ndim == 3 and q_num_heads % kv_num_heads == 0, "3-D inputs with grouped heads")
    gating, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta",
                                                                            "gated_delta")
    ctx.need((decay is not None) == gating and (beta is not None) == delta,
             f"decay/beta inputs for update_rule={update_rule!r}")
    b, t, _ = q.shape
    f32 = [gc.cast(heads_first(a, h), "float32")
           for a, h in ((q, q_num_heads), (k, kv_num_heads), (v, kv_num_heads))]
    q4, k4, v4 = f32
    d_k, d_v = q4.shape[3], v4.shape[3]
    if gating:
        g4 = heads_first(decay, kv_num_heads) if decay.shape[-1] != kv_num_heads else \
            gc.transpose(reshape_to(decay, (b, t, kv_num_heads, 1)), (0, 2, 1, 3))
        g4 = gc.cast(g4, "float32")
    if delta:
        beta4 = gc.cast(gc.transpose(reshape_to(beta, (b, t, beta.shape[-1], 1)),
                                     (0, 2, 1, 3)), "float32")
    state = gc.constant(np.zeros((b, kv_num_heads, d_k, d_v), np.float32)) \
        if past_state is None else gc.cast(past_state, "float32")
    scale = 1 / np.sqrt(d_k) if not scale else scale
    group = q_num_heads // kv_num_heads
    index = gc.constant(np.repeat(np.arange(kv_num_heads), group))
    outs = []
    for i in range(t):
        q_t, k_t, v_t = q4[:, :, i], k4[:, :, i], v4[:, :, i]
        if gating:
            state = state * gc.expand_dims(gc.exp(g4[:, :, i]), -1)
        if delta:
            got = gc.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = beta4[:, :, i] * (v_t - got)
        state = state + gc.expand_dims(k_t, -1) * gc.expand_dims(v_t, -2)
        read = state if group == 1 else gc.take(state, index, axis=1)
        outs.append(gc.einsum("bhd,bhdm->bhm", q_t, read) * np.float32(scale))
    out = gc.transpose(gc.stack(outs, axis=2), (0, 2, 1, 3))
    out = gc.cast(reshape_to(out, (b, t, q_num_heads * d_v)), q.dtype)
    return out, gc.cast(state, q.dtype if past_state is None else past_state.dtype)


@onnx_op("CausalConvWithState", activation="none")
def causal_conv(ctx, x, w, bias=None, past_state=None, *, activation):
    """Depthwise 1-D conv over [past_state, x] (valid), optional SiLU; the last k-1 inputs."""
    need_float(x)
    ctx.need(activation in ("none", "silu", "swish"), f"activation={activation!r}")
    n, c, length = x.shape
    k = w.shape[2]
    pad = gc.constant(np.zeros((n, c, k - 1), x.dtype)) if past_state is None else past_state
    full = gc.concat([pad, x], axis=2)
    wide = gc.cast(full, "float32") if x.dtype == np.float16 else full   # accumulate wide
    out = None
    for j in range(k):                          # sum_j w[c, 0, j] * full[:, c, t + j]
        tap = gc.cast(gc.reshape(w[:, 0, j], (1, c, 1)), wide.dtype)
        term = gc.slice(wide, 2, j, j + length) * tap
        out = term if out is None else out + term
    if bias is not None:
        out = out + gc.cast(gc.reshape(bias, (1, c, 1)), wide.dtype)
    out = gc.cast(out, x.dtype)
    if activation != "none":
        f = gc.cast(out, "float32")
        out = gc.cast(f * gc.sigmoid(f), x.dtype)
    return out, gc.slice(full, 2, full.shape[2] - (k - 1))
