"""Layers: callables that build graph nodes from a node and own their variables (`.params`).

A layer creates its variables on its first call, when the input's shape is known, and reuses
them on every later call, so `model(x, training=True)` and `model(x, training=False)` build a
training graph and an evaluation graph over the same parameters. Each layer builds its nodes
inside `gc.name_scope(layer.name)`, so listings and pictures group them.
"""
from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn import init as initializers

ACTIVATIONS = ("relu", "sigmoid", "tanh", "softplus", "softmax", "log_softmax")


def activation_fn(activation: str | Callable | None) -> Callable[[Node], Node]:
    """The function for an activation name ('relu', 'softmax', ...), a callable, or None."""
    if activation is None or activation == "linear":
        return lambda x: x
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise GraphcError(f"unknown activation {activation!r}; choose one of "
                          f"{', '.join(ACTIVATIONS)}, None, or pass a function")
    if activation in ("softmax", "log_softmax"):
        return lambda x: getattr(gc, activation)(x, axis=-1)
    return getattr(gc, activation)


def pair(v, what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    if len(v) != 2:
        raise GraphcError(f"{what} must be an int or a pair, got {v!r}")
    return int(v[0]), int(v[1])


class Layer:
    """Base class: `layer(x, training=True)` builds nodes; `.params` lists its variables."""
    kind = "layer"

    def __init__(self, name: str | None = None, seed: int | None = None):
        self.auto_named = name is None
        self.name = name or self.kind
        self.seed = seed
        self.params: list[Node] = []
        self.kernels: list[Node] = []      # the weights regularization applies to (no biases)
        self.built = False
        self.output_shape = None

    def __call__(self, x: Node, training: bool = True) -> Node:
        if not isinstance(x, Node):
            raise GraphcError(f"{self.name}: call the layer on a graph node, "
                              f"got {type(x).__name__}")
        with gc.name_scope(self.name):
            if not self.built:
                self.build(x)
                self.built = True
            out = self.forward(x, training)
        self.output_shape = out.shape if isinstance(out, Node) else tuple(o.shape for o in out)
        return out

    def build(self, x: Node) -> None:
        """Create the variables, now that x's shape is known."""

    def forward(self, x: Node, training: bool) -> Node:
        raise NotImplementedError

    def add_variable(self, suffix: str, shape, init, fan_in, fan_out, dtype) -> Node:
        """A variable named 'layer/suffix', drawn from its own seeded generator."""
        name = f"{self.name}/{suffix}"
        rng = initializers.generator(self.seed or 0, name)
        value = initializers.initialize(init, shape, fan_in, fan_out, rng, dtype)
        var = gc.variable(value, name=name)
        self.params.append(var)
        return var

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def float_dtype(x: Node) -> np.dtype:
    return x.dtype if x.dtype.kind == "f" else np.dtype("float32")


def need_dims(layer: Layer, x: Node, rank: int | None, known: Sequence[int]) -> None:
    """x has `rank` dims (None: any >= 2) and the dims at `known` are fixed sizes."""
    ok = x.ndim == rank if rank is not None else x.ndim >= 2
    if not ok or any(not isinstance(x.shape[i], int) for i in known):
        want = f"rank {rank}" if rank else "rank >= 2"
        raise GraphcError(f"{type(layer).__name__} {layer.name!r}: needs an input of {want} "
                          f"with known sizes at axes {tuple(known)}, got "
                          f"{format_shape(x.shape)} (built at {x.where})")


class Dense(Layer):
    """y = activation(x @ W + b); W is (in, units)."""
    kind = "dense"

    def __init__(self, units: int, activation=None, use_bias: bool = True,
                 kernel_init="glorot", bias_init="zeros", name: str | None = None,
                 seed: int | None = None):
        super().__init__(name, seed)
        self.units, self.use_bias = int(units), use_bias
        self.activation = activation_fn(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, x):
        need_dims(self, x, None, (-1,))
        n_in, dtype = x.shape[-1], float_dtype(x)
        self.W = self.add_variable("W", (n_in, self.units), self.kernel_init, n_in,
                                   self.units, dtype)
        self.kernels.append(self.W)
        if self.use_bias:
            self.b = self.add_variable("b", (self.units,), self.bias_init, n_in, self.units,
                                       dtype)

    def forward(self, x, training):
        if x.shape[-1] != self.W.shape[0]:
            raise GraphcError(f"Dense {self.name!r} was built for {self.W.shape[0]} input "
                              f"features, got {format_shape(x.shape)} (built at {x.where})")
        y = x @ self.W
        if self.use_bias:
            y = y + self.b
        return self.activation(y)


class Conv2D(Layer):
    """NCHW convolution with weights (filters, C_in, kH, kW), a bias per filter, activation."""
    kind = "conv2d"

    def __init__(self, filters: int, kernel_size, stride=1, padding=0, activation=None,
                 use_bias: bool = True, kernel_init="he", bias_init="zeros",
                 name: str | None = None, seed: int | None = None):
        super().__init__(name, seed)
        self.filters, self.kernel_size = int(filters), pair(kernel_size, "kernel_size")
        self.stride, self.padding, self.use_bias = stride, padding, use_bias
        self.activation = activation_fn(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, x):
        need_dims(self, x, 4, (1,))
        c_in, (kh, kw), dtype = x.shape[1], self.kernel_size, float_dtype(x)
        fan_in, fan_out = c_in * kh * kw, self.filters * kh * kw
        self.W = self.add_variable("W", (self.filters, c_in, kh, kw), self.kernel_init,
                                   fan_in, fan_out, dtype)
        self.kernels.append(self.W)
        if self.use_bias:
            self.b = self.add_variable("b", (self.filters,), self.bias_init, fan_in, fan_out,
                                       dtype)

    def forward(self, x, training):
        y = gc.conv2d(x, self.W, stride=self.stride, padding=self.padding)
        if self.use_bias:
            y = y + gc.reshape(self.b, (self.filters, 1, 1))
        return self.activation(y)


class MaxPool2D(Layer):
    """Max over size x size windows of NCHW images (stride defaults to size)."""
    kind = "maxpool2d"

    def __init__(self, size=2, stride=None, name: str | None = None):
        super().__init__(name)
        self.size, self.stride = size, stride

    def forward(self, x, training):
        return gc.max_pool2d(x, self.size, stride=self.stride)


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1 * d2 * ...)."""
    kind = "flatten"

    def forward(self, x, training):
        need_dims(self, x, None, tuple(range(1, x.ndim)))
        return gc.reshape(x, (-1, int(np.prod(x.shape[1:]))))


class Dropout(Layer):
    """Zeroes a fraction `rate` of the values while training (scaling the rest by
    1 / (1 - rate)); the identity at evaluation. The mask is drawn inside the compiled
    program from a generator seeded by `seed` (default: from the layer's name)."""
    kind = "dropout"

    def __init__(self, rate: float, seed: int | None = None, name: str | None = None):
        super().__init__(name, seed)
        if not 0.0 <= rate < 1.0:
            raise GraphcError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)

    def forward(self, x, training):
        if not training or self.rate == 0.0:
            return x
        seed = zlib.crc32(f"{self.seed or 0}/{self.name}".encode())
        return gc.dropout(x, self.rate, seed=seed, training=True)


