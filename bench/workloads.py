"""The benchmark workloads built with graphc, and a plain hand-written NumPy baseline of each.

Weights and batches come from the shared reference's `common.py`, so the first-step losses of
graphc, the baseline and the reference can be compared.
"""
from __future__ import annotations

import numpy as np

import graphc as gc

LR = 0.1
OPTIMIZE = [True]     # bench/run.py --no-optimize sets it to False


def np_softmax_ce(z, y):
    """Mean softmax cross-entropy of logits z (n, C) and integer labels y, and its gradient."""
    n = len(y)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(s[:, 0]) - z[np.arange(n), y])
    dz = e / s
    dz[np.arange(n), y] -= 1
    return loss, dz / n


def sgd(loss, params):
    return [(p, p - LR * g) for p, g in zip(params, gc.grad(loss, params))]


def mlp_logits(p):
    x = gc.placeholder((None, 784), "float32", name="x")
    params = [gc.variable(p[k].copy(), name=k) for k in ("W1", "b1", "W2", "b2", "W3", "b3")]
    W1, b1, W2, b2, W3, b3 = params
    h1 = gc.relu(x @ W1 + b1)
    h2 = gc.relu(h1 @ W2 + b2)
    return x, params, h2 @ W3 + b3


def graphc_mlp(p, B):
    x, params, z = mlp_logits(p)
    y = gc.placeholder((None,), "int64", name="y")
    loss = gc.mean(gc.softmax_cross_entropy(z, y))
    return gc.function([x, y], loss, updates=sgd(loss, params), optimize=OPTIMIZE[0])


def graphc_mlp_infer(p, B):
    """The MLP's forward pass: the logits of a batch."""
    x, _, z = mlp_logits(p)
    return gc.function([x], z, optimize=OPTIMIZE[0])


def graphc_logreg(p, B):
    x = gc.placeholder((None, 784), "float32", name="x")
    y = gc.placeholder((None, 1), "float32", name="y")
    w, b = gc.variable(p["w"].copy(), name="w"), gc.variable(p["b"].copy(), name="b")
    prob = gc.sigmoid(x @ w + b)
    loss = gc.mean(-(y * gc.log(prob) + (1.0 - y) * gc.log(1.0 - prob)))   # BCE by hand
    return gc.function([x, y], loss, updates=sgd(loss, [w, b]), optimize=OPTIMIZE[0])


def cnn_weights(p):
    """Reference HWIO kernels and (h, w, c)-ordered dense rows -> graphc's OIHW and NCHW."""
    from common import cnn_w3_chw
    return {"K1": p["K1"].transpose(3, 2, 0, 1).copy(), "c1": p["c1"].reshape(1, 32, 1, 1),
            "K2": p["K2"].transpose(3, 2, 0, 1).copy(), "c2": p["c2"].reshape(1, 64, 1, 1),
            "W3": cnn_w3_chw(p["W3"]), "b3": p["b3"], "W4": p["W4"], "b4": p["b4"]}


def graphc_cnn(p, B):
    return graphc_cnn_nchw(cnn_weights(p), B)


def graphc_cnn_nchw(q, B):
    """The CNN step from weights already in graphc's layouts (OIHW kernels, CHW dense rows)."""
    x = gc.placeholder((None, 1, 28, 28), "float32", name="x")
    y = gc.placeholder((None,), "int64", name="y")
    params = [gc.variable(q[k].copy(), name=k) for k in ("K1", "c1", "K2", "c2", "W3", "b3",
                                                         "W4", "b4")]
    K1, c1, K2, c2, W3, b3, W4, b4 = params
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, K1) + c1), 2)
    h = gc.max_pool2d(gc.relu(gc.conv2d(h, K2) + c2), 2)
    h = gc.reshape(h, (-1, 1600))
    h = gc.relu(h @ W3 + b3)
    loss = gc.mean(gc.softmax_cross_entropy(h @ W4 + b4, y))
    return gc.function([x, y], loss, updates=sgd(loss, params), optimize=OPTIMIZE[0])


# my own NumPy baselines: straightforward vectorized code, no preallocation tricks -------

