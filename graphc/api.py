"""What users call to build graphs: leaves (placeholder, variable, constant) and every op.

Each op family module declares its ops and their builder functions side by side (`__all__`);
this module gathers them so `graphc` exposes one flat namespace.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError, Node, Shape, _context, constant, name_scope, user_line
from graphc.ops import elementwise, image, integer, nn, reduce, shape, trig
from graphc.ops.elementwise import *  # noqa: F401,F403
from graphc.ops.nn import *  # noqa: F401,F403
from graphc.ops.reduce import *  # noqa: F401,F403
from graphc.ops.shape import *  # noqa: F401,F403
from graphc.ops.image import *  # noqa: F401,F403
from graphc.ops.integer import *  # noqa: F401,F403
from graphc.ops.trig import *  # noqa: F401,F403

__all__ = (["placeholder", "variable", "constant", "name_scope"] + elementwise.__all__
           + reduce.__all__ + shape.__all__ + nn.__all__ + image.__all__ + integer.__all__
           + trig.__all__)


def placeholder(shape: Shape, dtype="float32", name: str | None = None) -> Node:
    """An input fed at each call; None (or a name) in `shape` is a size fixed per call."""
    dims = []
    for d in shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            dims.append(int(d))
        elif d is None or isinstance(d, str):
            dims.append(d)
        else:
            raise GraphcError(f"placeholder {name!r}: bad dimension {d!r} in shape {shape}")
    scope, _ = _context.get()
    return Node("placeholder", (), {}, tuple(dims), _dtype(dtype, "placeholder", name), name,
                user_line(), scope)


def variable(value, dtype=None, name: str | None = None) -> Node:
    """A parameter with storage: read and assign it through `.value`."""
    arr = np.array(value, dtype=dtype)
    _dtype(arr.dtype, "variable", name)
    scope, _ = _context.get()
    return Node("variable", (), {}, arr.shape, arr.dtype, name, user_line(), scope,
                data=[arr])


def _dtype(dtype, what: str, name) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise GraphcError(f"{what} {name!r}: unknown dtype {dtype!r}") from None
    if dt.kind not in "biuf":
        raise GraphcError(f"{what} {name!r}: unsupported dtype {dt.name}")
    return dt
