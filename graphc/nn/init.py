"""Weight initializers: name -> function(shape, fan_in, fan_out, rng) -> float64 array.

Each layer draws from its own generator, seeded from (seed, layer name), so a model starts from
the same weights on every run and no two layers of a Sequential share a stream.
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from graphc.ir import GraphcError

Initializer = Callable[[tuple, int, int, np.random.Generator], np.ndarray]


def zeros(shape, fan_in, fan_out, rng):
    return np.zeros(shape)


def ones(shape, fan_in, fan_out, rng):
    return np.ones(shape)


def normal(shape, fan_in, fan_out, rng, std=0.05):
    """Small random normal values (the tutorials' 'random' initialization)."""
    return rng.normal(0.0, std, shape)


def uniform(shape, fan_in, fan_out, rng, limit=0.05):
    return rng.uniform(-limit, limit, shape)


def glorot_uniform(shape, fan_in, fan_out, rng):
    """Xavier/Glorot: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def glorot_normal(shape, fan_in, fan_out, rng):
    return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape)


def he_normal(shape, fan_in, fan_out, rng):
    """He/Kaiming for ReLU layers: N(0, 2 / fan_in)."""
    return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)


def he_uniform(shape, fan_in, fan_out, rng):
    limit = np.sqrt(6.0 / fan_in)
    return rng.uniform(-limit, limit, shape)


def orthogonal(shape, fan_in, fan_out, rng):
    """A (semi-)orthogonal matrix, as Keras starts recurrent weights: Q of a Gaussian's QR."""
    rows, cols = shape[0], int(np.prod(shape[1:]))
    a = rng.normal(0.0, 1.0, (max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return (q if rows >= cols else q.T).reshape(shape)


INITIALIZERS: dict[str, Initializer] = {
    "zeros": zeros, "ones": ones, "normal": normal, "random": normal, "uniform": uniform,
    "glorot": glorot_uniform, "glorot_uniform": glorot_uniform, "xavier": glorot_uniform,
    "xavier_uniform": glorot_uniform, "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal, "he": he_normal, "he_normal": he_normal,
    "he_uniform": he_uniform, "orthogonal": orthogonal,
}


def get(init: str | Initializer) -> Initializer:
    """An initializer from its name (see INITIALIZERS) or the callable itself."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except KeyError:
        raise GraphcError(f"unknown initializer {init!r}; choose one of "
                          f"{', '.join(sorted(INITIALIZERS))} or pass a function") from None


def generator(seed: int, name: str) -> np.random.Generator:
    """The generator a layer called `name` draws its initial weights from."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def initialize(init, shape, fan_in: int, fan_out: int, rng, dtype) -> np.ndarray:
    value = np.asarray(get(init)(tuple(shape), fan_in, fan_out, rng), dtype=dtype)
    if value.shape != tuple(shape):
        raise GraphcError(f"initializer {init!r} returned shape {value.shape}, "
                          f"expected {tuple(shape)}")
    return value