class NumpyMLP:
    def __init__(self, p, B):
        self.p = {k: v.copy() for k, v in p.items()}

    def forward(self, x):
        p = self.p
        a1 = np.maximum(x @ p["W1"] + p["b1"], 0)
        a2 = np.maximum(a1 @ p["W2"] + p["b2"], 0)
        return a2 @ p["W3"] + p["b3"]

    def step(self, x, y):
        p = self.p
        a1 = np.maximum(x @ p["W1"] + p["b1"], 0)
        a2 = np.maximum(a1 @ p["W2"] + p["b2"], 0)
        z = a2 @ p["W3"] + p["b3"]
        loss, dz = np_softmax_ce(z, y)
        g = {"W3": a2.T @ dz, "b3": dz.sum(0)}
        d2 = (dz @ p["W3"].T) * (a2 > 0)
        g.update(W2=a1.T @ d2, b2=d2.sum(0))
        d1 = (d2 @ p["W2"].T) * (a1 > 0)
        g.update(W1=x.T @ d1, b1=d1.sum(0))
        for k in g:
            p[k] -= LR * g[k]
        return loss


class NumpyLogReg:
    def __init__(self, p, B):
        self.w, self.b = p["w"].copy(), p["b"].copy()

    def step(self, x, y):
        n = x.shape[0]
        prob = 1 / (1 + np.exp(-(x @ self.w + self.b)))
        loss = -np.mean(y * np.log(prob) + (1 - y) * np.log(1 - prob))
        dz = (prob - y) / n
        self.w -= LR * (x.T @ dz)
        self.b -= LR * dz.sum(0)
        return loss


def np_im2col(x, k):
    """(N, C, H, W) -> (N*OH*OW, C*k*k) patches, 3x3 valid."""
    n, c, h, w = x.shape
    oh, ow = h - k + 1, w - k + 1
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))   # N C OH OW k k
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * k * k), oh, ow


def np_col2im(dcols, shape, k):
    n, c, h, w = shape
    oh, ow = h - k + 1, w - k + 1
    d = dcols.reshape(n, oh, ow, c, k, k)
    dx = np.zeros(shape, np.float32)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + oh, j:j + ow] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return dx


def np_pool(a):
    n, c, h, w = a.shape
    v = a[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    out = v.max(axis=(3, 5))
    mask = v == out[:, :, :, None, :, None]
    return out, mask


def np_unpool(g, mask, shape):
    n, c, h, w = shape
    d = np.zeros(shape, np.float32)
    dv = d[:, :, :h // 2 * 2, :w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2)
    dv[...] = mask * g[:, :, :, None, :, None]
    return d


class NumpyCNN:
    def __init__(self, p, B):
        self.p = {k: v.copy() for k, v in cnn_weights(p).items()}

    def conv(self, x, K, c):
        cols, oh, ow = np_im2col(x, 3)
        out = cols @ K.reshape(K.shape[0], -1).T
        out = out.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2) + c
        return out, cols

    def conv_back(self, d, cols, K, xshape):
        n, o, oh, ow = d.shape
        d2 = d.transpose(0, 2, 3, 1).reshape(-1, o)
        dK = (d2.T @ cols).reshape(K.shape)
        dc = d.sum(axis=(0, 2, 3)).reshape(1, o, 1, 1)
        dx = np_col2im(d2 @ K.reshape(o, -1), xshape, 3)
        return dx, dK, dc

    def step(self, x, y):
        p, n = self.p, x.shape[0]
        a1, cols1 = self.conv(x, p["K1"], p["c1"])
        r1 = np.maximum(a1, 0)
        p1, m1 = np_pool(r1)
        a2, cols2 = self.conv(p1, p["K2"], p["c2"])
        r2 = np.maximum(a2, 0)
        p2, m2 = np_pool(r2)
        f = p2.reshape(n, -1)
        h = np.maximum(f @ p["W3"] + p["b3"], 0)
        z = h @ p["W4"] + p["b4"]
        loss, dz = np_softmax_ce(z, y)
        g = {"W4": h.T @ dz, "b4": dz.sum(0)}
        dh = (dz @ p["W4"].T) * (h > 0)
        g.update(W3=f.T @ dh, b3=dh.sum(0))
        dp2 = (dh @ p["W3"].T).reshape(p2.shape)
        da2 = np_unpool(dp2, m2, r2.shape) * (a2 > 0)
        dp1, g["K2"], g["c2"] = self.conv_back(da2, cols2, p["K2"], p1.shape)
        da1 = np_unpool(dp1, m1, r1.shape) * (a1 > 0)
        _, g["K1"], g["c1"] = self.conv_back(da1, cols1, p["K1"], x.shape)
        for k in g:
            p[k] -= LR * g[k]
        return loss
