"""Neural-network ops: softmax family, losses, dropout; convolution and pooling live in conv.py.

softmax, log_softmax and softmax_cross_entropy are primitives (stable kernels, and the
cross-entropy gradient is one fused op the runtime can run in one pass); binary_cross_entropy
and dropout are sugar over existing ops.
"""
from __future__ import annotations

import numpy as np
import sympy as sp

from graphc.ir import GraphcError, OpDef, ShapeError, apply, as_node, format_shape, register, \
    user_line
from graphc.ops.common import need_float
from graphc.ops.conv import __all__ as conv_all
from graphc.ops.conv import avg_pool2d, conv2d, max_pool2d  # noqa: F401  (re-exported)

__all__ = ["softmax", "log_softmax", "softmax_cross_entropy", "binary_cross_entropy",
           "dropout"] + conv_all


# softmax and log_softmax --------------------------------------------------------------

def softmax_infer(x, *, axis=-1):
    dtype = need_float(x)
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) \
            or not -x.ndim <= axis < x.ndim:       # axis=True was axis 1
        raise ShapeError(f"axis must be one int in [{-x.ndim}, {x.ndim}), got {axis!r}")
    return x.shape, dtype, {"axis": int(axis) % x.ndim}


def softmax_kernel(x, *, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True, initial=-np.inf))   # an empty axis: empty
    e /= e.sum(axis=axis, keepdims=True)
    return e


def log_softmax_kernel(x, *, axis):
    s = x - x.max(axis=axis, keepdims=True, initial=-np.inf)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def along(x, axis, fn):
    """fn applied to each vector of an explicit sympy matrix along `axis`; None otherwise."""
    if not isinstance(x, sp.MatrixBase):
        return None
    if axis == 0:
        return sp.Matrix.hstack(*[fn(x[:, j]) for j in range(x.cols)])
    return sp.Matrix.vstack(*[fn(x[i, :]) for i in range(x.rows)])


def sym_softmax(v):
    e = v.applyfunc(sp.exp)
    return e / sum(e)


def sym_log_softmax(v):
    lse = sp.log(sum(v.applyfunc(sp.exp)))
    return v.applyfunc(lambda a: a - lse)


register(OpDef(
    "softmax", softmax_infer, softmax_kernel,
    lambda g, out, x, *, axis: (out * (g - apply("sum", g * out, axis=axis, keepdims=True)),),
    lambda x, *, axis: along(x, axis, sym_softmax), positive=True))
register(OpDef(
    "log_softmax", softmax_infer, log_softmax_kernel,
    lambda g, out, x, *, axis: (
        g - apply("exp", out) * apply("sum", g, axis=axis, keepdims=True),),
    lambda x, *, axis: along(x, axis, sym_log_softmax)))


# softmax cross-entropy ----------------------------------------------------------------

def int_labels(labels) -> bool:
    return labels.dtype.kind in "iu"


def merge_dims(a, b):
    """Two shapes that must agree, None matching anything; the better-known one."""
    if len(a) != len(b) or any(isinstance(p, int) and isinstance(q, int) and p != q
                               for p, q in zip(a, b)):
        return None
    return tuple(p if isinstance(p, int) else q for p, q in zip(a, b))


def sce_infer(z, y, g=None):
    if z.ndim < 1:
        raise ShapeError("logits need a class axis (the last one)")
    need_float(z)                      # int logits: no softmax, no gradient for float labels
    if int_labels(y):
        dtype = need_float(z) if g is None else need_float(z, g)
        shape = merge_dims(z.shape[:-1], y.shape)
        want = f"integer class indices of shape {format_shape(z.shape[:-1])}"
    elif y.dtype.kind == "f":
        dtype = need_float(*(n for n in (z, y, g) if n is not None))
        shape = merge_dims(z.shape, y.shape)
        shape = shape and shape[:-1]
        want = f"float probabilities of the logits' shape {format_shape(z.shape)}"
    else:
        raise ShapeError(f"labels must be integer classes or float probabilities, "
                         f"got {y.dtype.name}")
    if shape is None:
        raise ShapeError(f"labels {format_shape(y.shape)} must be {want}")
    if g is not None:
        if merge_dims(shape, g.shape) is None:
            raise ShapeError(f"g {format_shape(g.shape)} must have the loss shape "
                             f"{format_shape(shape)}")
        return merge_dims(z.shape, shape + (z.shape[-1],)), dtype
    return shape, dtype


