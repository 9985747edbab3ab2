"""Recurrent layers over `gc.scan`: SimpleRNN, LSTM and GRU, with PyTorch's gates and formulas.

Inputs are (batch, time, features). The input projection of every step is one matmul before
the loop (it does not depend on the carry); the loop body holds only the recurrent part, so
the graph has the same size for 10 steps or 1,000.
"""
from __future__ import annotations

import graphc as gc
from graphc.ir import GraphcError, Node, apply, as_node, format_shape
from graphc.nn.layers import Layer, float_dtype, need_dims, whole
from graphc.scope import user_line


class Recurrent(Layer):
    """Shared plumbing: weights W_ih (features, gates*units), W_hh (units, gates*units), biases
    b_ih and b_hh (gates*units,), and the scan over time."""
    gates = 1

    def __init__(self, units: int, return_sequences: bool = False, return_state: bool = False,
                 kernel_init="glorot", recurrent_init="orthogonal", name: str | None = None,
                 seed: int | None = None):
        super().__init__(name, seed)
        self.units = whole(units, f"{type(self).__name__}: units")
        self.return_sequences, self.return_state = return_sequences, return_state
        self.kernel_init, self.recurrent_init = kernel_init, recurrent_init

    def build(self, x):
        need_dims(self, x, 3, (2,))
        f, u, dtype = x.shape[2], self.units, float_dtype(x)
        width = self.gates * u
        self.W_ih = self.add_variable("W_ih", (f, width), self.kernel_init, f, width, dtype)
        self.W_hh = self.add_variable("W_hh", (u, width), self.recurrent_init, u, width, dtype)
        self.b_ih = self.add_variable("b_ih", (width,), "zeros", f, width, dtype)
        self.b_hh = self.add_variable("b_hh", (width,), "zeros", u, width, dtype)
        self.own_kernels += [self.W_ih, self.W_hh]

    def forward(self, x, training, initial_state=None):
        if x.dtype != self.W_ih.dtype:
            x = gc.cast(x, self.W_ih.dtype)
        xs = gc.transpose(x, (1, 0, 2)) @ self.W_ih + self.b_ih     # (time, batch, gates*u)
        # zeros (batch, u) from no step's values: an empty sequence (time 0) has none
        edge = gc.sum(self.gate(gc.slice(xs, 0, 0, 0), 0), axis=0)
        zero = apply("broadcast_to", as_node(0, like=xs), edge)
        state = self.initial_state(zero) if initial_state is None else \
            self.given_state(initial_state, zero)
        final, ys = gc.scan(self.step, state, xs)
        out = gc.transpose(ys, (1, 0, 2)) if self.return_sequences else \
            (final[0] if isinstance(final, tuple) else final)
        if not self.return_state:
            return out
        return (out,) + (final if isinstance(final, tuple) else (final,))

    def initial_state(self, zero: Node):
        return zero

    def given_state(self, given, zero: Node):
        """The user's initial state (h0, or (h0, c0) for an LSTM), each (batch, units) or
        (1, units) for every example, broadcast to the batch; gradients reach it."""
        names = ("h0", "c0") if isinstance(self, LSTM) else ("h0",)
        parts = tuple(given) if isinstance(given, (tuple, list)) else (given,)
        if len(parts) != len(names):
            raise GraphcError(f"{self.name}: initial_state is {' and '.join(names)}, got "
                              f"{len(parts)} value(s)\n  at {user_line()}")
        out = []
        for name, h in zip(names, parts):
            h = as_node(h)
            batch = zero.shape[0]
            if h.ndim != 2 or h.shape[1] != self.units or h.dtype.kind not in "fiu" or (
                    isinstance(h.shape[0], int) and h.shape[0] != 1 and isinstance(batch, int)
                    and h.shape[0] != batch):
                raise GraphcError(f"{self.name}: initial state {name} must be (batch, "
                                  f"{self.units}) = {format_shape((batch, self.units))} "
                                  f"numbers, got {format_shape(h.shape)} {h.dtype.name}\n"
                                  f"  at {user_line()}")
            if h.dtype != zero.dtype:
                h = gc.cast(h, zero.dtype)
            out.append(apply("broadcast_to", h, zero))
        return out[0] if len(out) == 1 else tuple(out)

    def recurrent(self, h: Node) -> Node:
        return h @ self.W_hh + self.b_hh

    def gate(self, z: Node, k: int) -> Node:
        """The k-th block of `units` columns of a (batch, gates*units) node."""
        return gc.slice(z, -1, k * self.units, (k + 1) * self.units)


class SimpleRNN(Recurrent):
    """h' = tanh(x W_ih + b_ih + h W_hh + b_hh)."""
    kind = "simple_rnn"

    def step(self, h, xp):
        h = gc.tanh(xp + self.recurrent(h))
        return h, h


class LSTM(Recurrent):
    """Gates i, f, g, o (PyTorch's order): c' = f c + i g, h' = o tanh(c')."""
    kind = "lstm"
    gates = 4

    def initial_state(self, zero):
        return (zero, zero)

    def step(self, state, xp):
        h, c = state
        z = xp + self.recurrent(h)
        i, f = gc.sigmoid(self.gate(z, 0)), gc.sigmoid(self.gate(z, 1))
        g, o = gc.tanh(self.gate(z, 2)), gc.sigmoid(self.gate(z, 3))
        c = f * c + i * g
        h = o * gc.tanh(c)
        return (h, c), h


class GRU(Recurrent):
    """Gates r, z, n (PyTorch's order): n = tanh(x_n + r (h W_hn + b_hn)),
    h' = (1 - z) n + z h."""
    kind = "gru"
    gates = 3

    def step(self, h, xp):
        hp = self.recurrent(h)
        r = gc.sigmoid(self.gate(xp, 0) + self.gate(hp, 0))
        z = gc.sigmoid(self.gate(xp, 1) + self.gate(hp, 1))
        n = gc.tanh(self.gate(xp, 2) + r * self.gate(hp, 2))
        h = (1.0 - z) * n + z * h
        return h, h
