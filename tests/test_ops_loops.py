"""Op table rows for loops: scan and the item nodes that read its tuple."""
import numpy as np

import graphc as gc
from tests.helpers import Row

rng = np.random.default_rng(0)


def cumulative_tanh(xs, w):
    def step(c, x):
        c = gc.tanh(c * w + x)
        return c, c * c
    return gc.scan(step, gc.constant(np.zeros(3)), xs)[1]


def cumulative_tanh_ref(xs, w):
    c, out = np.zeros(3), []
    for x in xs:
        c = np.tanh(c * w + x)
        out.append(c * c)
    return np.stack(out)


def reverse_sum(xs):
    return gc.scan(lambda c, x: (c + x, c), gc.constant(np.zeros(2)), xs, reverse=True)[0]


ROWS = [
    Row("scan", cumulative_tanh, [rng.standard_normal((4, 3)), rng.standard_normal(3)],
        cumulative_tanh_ref, ops=("scan", "item")),
    Row("scan", reverse_sum, [rng.standard_normal((5, 2))], lambda xs: xs.sum(0),
        ops=("scan", "item")),
]
