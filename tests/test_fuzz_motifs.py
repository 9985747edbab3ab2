"""Compositions the optimizer's rules look for, as op-table rows the fuzzer (test_fuzz.py)
draws from beside the table's own rows: single ops rarely line up into log(softmax z), a
hand-written cross-entropy or a matmul + bias + activation."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from tests.helpers import Row, check_row

_r = np.random.default_rng(10)


def _u(*shape, lo=-2.0, hi=2.0):
    return _r.uniform(lo, hi, size=shape)


def _by_hand_softmax(z, shifted):
    e = gc.exp(z - gc.max(z, axis=1, keepdims=True) if shifted else z)
    return e / gc.sum(e, axis=1, keepdims=True)


MOTIFS = [
    Row("log(softmax)", lambda z: gc.log(gc.softmax(z, axis=0)), [_u(3, 4)]),
    Row("softmax by hand", lambda z: gc.log(_by_hand_softmax(z, True)), [_u(3, 4) * 5]),
    Row("softmax by hand", lambda z: _by_hand_softmax(z, False), [_u(3, 4)]),
    Row("softplus by hand", lambda z: gc.log(1 + gc.exp(z)), [_u(3, 4) * 5]),
    Row("log sigmoid", lambda z: gc.log(gc.sigmoid(z)) - gc.log(1 - gc.sigmoid(z)),
        [_u(3, 4) * 5]),
    Row("one-hot CE", lambda z, y: -gc.sum(gc.one_hot(y, 4) * gc.log_softmax(z), axis=-1),
        [_u(5, 4), np.array([0, 3, -1, 4, 2])]),
    Row("one-hot CE", lambda z, y: -gc.sum(gc.log(gc.softmax(z)) * gc.one_hot(y, 4), axis=1),
        [_u(5, 4), np.array([0, 3, 1, 3, 2])]),
    Row("prob CE", lambda z, p: -gc.sum(p * gc.log_softmax(z), axis=-1),
        [_u(3, 4), _u(3, 4, lo=0.0, hi=1.0)]),
    Row("mean CE", lambda z, y: gc.mean(gc.softmax_cross_entropy(z, y)),
        [_u(5, 3), np.array([0, 2, 1, 1, 0])]),
    Row("bce by hand", lambda z, y: -(y * gc.log(gc.sigmoid(z))
                                      + (1 - y) * gc.log(1 - gc.sigmoid(z))),
        [_u(3, 4) * 3, _u(3, 4, lo=0.0, hi=1.0)]),
    Row("bce", lambda z, y: gc.binary_cross_entropy(gc.sigmoid(z), y),
        [_u(3, 4) * 3, _u(3, 4, lo=0.0, hi=1.0)]),
    Row("softplus and sigmoid", lambda z: gc.softplus(z) * gc.sigmoid(z) - gc.softplus(z),
        [_u(3, 4) * 30]),
    Row("broadcast scalar", lambda x, s: gc.exp(x) * gc.broadcast_to(s, x) + x, [_u(3, 4), _u()]),
    Row("dense relu", lambda x, w, b: gc.relu(x @ w + b), [_u(3, 4), _u(4, 5), _u(5)]),
    Row("dense sigmoid", lambda x, w: gc.sigmoid(gc.transpose(x) @ w), [_u(4, 3), _u(4, 2)]),
    Row("dense tanh", lambda x, w, b: gc.tanh(b + x @ gc.transpose(w)),
        [_u(3, 4), _u(2, 4), _u(1, 2)]),
    Row("cnn block", lambda x, w, b: gc.max_pool2d(gc.relu(gc.conv2d(x, w, padding=1) + b), 2),
        [_u(2, 3, 5, 6), _u(4, 3, 3, 3), _u(1, 4, 1, 1)]),
    Row("pool bias", lambda x, b: gc.max_pool2d(x + b, (2, 3), stride=1),
        [_u(2, 2, 4, 5), _u(2, 1, 1)]),
    Row("avg pool relu", lambda x: gc.avg_pool2d(gc.relu(x), 2) * gc.max_pool2d(x, 2),
        [_u(1, 2, 4, 4)]),
    Row("identities", lambda x, y: ((x * 1 + 0) - 0) / 1 + 0 * y + (y - y) - (0 - x),
        [_u(3, 4), _u(4)]),
    Row("negations", lambda a, b: -(a - b) + (-a) * (-b) + a + (-b) - (-b) + -(-a),
        [_u(3, 4), _u(3, 1)]),
    Row("exp log", lambda x: gc.exp(gc.log(gc.exp(x))) + gc.log(gc.exp(x)), [_u(2, 3)]),
    Row("moves", lambda x: gc.reshape(gc.reshape(gc.transpose(gc.transpose(x, (1, 2, 0)),
                                                              (2, 0, 1)), (6, 4)), (2, 12)),
        [_u(2, 3, 4)]),
    Row("broadcasts", lambda s: gc.sum(gc.broadcast_to(gc.broadcast_to(
        gc.reshape(s, (1, 1)), (1, 4)), (3, 4)), axis=0) + gc.sum(gc.reshape(s, (1, 1)), axis=1),
        [_u()]),
    Row("wheres", lambda c, g: gc.where(c > 0, gc.where(c > 0, g, 0.0), 0.0)
        + gc.where(gc.relu(c) > 0, g, g) + gc.where(gc.constant(True), g, c), [_u(3, 4), _u(4)]),
    Row("int chain", lambda k, x: (k * 3 - 1) * x + gc.abs(k) + gc.maximum(k, 1),
        [np.array([[1, -2, 3], [0, 5, -1]]), _u(2, 3)]),
    Row("bool chain", lambda a, b: gc.mean(gc.logical_not(a > b), axis=1) * a[:, 0],
        [_u(3, 4), _u(4)]),
    Row("casts", lambda x: gc.cast(gc.cast(gc.cast(x, "float32"), "float64"), "float64") * x,
        [_u(3, 4)]),
]


@pytest.mark.parametrize("row", MOTIFS, ids=[r.name for r in MOTIFS])
def test_motif_builds_and_its_shape_rule_matches_its_kernel(row):
    check_row(row)
