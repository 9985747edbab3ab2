"""The basic layers: Dense, Conv2D, pooling, Flatten, Dropout, Embedding.

Each layer builds its nodes inside `gc.name_scope(layer.name)`, so listings and pictures
group them; the base class, models and Sequential are in graphc.nn.module.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn.module import (  # noqa: F401  (Layer, Sequential: also importable from here)
    ACTIVATIONS, Layer, Model, Sequential, activation_fn, hyper, whole)
from graphc.scope import user_line


def pair(v, what: str, least: int = 1) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return whole(v, what, least), whole(v, what, least)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise GraphcError(f"{what} must be an int or a pair, got {v!r}")
    return whole(v[0], what, least), whole(v[1], what, least)


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
        self.units, self.use_bias = whole(units, "Dense: units"), use_bias
        self.activation = activation_fn(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, x):
        need_dims(self, x, None, (-1,))
        n_in, dtype = x.shape[-1], float_dtype(x)
        self.W = self.add_variable("W", (n_in, self.units), self.kernel_init, n_in,
                                   self.units, dtype, kernel=True)
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
        self.filters = whole(filters, "Conv2D: filters")
        self.kernel_size = pair(kernel_size, "Conv2D: kernel_size")
        check_padding("Conv2D", padding)
        self.stride, self.padding, self.use_bias = stride, padding, use_bias
        self.activation = activation_fn(activation)
        self.kernel_init, self.bias_init = kernel_init, bias_init

    def build(self, x):
        need_dims(self, x, 4, (1,))
        c_in, (kh, kw), dtype = x.shape[1], self.kernel_size, float_dtype(x)
        fan_in, fan_out = c_in * kh * kw, self.filters * kh * kw
        self.W = self.add_variable("W", (self.filters, c_in, kh, kw), self.kernel_init,
                                   fan_in, fan_out, dtype, kernel=True)
        if self.use_bias:
            self.b = self.add_variable("b", (self.filters,), self.bias_init, fan_in, fan_out,
                                       dtype)

    def forward(self, x, training):
        padding = self.padding
        if padding == "valid":
            padding = 0
        elif padding == "same":
            pads = same_padding(self, x, self.kernel_size, self.stride)
            if all(before == after for before, after in pads):
                padding = (pads[0][0], pads[1][0])
            else:                  # an even kernel: the extra zero row/column is a gc.pad
                x, padding = gc.pad(x, ((0, 0), (0, 0)) + pads), 0
        y = gc.conv2d(x, self.W, stride=self.stride, padding=padding)
        if self.use_bias:
            y = y + gc.reshape(self.b, (self.filters, 1, 1))
        return self.activation(y)


def check_padding(what: str, padding) -> None:
    if isinstance(padding, str) and padding not in ("same", "valid"):
        raise GraphcError(f"{what}: padding is an int, a pair, 'same' or 'valid', got "
                          f"{padding!r}\n  at {user_line()}")


def same_padding(layer: Layer, x: Node, kernel, stride) -> tuple:
    """((top, bottom), (left, right)) of padding='same' (Keras's, and PyTorch's at stride
    1): ceil(size / stride) outputs, the total padding split with the odd one after, as
    both do."""
    pads = []
    for axis, k, s in zip((2, 3), pair(kernel, "kernel size"), pair(stride, "stride")):
        size = x.shape[axis]
        if s == 1:
            total = k - 1
        elif isinstance(size, int):
            total = max((-(-size // s) - 1) * s + k - size, 0)
        else:
            raise GraphcError(f"{type(layer).__name__} {layer.name!r}: padding='same' with "
                              f"stride {s} needs known image sizes, got "
                              f"{format_shape(x.shape)} (built at {x.where})")
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


class MaxPool2D(Layer):
    """Max over size x size windows of NCHW images (stride defaults to size). `padding`
    (an int, a pair, 'valid' or 'same') pads with -inf, so padding is never the max: PyTorch's
    MaxPool2d(padding=1) of ResNet's stem, Keras's MaxPooling2D(padding='same')."""
    kind = "maxpool2d"

    def __init__(self, size=2, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        check_padding("MaxPool2D", padding)
        self.size, self.stride, self.padding = size, stride, padding

    def forward(self, x, training):
        stride = self.size if self.stride is None else self.stride
        if self.padding == "same":
            pads = same_padding(self, x, self.size, stride)
        elif self.padding == "valid":
            pads = ((0, 0), (0, 0))
        else:
            ph, pw = pair(self.padding, "MaxPool2D: padding", least=0)
            kh, kw = pair(self.size, "MaxPool2D: size")
            if 2 * ph > kh or 2 * pw > kw:        # else a window could hold only padding
                raise GraphcError(f"MaxPool2D {self.name!r}: padding {(ph, pw)} must be at "
                                  f"most half the window {(kh, kw)} (as PyTorch)\n  at "
                                  f"{user_line()}")
            pads = ((ph, ph), (pw, pw))
        if any(pads[0] + pads[1]):
            neg = float("-inf") if x.dtype.kind == "f" else int(np.iinfo(x.dtype).min)
            x = gc.pad(x, ((0, 0), (0, 0)) + pads, value=neg)
        return gc.max_pool2d(x, self.size, stride=stride)


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
        self.rate = hyper(rate, "Dropout rate", 0, 1)

    def forward(self, x, training):
        if not training or self.rate == 0.0:
            return x
        seed = zlib.crc32(f"{self.seed or 0}/{self.full_name}".encode())
        return gc.dropout(x, self.rate, seed=seed, training=True)


class Activation(Layer):
    """An activation as a layer, e.g. after BatchNorm: Activation('relu'), ('gelu'), ..."""
    kind = "activation"

    def __init__(self, activation, name: str | None = None):
        super().__init__(name)
        self.fn = activation_fn(activation)

    def forward(self, x, training):
        return self.fn(x)


def standard_normal(shape, fan_in, fan_out, rng):
    return rng.standard_normal(shape)


class Embedding(Layer):
    """Rows of a (vocab, dim) table picked by integer ids: (..., ) -> (..., dim).

    A gather (`gc.take`), not one_hot(ids) @ E: its cost does not grow with the vocabulary,
    and its gradient adds up the rows of repeated ids. Initialized N(0, 1) as in PyTorch;
    `padding_idx` (PyTorch's) starts its row at zeros and gives it no gradient.
    """
    kind = "embedding"

    def __init__(self, vocab: int, dim: int, init=None, dtype="float32",
                 padding_idx: int | None = None, name: str | None = None,
                 seed: int | None = None):
        super().__init__(name, seed)
        self.vocab, self.dim = whole(vocab, "Embedding: vocab"), whole(dim, "Embedding: dim")
        self.dtype = dtype
        self.init = init or standard_normal
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, np.integer)) \
                    or not -self.vocab <= padding_idx < self.vocab:
                raise GraphcError(f"Embedding: padding_idx must be an int in [{-self.vocab}, "
                                  f"{self.vocab}), got {padding_idx!r}\n  at {user_line()}")
            padding_idx = int(padding_idx) % self.vocab        # PyTorch's: -1 is vocab - 1
        self.padding_idx = padding_idx

    def build(self, ids):
        self.E = self.add_variable("E", (self.vocab, self.dim), self.init, self.vocab,
                                   self.dim, np.dtype(self.dtype))
        if self.padding_idx is not None:       # PyTorch: the padding row starts at zeros
            self.E.value[self.padding_idx] = 0

    def forward(self, ids, training):
        if ids.dtype.kind not in "iu":
            raise GraphcError(f"Embedding {self.name!r}: ids must be integers, got "
                              f"{ids.dtype.name} {format_shape(ids.shape)} (built at "
                              f"{ids.where}); cast them with gc.cast(ids, 'int64')")
        # wrap=False: an id < 0 is an error, as in PyTorch and Keras, not a row from the end
        out = gc.take(self.E, ids, axis=0, wrap=False)
        if self.padding_idx is None:
            return out
        # PyTorch's padding_idx: the padding row gets no gradient (it stays as it is)
        pad = gc.expand_dims(gc.equal(ids, gc.constant(np.asarray(self.padding_idx,
                                                                    ids.dtype))), -1)
        return gc.where(pad, gc.stop_gradient(out), out)
