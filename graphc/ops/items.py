"""Tuple-valued nodes: an op whose OpDef has `items` makes several arrays at once (a loop's
carries and stacked outputs); `item(t, index)` is the node of one of them.

The tuple node itself has no array type (shape (), dtype void); autodiff gives it one cotangent
per item (None where an item is not used), and its VJP rule receives them as a tuple.
"""
from __future__ import annotations

from graphc.ir import OPS, OpDef, ShapeError, register

TUPLE_DTYPE = "V"        # the dtype a tuple node carries (no array of it ever exists)


def item_infer(t, *, index):
    items = OPS[t.op].items if t.inputs else None
    if not items:
        raise ShapeError(f"item() reads a tuple-valued node, got a {t.op} node")
    types = items(t)
    if not isinstance(index, int) or not 0 <= index < len(types):
        raise ShapeError(f"index {index!r} is out of range for a tuple of {len(types)}")
    shape, dtype = types[index]
    return shape, dtype, {"index": index}


# the VJP hands autodiff (index, g): the cotangent of one item of the tuple
register(OpDef("item", item_infer, lambda t, *, index: t[index],
               lambda g, out, t, *, index: ((index, g),)))
