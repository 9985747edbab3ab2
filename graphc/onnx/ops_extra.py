"""Import entries for the remaining ONNX ops: cumulative sums, top-k, scatter and gather
variants, einsum, compress, Lp pooling, rotary embeddings, SwiGLU, and the recurrent layers
(RNN, GRU, LSTM unrolled over their static sequence length)."""
from __future__ import annotations

import numpy as np

from graphc import api as gc
from graphc.ir import apply, constant
from graphc.onnx.ops_math import like, need_float
from graphc.onnx.ops_nn import average_pool, batch_positions
from graphc.onnx.ops_shape import norm, pad_axis, reshape_to, static
from graphc.onnx.table import REQUIRED, onnx_op


def cumulative(op):
    def build(ctx, x, axis, *, exclusive, reverse):
        a = norm(int(ctx.const(axis, "axis").reshape(-1)[0]), x.ndim)
        out = apply(op, x, axis=a, reverse=bool(reverse))
        if exclusive:            # shift by one: the identity element enters at the start
            n = static(x)[a]
            first = gc.broadcast_to(like(x, 0 if op == "cumsum" else 1),
                                    tuple(1 if i == a else d for i, d in enumerate(x.shape)))
            if reverse:
                out = gc.concat([gc.slice(out, a, 1, n), first], axis=a)
            else:
                out = gc.concat([first, gc.slice(out, a, 0, n - 1)], axis=a)
        return out
    return build


onnx_op("CumSum", const=(1,), exclusive=0, reverse=0)(cumulative("cumsum"))
onnx_op("CumProd", const=(1,), exclusive=0, reverse=0)(cumulative("cumprod"))


@onnx_op("TopK", const=(1,), axis=-1, largest=1, sorted=1)
def top_k(ctx, x, k, *, axis, largest, sorted):
    axis = norm(axis, x.ndim)
    k = int(ctx.const(k, "K").reshape(-1)[0])
    order = gc.argsort(x, axis=axis, descending=bool(largest))
    idx = gc.slice(order, axis, 0, k)
    return gc.take_along_axis(x, idx, axis=axis), idx


@onnx_op("ScatterElements", axis=0, reduction="none")
def scatter_elements(ctx, data, indices, updates, *, axis, reduction):
    return gc.scatter_elements(data, indices, updates, axis=axis, reduction=reduction)


@onnx_op("Scatter", axis=0)             # opsets 9-10's name of ScatterElements
def scatter(ctx, data, indices, updates, *, axis):
    return gc.scatter_elements(data, indices, updates, axis=axis, reduction="none")


@onnx_op("ScatterND", reduction="none")
def scatter_nd(ctx, data, indices, updates, *, reduction):
    return gc.scatter_nd(data, indices, updates, reduction=reduction)


@onnx_op("GatherND", batch_dims=0)
def gather_nd(ctx, data, indices, *, batch_dims):
    ctx.need(batch_dims == 0, f"batch_dims={batch_dims}")
    return gc.gather_nd(data, indices)


@onnx_op("Einsum", equation=REQUIRED)
def einsum(ctx, *xs, equation):
    spec = equation.replace(" ", "")
    if "->" not in spec:           # implicit output: the letters used once, sorted
        letters = spec.replace(",", "").replace("...", "")
        spec += "->" + ("..." if "..." in spec else "") + "".join(
            sorted(c for c in set(letters) if letters.count(c) == 1))
    lhs = spec.split("->")[0].replace("...", "")
    ctx.need(all(len(set(t)) == len(t) for t in lhs.split(",")), "diagonals and traces")
    return gc.einsum(spec, *xs)


@onnx_op("Compress", const=(1,), axis=None)
def compress(ctx, x, condition, *, axis):
    keep = np.flatnonzero(ctx.const(condition, "condition")).astype(np.int64)
    if axis is None:
        return gc.take(reshape_to(x, (int(np.prod(static(x))),)), constant(keep), axis=0)
    return gc.take(x, constant(keep), axis=norm(axis, x.ndim))


@onnx_op("LpPool", p=2, auto_pad="NOTSET", ceil_mode=0, dilations=None, kernel_shape=None,
         pads=None, strides=None)