class Sequential(Layer):
    """Layers applied in order. Unnamed layers are named by kind and position ('dense_2')."""
    kind = "sequential"

    def __init__(self, layers: Sequence[Layer], name: str | None = None, seed: int = 0):
        self.auto_named, self.name, self.seed = name is None, name or self.kind, seed
        self.built, self.output_shape = True, None
        self.layers = list(layers)
        names = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise GraphcError(f"Sequential: item {i} is not a layer: {layer!r}")
            if layer.auto_named:
                layer.name = f"{layer.kind}_{i}"
            if layer.name in names:
                raise GraphcError(f"Sequential: two layers are named {layer.name!r}")
            names.add(layer.name)
            if layer.seed is None:
                layer.seed = seed

    def __call__(self, x: Node, training: bool = True) -> Node:
        for layer in self.layers:      # each layer opens its own scope
            x = layer(x, training)
        self.output_shape = x.shape
        return x

    @property
    def params(self) -> list[Node]:
        return [p for layer in self.layers for p in layer.params]

    @property
    def kernels(self) -> list[Node]:
        return [k for layer in self.layers for k in layer.kernels]

    def summary(self) -> str:
        """One line per layer: name, output shape, parameter count (after the first call)."""
        lines = [f"{'layer':<14}{'output shape':<22}{'params':>8}"]
        total = 0
        for layer in self.layers:
            count = sum(int(np.prod(p.shape)) for p in layer.params)
            total += count
            shape = format_shape(layer.output_shape) if layer.output_shape else "?"
            lines.append(f"{layer.name:<14}{shape:<22}{count:>8}")
        lines.append(f"{'total':<36}{total:>8}")
        return "\n".join(lines)