def check_labels(z, y):
    """Labels of the logits' batch shape (never broadcast), integer ones in [0, classes)."""
    want = z.shape[:-1] if int_labels(y) else z.shape
    if y.shape != want:
        raise ValueError(f"softmax_cross_entropy: labels of shape {format_shape(y.shape)} do "
                         f"not match logits of shape {format_shape(z.shape)} (labels must be "
                         f"{'integers of shape' if int_labels(y) else 'of shape'} "
                         f"{format_shape(want)})")
    if not int_labels(y):
        return
    classes = z.shape[-1]
    # one reduction: as unsigned, a negative label is huge (a small step's labels: ~2 us less)
    as_unsigned = y.view(f"u{y.itemsize}") if y.dtype.kind == "i" else y
    if y.size and as_unsigned.max() >= classes:
        bad = y[(y < 0) | (y >= classes)].ravel()[0]
        raise ValueError(f"softmax_cross_entropy: label {bad} is out of range for "
                         f"{classes} classes (labels must be in [0, {classes}))")


def sce_kernel(z, y):
    """log(sum(exp(z - m))) - (z[y] - m): the max m cancels before it is added (lse - z[y]
    rounded log 2 away at logits of 1e4 in float32, 60 in float16), as the runtime's kernel."""
    check_labels(z, y)
    s = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(s).sum(axis=-1))
    if not int_labels(y):
        return lse * y.sum(axis=-1) - (y * s).sum(axis=-1)
    return lse - np.take_along_axis(s, y[..., None].astype(np.intp), axis=-1)[..., 0]


def sce_grad_kernel(z, y, g):
    """(softmax(z) * sum(y) - y) * g[..., None] in one pass (y one-hot when integer)."""
    check_labels(z, y)
    dtype = np.result_type(z, g) if int_labels(y) else np.result_type(z, y, g)
    e = np.exp(z - z.max(axis=-1, keepdims=True)).astype(dtype, copy=False)
    scale = g / e.sum(axis=-1)
    if not int_labels(y):
        e *= (scale * y.sum(axis=-1))[..., None]
        e -= y * g[..., None]
        return e
    e *= scale[..., None]
    idx = y[..., None].astype(np.intp)        # in place at the labels, for any memory layout
    np.put_along_axis(e, idx, np.take_along_axis(e, idx, axis=-1) - g[..., None], axis=-1)
    return e


def expand_last(g, z):
    """g of the loss shape, with a trailing axis of 1 to broadcast against the logits."""
    return apply("reshape", g, z, keepdims_of=(z.ndim - 1,))


def sce_vjp(g, out, z, y):
    gz = apply("softmax_cross_entropy_grad", z, y, g)
    if int_labels(y):
        return gz, None
    return gz, -apply("log_softmax", z, axis=-1) * expand_last(g, z)


def sce_grad_vjp(gg, out, z, y, g):
    """out = (s * S - Y) * g, s = softmax(z), S = sum(y) (1 for integer labels)."""
    last = z.ndim - 1
    s, gcol = apply("softmax", z, axis=last), expand_last(g, z)
    h = gg * gcol
    if not int_labels(y):
        h = h * apply("sum", y, axis=last, keepdims=True)
    gz = s * (h - apply("sum", h * s, axis=last, keepdims=True))      # softmax's VJP
    ones = apply("broadcast_to", as_node(1.0, like=g), g)
    gg_g = apply("sum", gg * apply("softmax_cross_entropy_grad", z, y, ones), axis=last)
    if int_labels(y):
        return gz, None, gg_g
    gy = gcol * (apply("sum", gg * s, axis=last, keepdims=True) - gg)
    return gz, gy, gg_g