def lp_pool(ctx, x, *, p, **attrs):
    """(sum over the window of |x|^p)^(1/p): an average pool of |x|^p times the window size."""
    need_float(x)
    size = int(np.prod(attrs["kernel_shape"]))
    powered = gc.abs(x) ** like(x, p)
    total = average_pool(ctx, powered, count_include_pad=1, **attrs) * like(x, size)
    return total ** like(x, 1 / p)


@onnx_op("SwiGLU", alpha=1.0)
def swiglu(ctx, a, b, *, alpha):
    need_float(a)
    from graphc.onnx.ops_math import in_float32
    return a * in_float32(gc.sigmoid, a * like(a, alpha)) * b


@onnx_op("RotaryEmbedding", interleaved=0, num_heads=0, rotary_embedding_dim=0)
def rotary(ctx, x, cos, sin, positions=None, *, interleaved, num_heads, rotary_embedding_dim):
    need_float(x)
    rank = x.ndim
    if rank == 3:                                       # (B, S, H*D) -> (B, S, H, D)
        ctx.need(num_heads > 0, "3-D input without num_heads")
        b, s, hidden = static(x)
        x = reshape_to(x, (b, s, num_heads, hidden // num_heads))
    else:                                               # (B, H, S, D) -> (B, S, H, D)
        x = gc.transpose(x, (0, 2, 1, 3))
    d = x.shape[-1]
    rd = rotary_embedding_dim or d
    if positions is not None:
        cos, sin = gc.take(cos, positions, axis=0), gc.take(sin, positions, axis=0)
    cos, sin = gc.expand_dims(cos, 2), gc.expand_dims(sin, 2)      # (B, S, 1, rd/2)
    rot, rest = gc.slice(x, 3, 0, rd), (gc.slice(x, 3, rd, d) if rd < d else None)
    half = rd // 2
    if interleaved:
        pairs = reshape_to(rot, rot.shape[:3] + (half, 2))
        x1, x2 = gc.slice(pairs, 4, 0, 1), gc.slice(pairs, 4, 1, 2)
        c, s_ = gc.expand_dims(cos, 4), gc.expand_dims(sin, 4)
        out = gc.concat([x1 * c - x2 * s_, x2 * c + x1 * s_], axis=4)
        out = reshape_to(out, rot.shape)
    else:
        x1, x2 = gc.slice(rot, 3, 0, half), gc.slice(rot, 3, half, rd)
        out = gc.concat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=3)
    if rest is not None:
        out = gc.concat([out, rest], axis=3)
    if rank == 3:
        return reshape_to(out, static(out)[:2] + (static(out)[2] * static(out)[3],))
    return gc.transpose(out, (0, 2, 1, 3))


# recurrent layers, unrolled -----------------------------------------------------------

ACTIVATIONS = {"Sigmoid": gc.sigmoid, "Tanh": gc.tanh, "Relu": gc.relu}


def activation_fns(ctx, given, default, directions):
    names = list(given or default * directions)
    ctx.need(all(n in ACTIVATIONS for n in names), f"activations {names}")
    per = len(names) // directions
    return [[ACTIVATIONS[n] for n in names[k * per:(k + 1) * per]] for k in range(directions)]


def recurrent(cell, gates: int, default_acts):
    """An entry running `cell` over the time steps, per direction; outputs Y, Y_h (, Y_c)."""
    def build(ctx, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None, *, hidden_size,
              direction, layout, clip, activations: list, activation_alpha, activation_beta,
              **extra):
        need_float(x)
        ctx.need(clip is None or clip > 0, f"clip {clip}")
        ctx.need(not activation_alpha and not activation_beta, "activation_alpha/beta")
        ctx.need(not extra.get("input_forget"), "input_forget")
        if layout:
            x = gc.transpose(x, (1, 0, 2))
            h0 = None if h0 is None else gc.transpose(h0, (1, 0, 2))
            c0 = None if c0 is None else gc.transpose(c0, (1, 0, 2))
        t_len = x.shape[0]
        ctx.need(isinstance(t_len, int), f"a sequence of unknown length {t_len!r} (the "
                                         "steps are unrolled)")
        lens = None if seq_lens is None else np.asarray(ctx.const(seq_lens, "sequence_lens"))
        if lens is not None and np.all(lens == t_len):
            lens = None
        ctx.need(lens is None or (lens.ndim == 1 and np.all((lens >= 1) & (lens <= t_len))),
                 f"sequence_lens {np.ravel(lens).tolist()}: each must be from 1 to {t_len}")
        dirs = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}
        ctx.need(direction in dirs, f"direction={direction!r}")
        acts_all = activation_fns(ctx, activations, default_acts, len(dirs[direction]))
        if clip is not None:       # the gates' inputs are clipped (not LSTM's output one)
            acts_all = [[clipped(f, clip) for f in acts[:2]] + acts[2:] for acts in acts_all]
        h_size = hidden_size or static(r)[2]
        ys, hs, cs = [], [], []
        for k, backwards in enumerate(dirs[direction]):
            wk, rk = gc.transpose(w[k]), gc.transpose(r[k])
            bias = None if b is None else \
                gc.slice(b[k], 0, 0, gates * h_size) + gc.slice(b[k], 0, gates * h_size)
            rb = None if b is None else gc.slice(b[k], 0, gates * h_size)
            zeros = zero_state(x, h_size)
            state = {"h": zeros if h0 is None else h0[k], "c": zeros if c0 is None else c0[k]}
            peep = None if p is None else p[k]
            steps = range(t_len - 1, -1, -1) if backwards else range(t_len)
            outs = {}
            for t in steps:
                new = cell(x[t] @ wk, state, rk, bias, rb, peep, acts_all[k], h_size, extra)
                if lens is None:
                    state = new
                    outs[t] = state["h"]
                    continue
                # past a sample's length: its state stays, its output is 0 (a reverse pass
                # starts at its own last step)
                live = constant((t < lens).reshape(-1, 1))
                state = {s: gc.where(live, new[s], state[s]) for s in new}
                outs[t] = gc.where(live, new["h"], constant(np.zeros((), x.dtype)))
            ys.append(gc.stack([outs[t] for t in range(t_len)], axis=0))   # (T, B, H)
            hs.append(state["h"])
            cs.append(state["c"])
        y = gc.stack(ys, axis=1)                        # (T, D, B, H)
        yh, yc = gc.stack(hs, axis=0), gc.stack(cs, axis=0)
        if layout:
            y = gc.transpose(y, (2, 0, 1, 3))
            yh, yc = gc.transpose(yh, (1, 0, 2)), gc.transpose(yc, (1, 0, 2))
        return y, yh, yc
    return build


