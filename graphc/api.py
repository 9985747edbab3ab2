"""What users call to build graphs: leaves (placeholder, variable, constant) and every op.

Each op family module declares its ops and their builder functions side by side (`__all__`);
this module gathers them so `graphc` exposes one flat namespace.
"""
from __future__ import annotations

import numpy as np

from graphc.ir import METHODS, OPS, USER_OPS, GraphcError, Node, OpDef, Shape, _context, apply, \
    constant, name_scope, register, user_line
from graphc.ops import activations, elementwise, indexing, layout, linalg, nn, random, reduce, \
    shape, statistics
from graphc.ops import image, integer, trig
from graphc.ops.activations import *  # noqa: F401,F403
from graphc.ops.elementwise import *  # noqa: F401,F403
from graphc.ops.indexing import *  # noqa: F401,F403
from graphc.ops.layout import *  # noqa: F401,F403
from graphc.ops.linalg import *  # noqa: F401,F403
from graphc.ops.nn import *  # noqa: F401,F403
from graphc.ops.random import *  # noqa: F401,F403
from graphc.ops.reduce import *  # noqa: F401,F403
from graphc.ops.shape import *  # noqa: F401,F403
from graphc.ops.image import *  # noqa: F401,F403
from graphc.ops.integer import *  # noqa: F401,F403
from graphc.ops.trig import *  # noqa: F401,F403
from graphc.ops.statistics import *  # noqa: F401,F403

__all__ = (["placeholder", "variable", "constant", "name_scope", "OpDef", "register_op",
            "apply"] + elementwise.__all__ + activations.__all__ + reduce.__all__
           + statistics.__all__ + shape.__all__ + layout.__all__ + indexing.__all__
           + linalg.__all__ + nn.__all__ + random.__all__ + image.__all__ + integer.__all__
           + trig.__all__)


METHODS.update(mean=mean, var=var, std=std, clip=clip, squeeze=squeeze,  # noqa: F405
               swapaxes=swapaxes, flatten=flatten, getitem=indexing.getitem)  # noqa: F405


def register_op(op: OpDef) -> OpDef:
    """Add a user's op to the op table; build its nodes with gc.apply(op.name, *inputs, **attrs).

    A saved graph that uses it loads once the module calling register_op is imported.
    """
    if not isinstance(op, OpDef):
        raise GraphcError(f"register_op needs a gc.OpDef, got {type(op).__name__}")
    if not isinstance(op.name, str) or not op.name.isidentifier():
        raise GraphcError(f"op name must be an identifier, got {op.name!r}")
    if not callable(op.infer) or not callable(op.kernel):
        raise GraphcError(f"op {op.name!r}: infer and kernel must be callables")
    if op.name in OPS:
        raise GraphcError(f"op {op.name!r} is already registered (by {OPS[op.name].kernel!r}); "
                          "pick another name")
    USER_OPS.add(op.name)
    return register(op)


def placeholder(shape: Shape, dtype="float32", name: str | None = None) -> Node:
    """An input fed at each call; None (or a name) in `shape` is a size fixed per call.
    An int is a 1-d shape, as in NumPy (`placeholder(3)` raised TypeError; TF's argument
    order, `placeholder("float32", shape)`, made a shape of the letters). dtype=None is the
    default, float32 (it was NumPy's float64)."""
    check_name(name, "placeholder")
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, np.ndarray)):
        raise GraphcError(f"placeholder {name!r}: the shape must be a tuple of ints, None or "
                          f"names (e.g. (None, 3)), got {shape!r}\n  at {user_line()}")
    dims = []
    for d in shape:
        if isinstance(d, (int, np.integer)) and d >= 0:
            dims.append(int(d))
        elif d is None or isinstance(d, str):
            dims.append(d)
        else:
            raise GraphcError(f"placeholder {name!r}: bad dimension {d!r} in shape {shape}\n"
                              f"  at {user_line()}")
    scope, _ = _context.get()
    dtype = _dtype("float32" if dtype is None else dtype, "placeholder", name)
    return Node("placeholder", (), {}, tuple(dims), dtype, name, user_line(), scope)


def variable(value, dtype=None, name: str | None = None) -> Node:
    """A parameter with storage: read and assign it through `.value`."""
    check_name(name, "variable")
    try:
        arr = np.array(value, dtype=dtype)
    except (TypeError, ValueError) as e:    # a ragged list: NumPy's bare ValueError
        raise GraphcError(f"variable {name!r}: cannot make an array of {str(value)[:40]} "
                          f"({e})\n  at {user_line()}") from None
    if _dtype(arr.dtype, "variable", name) != arr.dtype:   # '>f4': stored in native order
        arr = arr.astype(_dtype(arr.dtype, "variable", name))
    scope, _ = _context.get()
    return Node("variable", (), {}, arr.shape, arr.dtype, name, user_line(), scope,
                data=[arr])


def check_name(name, what: str) -> None:
    """A node's name is a str or None: an int name broke save_params (TypeError)."""
    if name is not None and not isinstance(name, str):
        raise GraphcError(f"{what}: name must be a str, got {name!r}\n  at {user_line()}")


def _dtype(dtype, what: str, name) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise GraphcError(f"{what} {name!r}: unknown dtype {dtype!r}\n  at {user_line()}") \
            from None
    if dt.kind not in "biuf":
        raise GraphcError(f"{what} {name!r}: unsupported dtype {dt.name}\n  at {user_line()}")
    # a node's dtype is in native byte order (what ops give): a '>f4' placeholder's x * 2 was
    # '<f4' and sum(x) '>f4', and no update of a '>f4' variable matched it ("float32: float32")
    return dt if dt.isnative else dt.newbyteorder("=")
