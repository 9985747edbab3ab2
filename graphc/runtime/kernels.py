"""Fast kernels the generated code calls: fused softmax cross-entropy, im2col conv, pooling."""
from __future__ import annotations

import numpy as np

from graphc.ops.nn import check_labels


def labels_in_range(z, y) -> bool:
    """The usual labels, checked in one reduction: signed integers of the logits' batch shape,
    viewed as unsigned (a negative label is then huge), all below the number of classes."""
    return y.dtype.kind == "i" and y.shape == z.shape[:-1] and y.size > 0 \
        and np.maximum.reduce(y.view(_UNSIGNED[y.itemsize]), axis=None) < z.shape[-1]


_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def sce_forward(z, y, loss, e, mx, s, starts, at):
    """loss = logsumexp(z) - z[y] per row; leaves e = exp(z - max), s = sum(e) and at = the
    flat index of each row's label (`starts`: each row's first) for the gradient, which is then
    one multiply and one scatter (sce_backward). A flat index reads and writes 2-3x faster
    than e[rows, y]."""
    if not labels_in_range(z, y):
        check_labels(z, y)        # raises the error naming the bad label or shape
    # the ufunc's reduce: np.max adds ~2 us of Python per call
    np.maximum.reduce(z, axis=1, keepdims=True, out=mx)
    np.subtract(z, mx, out=e)
    np.add(starts, y, out=at, casting="unsafe")     # labels checked: in range
    picked = e.reshape(-1)[at]
    np.exp(e, out=e)
    np.add.reduce(e, axis=1, out=s)
    np.log(s, out=loss)
    np.subtract(loss, picked, out=loss)
    return loss


def sce_backward(e, s, at, g, out):
    """(softmax(z) - onehot(y)) * g[:, None] from sce_forward's e, s and label indices at."""
    scale = np.divide(g, s)
    np.multiply(e, scale[:, None], out=out)
    flat = out.reshape(-1)
    flat[at] -= g
    return out