def clipped(act, bound: float):
    return lambda v: act(gc.clip(v, -bound, bound))


def zero_state(x, size: int):
    """Zeros (batch, size) for x (time, batch, features), the batch maybe known only at run
    time: where(true, 0, a (batch, 1) slice of x) takes its batch without reading values."""
    if isinstance(x.shape[1], int):
        return constant(np.zeros((x.shape[1], size), x.dtype))
    true = constant(np.ones((1, size), bool))
    column = gc.slice(x[0], 1, 0, 1)
    return gc.where(true, constant(np.zeros((1, size), x.dtype)), column)


def parts(v, n, size):
    return [gc.slice(v, -1, i * size, (i + 1) * size) for i in range(n)]


def rnn_cell(xw, state, rk, bias, rb, peep, acts, h, extra):
    z = xw + state["h"] @ rk + (0 if bias is None else bias)
    return {"h": acts[0](z), "c": state["c"]}


def gru_cell(xw, state, rk, bias, rb, peep, acts, h, extra):
    f, g = acts
    xz, xr, xh = parts(xw, 3, h)
    hr = state["h"] @ rk
    hz, hrr, hh = parts(hr, 3, h)
    wb = [0, 0, 0] if bias is None else parts(bias - rb, 3, h)     # Wb alone
    rbs = [0, 0, 0] if rb is None else parts(rb, 3, h)
    z = f(xz + hz + wb[0] + rbs[0])
    r = f(xr + hrr + wb[1] + rbs[1])
    if extra.get("linear_before_reset"):
        cand = g(xh + r * (hh + rbs[2]) + wb[2])
    else:
        rh = gc.slice(rk, 1, 2 * h, 3 * h)
        cand = g(xh + (r * state["h"]) @ rh + rbs[2] + wb[2])
    return {"h": (1 - z) * cand + z * state["h"], "c": state["c"]}