def sce_sym(z, y):
    """Explicit (N, C) logits and float labels, or concrete integer labels (N, 1)."""
    if not isinstance(z, sp.MatrixBase) or not isinstance(y, sp.MatrixBase):
        return None
    logp = along(z, 1, sym_log_softmax)
    if y.shape == z.shape:
        return sp.Matrix([-sum(logp[i, j] * y[i, j] for j in range(z.cols))
                          for i in range(z.rows)])
    if all(isinstance(v, sp.Integer) for v in y):
        return sp.Matrix([-logp[i, int(v)] for i, v in enumerate(y)])
    return None


register(OpDef("softmax_cross_entropy", sce_infer, sce_kernel, sce_vjp, sce_sym))
register(OpDef("softmax_cross_entropy_grad", sce_infer, sce_grad_kernel, sce_grad_vjp))


# dropout ------------------------------------------------------------------------------

def mask_infer(x, *, keep, seed=None):
    """keep: the probability of keeping, in (0, 1]; seed: None or an int in [0, 2**128)."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)) \
            or not 0 < keep <= 1:
        raise ShapeError(f"keep must be a probability in (0, 1], got {str(keep)[:40]}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 1 << 128):
        raise ShapeError(f"seed must be None or an int in [0, 2**128), got {str(seed)[:40]}")
    return x.shape, need_float(x), {"keep": float(keep),
                                    "seed": None if seed is None else int(seed)}


def mask_kernel(x, *, keep, seed=None, rng):
    """1 where kept (probability `keep`), 0 where dropped, in x's shape and dtype."""
    return (rng.random(x.shape) < keep).astype(x.dtype)


register(OpDef("dropout_mask", mask_infer, mask_kernel, lambda g, out, x, **attrs: (None,),
               random=True))


# the public builders ------------------------------------------------------------------

def softmax(x, axis: int = -1):
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    return apply("softmax", x, axis=axis)


def log_softmax(x, axis: int = -1):
    """x - logsumexp(x) along `axis`, computed stably."""
    return apply("log_softmax", x, axis=axis)


def softmax_cross_entropy(logits, labels):
    """Per-example loss -log softmax(logits)[label]; labels are integer classes of shape
    logits.shape[:-1] or float probabilities of logits' shape (class axis last)."""
    return apply("softmax_cross_entropy", logits, labels)


def binary_cross_entropy(p, y, from_logits: bool = False):
    """Elementwise -(y log p + (1-y) log(1-p)), each log clamped at -100 as in PyTorch (so
    0 log 0 = 0 and a saturated p = 0 or 1 gives no nan); with from_logits, p is a logit z
    and the stable softplus(z) - y z is used."""
    if from_logits:
        return apply("softplus", p) - y * p
    p = as_node(p)
    return -(y * clamped_log(p) + (1 - y) * clamped_log(1 - p))


def clamped_log(q):
    """max(log q, -100) as PyTorch, with no nan gradient at q = 0: log of a q set to 1 where
    q <= e^-100 (e^-100 is 0 in float16, whose log(max(q, e^-100)) was -inf: nan losses)."""
    small = apply("less_equal", q, float(np.exp(-100.0)))
    return apply("where", small, -100.0, apply("log", apply("where", small, 1.0, q)))


def dropout(x, rate: float, seed: int | None = None, training: bool = True):
    """x * mask / (1 - rate) with mask ~ Bernoulli(1 - rate); x itself when not training."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)) \
            or not 0 <= rate < 1:
        raise GraphcError(f"dropout: rate must be a number in [0, 1), got {rate!r}\n"
                          f"  at {user_line()}")
    if not training or rate == 0:
        return x
    keep = 1.0 - float(rate)
    mask = apply("dropout_mask", x, keep=keep, seed=seed)
    return x * mask * (1.0 / keep)
