"""Random values inside the graph: the executor owns one generator per node (seeded by the
node's `seed`), so a compiled function draws new values on every call, reproducibly."""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError, Node, OpDef, ShapeError, apply, constant, register, \
    user_line

__all__ = ["random_normal", "random_uniform"]


def random_infer(like, *, dtype="float32", seed=None, **params):
    """The shape comes from `like` at run time (for a fixed shape the builder passes a
    broadcast scalar: no input-less op nodes, which every stage would take for leaves)."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ShapeError(f"dtype must be floating point, got {dtype.name}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ShapeError(f"seed must be a non-negative int or None, got {seed!r}")
    return like.shape, dtype, {"dtype": dtype.name, "seed": seed, **params}


def normal_infer(like, *, dtype="float32", seed=None, mean=0.0, std=1.0):
    if not float(std) >= 0:
        raise ShapeError(f"std must be >= 0, got {std!r}")
    return random_infer(like, dtype=dtype, seed=seed, mean=float(mean), std=float(std))


def uniform_infer(like, *, dtype="float32", seed=None, low=0.0, high=1.0):
    if not float(low) <= float(high):
        raise ShapeError(f"low must be <= high, got {low!r} and {high!r}")
    return random_infer(like, dtype=dtype, seed=seed, low=float(low), high=float(high))


register(OpDef(
    "random_normal", normal_infer,
    lambda like, *, dtype, seed, mean, std, rng: rng.normal(mean, std, like.shape).astype(dtype),
    lambda g, out, like, **attrs: (None,), random=True))
register(OpDef(
    "random_uniform", uniform_infer,
    lambda like, *, dtype, seed, low, high, rng: rng.uniform(low, high, like.shape).astype(
        dtype),
    lambda g, out, like, **attrs: (None,), random=True))


def like_node(op: str, shape_or_like) -> Node:
    """The node whose shape the samples take: the given node, or a broadcast scalar."""
    if isinstance(shape_or_like, Node):
        return shape_or_like
    if isinstance(shape_or_like, (int, np.integer)):
        shape_or_like = (shape_or_like,)
    try:
        shape = tuple(int(d) for d in shape_or_like)
    except (TypeError, ValueError):
        shape = None
    if shape is None or any(d < 0 for d in shape):
        raise GraphcError(f"{op}: expected a shape (tuple of ints >= 0) or a node to take the "
                          f"shape of, got {shape_or_like!r}\n  at {user_line()}")
    return apply("broadcast_to", constant(np.zeros((), np.float32)), shape=shape)


def sample_dtype(like: Node, dtype) -> str:
    """The dtype asked for, else a float node's own (torch.randn_like's rule: a float64 VAE's
    noise was float32, and mixing the two kept its step from compiling), else float32."""
    if dtype is None:
        return like.dtype.name if like.dtype.kind == "f" else "float32"
    return np.dtype(dtype).name


def random_normal(shape_or_like, mean: float = 0.0, std: float = 1.0, seed: int | None = None,
                  dtype=None):
    """Normal samples of a shape (tuple) or of a node's shape (read at run time), drawn anew
    on every call of a compiled function; `seed` makes the sequence of draws reproducible.
    dtype: float32 for a shape, the node's own for a float node."""
    like = like_node("random_normal", shape_or_like)
    return apply("random_normal", like, mean=mean, std=std, seed=seed,
                 dtype=sample_dtype(like, dtype))


def random_uniform(shape_or_like, low: float = 0.0, high: float = 1.0, seed: int | None = None,
                   dtype=None):
    """Uniform samples in [low, high) of a shape or of a node's shape, as random_normal."""
    like = like_node("random_uniform", shape_or_like)
    return apply("random_uniform", like, low=low, high=high, seed=seed,
                 dtype=sample_dtype(like, dtype))
