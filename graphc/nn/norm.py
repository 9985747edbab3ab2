"""Normalization layers: LayerNorm and RMSNorm (per example), BatchNorm (per channel, running
stats).

All are compositions of mean, subtraction and sqrt, so their gradients are graphs that the
optimizer and the pictures see like any other. BatchNorm keeps its running mean and variance
in variables: the evaluation graph reads them, and each training call records their new
values as update pairs (`layer.state_updates`) that `fit` adds to the optimizer's.
"""
from __future__ import annotations

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn.layers import float_dtype
from graphc.nn.module import Layer, frozen


def normalize(x: Node, axes: tuple[int, ...], eps: float):
    """((x - mean) / sqrt(var + eps), mean, var) over `axes`, biased variance, keepdims."""
    mean = gc.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    var = gc.mean(centered * centered, axis=axes, keepdims=True)
    return centered / gc.sqrt(var + eps), mean, var


def positive_axes(layer: Layer, axis, x: Node) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
    if not isinstance(axes, (tuple, list)) or not all(    # axis="last": TypeError
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        raise GraphcError(f"{type(layer).__name__} {layer.name!r}: axis must be an int or a "
                          f"tuple of ints, got {axis!r} (built at {x.where})")
    out = []
    for a in axes:
        if not -x.ndim <= a < x.ndim:
            raise GraphcError(f"{type(layer).__name__} {layer.name!r}: axis {a} is out of "
                              f"range for an input {format_shape(x.shape)} (built at {x.where})")
        out.append(int(a) % x.ndim)
    return tuple(sorted(set(out)))


def need_known(layer: Layer, x: Node, axes, what: str) -> None:
    if any(not isinstance(x.shape[a], int) for a in axes):
        raise GraphcError(f"{type(layer).__name__} {layer.name!r}: the {what} axes {axes} of "
                          f"{format_shape(x.shape)} need known sizes (built at {x.where})")


class LayerNorm(Layer):
    """(x - mean) / sqrt(var + eps) * gamma + beta, statistics over `axis` of each example
    (biased variance, as in PyTorch and Keras); gamma (ones) and beta (zeros) have the
    shape of the normalized axes, like PyTorch's `normalized_shape`."""
    kind = "layernorm"

    def __init__(self, axis=-1, eps: float = 1e-5, affine: bool = True,
                 name: str | None = None):
        super().__init__(name)
        self.axis, self.eps, self.affine = axis, float(eps), affine

    def build(self, x):
        self.ndim = x.ndim
        self.axes = positive_axes(self, self.axis, x)
        need_known(self, x, self.axes, "normalized")
        first = self.axes[0]
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(first, x.ndim))
        if self.affine:
            dtype, n = float_dtype(x), int(np.prod(shape))
            self.gamma = self.add_variable("gamma", shape, "ones", n, n, dtype)
            self.beta = self.add_variable("beta", shape, "zeros", n, n, dtype)

    def forward(self, x, training):
        if x.ndim != self.ndim:
            raise GraphcError(f"LayerNorm {self.name!r} was built for rank {self.ndim}, got "
                              f"{format_shape(x.shape)} (built at {x.where})")
        y, _, _ = normalize(x, self.axes, self.eps)
        return y * self.gamma + self.beta if self.affine else y


class RMSNorm(Layer):
    """x / sqrt(mean(x^2) + eps) * gamma over `axis` of each example: LayerNorm without the
    centering and beta (PyTorch's nn.RMSNorm, Keras's RMSNormalization; LLaMA's and T5's
    norm). eps=None is PyTorch's default, the dtype's machine epsilon (Keras: 1e-6)."""
    kind = "rmsnorm"

    def __init__(self, axis=-1, eps: float | None = None, affine: bool = True,
                 name: str | None = None):
        super().__init__(name)
        self.axis, self.eps, self.affine = axis, eps, affine

    def build(self, x):
        self.ndim = x.ndim
        self.axes = positive_axes(self, self.axis, x)
        need_known(self, x, self.axes, "normalized")
        shape = tuple(x.shape[a] if a in self.axes else 1 for a in range(self.axes[0], x.ndim))
        dtype = float_dtype(x)
        if self.eps is None:
            self.eps = float(np.finfo(dtype).eps)
        if self.affine:
            n = int(np.prod(shape))
            self.gamma = self.add_variable("gamma", shape, "ones", n, n, dtype)

    def forward(self, x, training):
        if x.ndim != self.ndim:
            raise GraphcError(f"RMSNorm {self.name!r} was built for rank {self.ndim}, got "
                              f"{format_shape(x.shape)} (built at {x.where})")
        y = x / gc.sqrt(gc.mean(x * x, axis=self.axes, keepdims=True) + self.eps)
        return y * self.gamma if self.affine else y