def lstm_cell(xw, state, rk, bias, rb, peep, acts, h, extra):
    f, g, hact = acts
    z = xw + state["h"] @ rk + (0 if bias is None else bias)
    zi, zo, zf, zc = parts(z, 4, h)
    pi, po, pf = (None, None, None) if peep is None else parts(peep, 3, h)
    c = state["c"]
    i = f(zi if pi is None else zi + pi * c)
    fg = f(zf if pf is None else zf + pf * c)
    c_new = fg * c + i * g(zc)
    o = f(zo if po is None else zo + po * c_new)
    return {"h": o * hact(c_new), "c": c_new}


RNN_ATTRS = dict(activation_alpha=None, activation_beta=None, activations=None, clip=None,
                 direction="forward", hidden_size=None, layout=0)
onnx_op("RNN", const=(4,), **RNN_ATTRS)(recurrent(rnn_cell, 1, ["Tanh"]))
onnx_op("GRU", const=(4,), linear_before_reset=0, **RNN_ATTRS)(
    recurrent(gru_cell, 3, ["Sigmoid", "Tanh"]))
onnx_op("LSTM", const=(4,), input_forget=0, **RNN_ATTRS)(
    recurrent(lstm_cell, 4, ["Sigmoid", "Tanh", "Tanh"]))


@onnx_op("MaxUnpool", const=(2,), kernel_shape=REQUIRED, pads=None, strides=None)
def max_unpool(ctx, x, indices, output_shape=None, *, kernel_shape, pads, strides):
    """Each value written back at its flat index into zeros of the unpooled shape."""
    if not isinstance(x.shape[0], int):
        return unpool_samples(ctx, x, indices, output_shape, kernel_shape, pads, strides)
    shape = static(x, "MaxUnpool")
    rank = len(kernel_shape)
    strides, pads = strides or [1] * rank, pads or [0] * (2 * rank)
    out = shape[:2] + tuple((n - 1) * s - pads[i] - pads[i + rank] + k for i, (n, s, k)
                            in enumerate(zip(shape[2:], strides, kernel_shape)))
    zeros = constant(np.zeros(int(np.prod(out)), x.dtype))
    total = int(np.prod(shape))
    y = gc.scatter_elements(zeros, gc.reshape(indices, (total,)), gc.reshape(x, (total,)))
    y = gc.reshape(y, out)
    if output_shape is not None:       # a larger output: the unpooled block at its start
        for axis, want in enumerate(ctx.ints(output_shape, "output_shape")):
            if want > out[axis]:
                y = pad_axis(ctx, y, axis, 0, want - out[axis], "constant", like(x, 0))
    return y


def unpool_samples(ctx, x, indices, output_shape, kernel_shape, pads, strides):
    """MaxUnpool of a batch of unknown size: each sample's values scattered into its own row
    of zeros (the indices count from the batch's start, so each sample's start is taken off);
    the output shape is the one given (Shape of the pooled input) or the default."""
    sample = static(gc.slice(x, 0, 0, 1), "MaxUnpool")
    rank = len(kernel_shape)
    strides, pads = strides or [1] * rank, pads or [0] * (2 * rank)
    out = tuple((n - 1) * s - pads[i] - pads[i + rank] + k for i, (n, s, k)
                in enumerate(zip(sample[2:], strides, kernel_shape)))
    if output_shape is not None:
        given = ctx.dims(output_shape, "output_shape")
        ctx.need(len(given) == x.ndim and all(isinstance(d, int) for d in given[1:])
                 and given[1] == sample[1], f"output_shape {given}")
        out = tuple(given[2:])
    size = sample[1] * int(np.prod(out))
    n = int(np.prod(sample[1:]))
    local = reshape_to(indices - batch_positions(x, size), (None, n))
    rows = reshape_to(x, (None, n))
    zeros = gc.pad(gc.slice(rows, 1, 0, 0), [(0, 0), (0, size)], value=0.0)
    y = gc.scatter_elements(zeros, local, rows, axis=1)
    return reshape_to(y, (x.shape[0], sample[1]) + out)
