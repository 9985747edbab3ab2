"""Fast kernels the generated code calls: fused softmax cross-entropy, im2col conv, pooling."""
from __future__ import annotations

import numpy as np

from graphc.ops.nn import check_labels


def sce_forward(z, y, loss, e, mx, s, rows):
    """loss = logsumexp(z) - z[y] per row; leaves e = exp(z - max) and s = sum(e) for the
    gradient, which is then one multiply and one scatter (sce_backward)."""
    check_labels(z, y)
    np.max(z, axis=1, keepdims=True, out=mx)
    np.subtract(z, mx, out=e)
    picked = e[rows, y]
    np.exp(e, out=e)
    np.add.reduce(e, axis=1, out=s)
    np.log(s, out=loss)
    np.subtract(loss, picked, out=loss)
    return loss


def sce_backward(e, s, y, g, out, rows):
    """(softmax(z) - onehot(y)) * g[:, None] from sce_forward's e and s."""
    scale = np.divide(g, s)
    np.multiply(e, scale[:, None], out=out)
    out[rows, y] -= g
    return out