class BatchNorm(Layer):
    """Per-channel normalization with batch statistics while training and running ones at
    evaluation; `axis` is the channel axis (1: features of (N, C), channels of NCHW).

    PyTorch's conventions: running = (1 - momentum) * running + momentum * batch, so the
    default momentum=0.1 is Keras's momentum=0.9; the running variance takes the unbiased
    batch variance, the normalization the biased one. Frozen (`trainable = False`, on it or
    a layer holding it), it runs in inference mode while training too, as in Keras.
    """
    kind = "batchnorm"

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, axis: int = 1,
                 affine: bool = True, name: str | None = None):
        super().__init__(name)
        if not 0.0 <= momentum <= 1.0:
            raise GraphcError(f"BatchNorm momentum must be in [0, 1], got {momentum}")
        self.momentum, self.eps, self.axis, self.affine = float(momentum), float(eps), axis, affine

    def build(self, x):
        if x.ndim < 2:
            raise GraphcError(f"BatchNorm {self.name!r}: needs a batch of rank >= 2, got "
                              f"{format_shape(x.shape)} (built at {x.where})")
        self.ndim = x.ndim
        (self.channel,) = positive_axes(self, self.axis, x)
        need_known(self, x, (self.channel,), "channel")
        self.reduced = tuple(a for a in range(x.ndim) if a != self.channel)
        c, dtype = x.shape[self.channel], float_dtype(x)
        self.shape = (c,) + (1,) * (x.ndim - self.channel - 1)
        if self.affine:          # (C,) like PyTorch's and ONNX's, broadcast by `spread`
            self.gamma = self.add_variable("gamma", (c,), "ones", c, c, dtype)
            self.beta = self.add_variable("beta", (c,), "zeros", c, c, dtype)
        self.running_mean = self.add_state("running_mean", np.zeros(c, dtype))
        self.running_var = self.add_state("running_var", np.ones(c, dtype))

    def spread(self, v: Node) -> Node:
        """A (C,) vector shaped to broadcast along the channel axis, e.g. (C, 1, 1)."""
        return v if len(self.shape) == 1 else gc.reshape(v, self.shape)

    def forward(self, x, training):
        if x.ndim != self.ndim:
            raise GraphcError(f"BatchNorm {self.name!r} was built for rank {self.ndim}, got "
                              f"{format_shape(x.shape)} (built at {x.where})")
        if training and not frozen():     # frozen: inference mode (Keras), stats kept
            y, mean, var = normalize(x, self.reduced, self.eps)
            self.record(x, mean, var)
        else:
            y = ((x - self.spread(self.running_mean))
                 / gc.sqrt(self.spread(self.running_var) + self.eps))
        return y * self.spread(self.gamma) + self.spread(self.beta) if self.affine else y

    def record(self, x, mean, var):
        """The running statistics' new values, as update pairs of this training call."""
        m = self.momentum
        dims = [x.shape[a] for a in self.reduced]
        # one value per channel tells nothing of the spread (PyTorch refuses such a batch):
        # the running statistics stay; they decayed toward a variance of 0 before (a last
        # batch of 1 example in every epoch: 35 % too small after 30 epochs)
        if all(isinstance(d, int) for d in dims):
            n = float(np.prod(dims))
            if n < 2:
                return
            unbiased = var * (n / (n - 1.0))
        else:
            n = gc.size(x, axis=self.reduced, dtype=var.dtype)
            unbiased = var * (n / gc.maximum(n - 1.0, 1.0))
            m = gc.where(n > 1.5, gc.constant(np.asarray(m, var.dtype)), 0.0)
        with gc.name_scope("running"):
            self.update_state(self.running_mean, (1.0 - m) * self.pending(self.running_mean)
                              + m * gc.reshape(mean, (-1,)))
            self.update_state(self.running_var, (1.0 - m) * self.pending(self.running_var)
                              + m * gc.reshape(unbiased, (-1,)))
