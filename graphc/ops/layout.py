"""More data movement, NumPy's names and meanings: stack, split, squeeze, expand_dims,
swapaxes, flatten, tile, repeat, tril/triu, zeros_like/ones_like as sugar over reshape,
transpose, concat, slice and where; pad, flip and stop_gradient are primitives (one kernel
call each; their VJPs are slices, a flip, and nothing)."""
from __future__ import annotations

import numpy as np

from graphc.ir import GraphcError, OpDef, ShapeError, apply, as_node, constant, format_shape, \
    register, user_line
from graphc.ops.common import norm_axes
from graphc.ops.shape import same_sym

__all__ = ["stack", "split", "squeeze", "expand_dims", "swapaxes", "flatten", "tile", "repeat",
           "tril", "triu", "pad", "flip", "stop_gradient", "zeros_like", "ones_like"]


def fail(op: str, x, msg: str):
    """A build error in apply's format, for sugar that checks its arguments itself."""
    raise GraphcError(f"{op}({format_shape(x.shape)} {x.dtype.name}): {msg}\n  at {user_line()}")


# pad ----------------------------------------------------------------------------------

def pad_widths(pad_width, ndim: int) -> tuple:
    """NumPy's forms (n, (before, after), one pair per axis) as one (before, after) per axis."""
    w = np.asarray(pad_width)
    if w.dtype.kind in "iu" and w.size in (1, 2) and w.ndim <= 2:
        w = np.broadcast_to(w.reshape(-1)[[0, -1]], (ndim, 2))
    if w.dtype.kind not in "iu" or w.shape != (ndim, 2) or (w < 0).any():
        raise ShapeError(f"pad_width {pad_width!r} must be n >= 0, a (before, after) pair or "
                         f"one pair for each of the {ndim} axes")
    return tuple((int(b), int(a)) for b, a in w)


def pad_infer(x, *, widths, value=0.0):
    widths = pad_widths(widths, x.ndim)
    shape = tuple(d + b + a if isinstance(d, int) else None if b or a else d
                  for d, (b, a) in zip(x.shape, widths))
    return shape, x.dtype, {"widths": widths, "value": float(value)}


def pad_vjp(g, out, x, *, widths, value):
    for axis, (b, a) in enumerate(widths):
        if b or a:
            g = apply("slice", g, axis=axis, start=b, stop=-a if a else None)
    return (g,)


register(OpDef(
    "pad", pad_infer,
    lambda x, *, widths, value: np.pad(x, widths, mode="constant", constant_values=value),
    pad_vjp))


# flip and stop_gradient ---------------------------------------------------------------

def flip_infer(x, *, axis=None):
    return x.shape, x.dtype, {"axis": norm_axes(axis, x.ndim)}


register(OpDef("flip", flip_infer, lambda x, *, axis: np.flip(x, axis),
               lambda g, out, x, *, axis: (apply("flip", g, axis=axis),), same_sym))
register(OpDef("stop_gradient", lambda x: (x.shape, x.dtype), lambda x: x,
               lambda g, out, x: (None,), same_sym))


# sugar --------------------------------------------------------------------------------

def reshape_to(x, shape: tuple, op: str):
    """x reshaped to `shape`, whose unknown dims (None) may be at most one (reshape's -1)."""
    if sum(not isinstance(d, int) for d in shape) > 1:
        fail(op, x, f"the result {format_shape(shape)} would have more than one dimension of "
                    "unknown size, which a reshape cannot express; give the placeholder fixed "
                    "sizes")
    return apply("reshape", x, shape=tuple(d if isinstance(d, int) else -1 for d in shape))


def axes_of(op: str, x, axis, ndim: int) -> tuple[int, ...]:
    try:
        return norm_axes(axis, ndim)
    except ShapeError as e:
        fail(op, x, str(e))


def expand_dims(x, axis):
    """A new axis of size 1 at each position in `axis` (positions in the result)."""
    x = as_node(x)
    axes = axes_of("expand_dims", x, axis, x.ndim + (1 if isinstance(axis, int) else len(axis)))
    dims = iter(x.shape)
    return reshape_to(x, tuple(1 if i in axes else next(dims)
                               for i in range(x.ndim + len(axes))), "expand_dims")


def squeeze(x, axis=None):
    """Drop axes of size 1 (all of them when axis is None; a named axis must have size 1)."""
    x = as_node(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = axes_of("squeeze", x, axis, x.ndim)
        bad = [a for a in axes if x.shape[a] != 1]
        if bad:
            fail("squeeze", x, f"axis {bad[0]} has size {x.shape[bad[0]]}, not 1")
    if not axes:
        return x
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if sum(not isinstance(d, int) for d in shape) <= 1:
        return reshape_to(x, shape, "squeeze")
    return apply("sum", x, axis=axes)          # summing size-1 axes drops them, exactly


def stack(xs, axis: int = 0):
    """Join nodes of one shape along a new axis."""
    xs = [as_node(x) for x in xs]
    if not xs:
        raise GraphcError(f"stack needs at least one input\n  at {user_line()}")
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
        raise GraphcError("stack: inputs must have the same shape, got "
                          + ", ".join(format_shape(x.shape) for x in xs) + f"\n  at {user_line()}")
    (axis,) = axes_of("stack", xs[0], axis, xs[0].ndim + 1)
    return apply("concat", *[expand_dims(x, axis) for x in xs], axis=axis)


def split(x, sections_or_indices, axis: int = 0) -> list:
    """NumPy's split: an int n gives n equal parts (the size must divide), a list of indices
    gives the parts between them. Returns a list of nodes."""
    x = as_node(x)
    (axis,) = axes_of("split", x, axis, x.ndim)
    size = x.shape[axis]
    if isinstance(sections_or_indices, (int, np.integer)):
        n = int(sections_or_indices)
        if not isinstance(size, int):
            fail("split", x, f"axis {axis} has an unknown size; give split indices instead "
                             f"of a number of sections")
        if n < 1 or size % n:
            fail("split", x, f"{size} elements along axis {axis} do not split into {n} equal "
                             "parts")
        cuts = [size // n * k for k in range(1, n)]
    else:
        cuts = [int(c) for c in sections_or_indices]
    bounds = zip([0] + cuts, cuts + [None])
    return [apply("slice", x, axis=axis, start=a, stop=b) for a, b in bounds]


def swapaxes(x, axis1: int, axis2: int):
    """x with two axes exchanged (PyTorch's x.transpose(a, b))."""
    x = as_node(x)
    perm = list(range(x.ndim))
    a, b = (axes_of("swapaxes", x, i, x.ndim)[0] for i in (axis1, axis2))
    perm[a], perm[b] = perm[b], perm[a]
    return apply("transpose", x, axes=tuple(perm))


def flatten(x, start_axis: int = 1, end_axis: int = -1):
    """Merge axes start_axis..end_axis into one (PyTorch's flatten; keeps the batch axis)."""
    x = as_node(x)
    if x.ndim == 0:
        return reshape_to(x, (1,), "flatten")
    s, e = (axes_of("flatten", x, a, x.ndim)[0] for a in (start_axis, end_axis))
    if s > e:
        fail("flatten", x, f"start_axis {start_axis} comes after end_axis {end_axis}")
    group = x.shape[s:e + 1]
    merged = int(np.prod(group)) if all(isinstance(d, int) for d in group) else None
    return reshape_to(x, x.shape[:s] + (merged,) + x.shape[e + 1:], "flatten")


def static(op: str, x):
    if not all(isinstance(d, int) for d in x.shape):
        fail(op, x, "needs a fully known shape")


def tile(x, reps):
    """x repeated as a whole `reps` times along each axis (NumPy's tile)."""
    x = as_node(x)
    static("tile", x)
    reps = (int(reps),) if isinstance(reps, (int, np.integer)) else tuple(int(r) for r in reps)
    if any(r < 0 for r in reps):
        fail("tile", x, f"reps {reps} must be non-negative")
    ndim = max(len(reps), x.ndim)
    reps = (1,) * (ndim - len(reps)) + reps
    shape = (1,) * (ndim - x.ndim) + x.shape
    pairs = tuple(d for s in shape for d in (1, s))
    big = apply("broadcast_to", apply("reshape", x, shape=pairs),
                shape=tuple(d for r, s in zip(reps, shape) for d in (r, s)))
    return apply("reshape", big, shape=tuple(r * s for r, s in zip(reps, shape)))


def repeat(x, repeats, axis: int | None = None):
    """Each element repeated `repeats` times along `axis` (NumPy's repeat; axis None
    flattens first; repeats may be one count per element)."""
    x = as_node(x)
    static("repeat", x)
    if axis is None:
        x, axis = apply("reshape", x, shape=(-1,)), 0
    (axis,) = axes_of("repeat", x, axis, x.ndim)
    n = x.shape[axis]
    if not isinstance(repeats, (int, np.integer)):
        counts = np.asarray(repeats)
        if counts.shape not in ((n,), (1,)) or counts.dtype.kind not in "iu" or (counts < 0).any():
            fail("repeat", x, f"repeats must be a non-negative count or {n} of them")
        return apply("take", x, constant(np.repeat(np.arange(n), np.broadcast_to(counts, (n,)))),
                     axis=axis)
    r = int(repeats)
    if r < 0:
        fail("repeat", x, f"repeats must be non-negative, got {r}")
    inner = x.shape[:axis + 1] + (1,) + x.shape[axis + 1:]
    big = apply("broadcast_to", apply("reshape", x, shape=inner),
                shape=x.shape[:axis + 1] + (r,) + x.shape[axis + 1:])
    return apply("reshape", big, shape=x.shape[:axis] + (n * r,) + x.shape[axis + 1:])


def triangle(x, k: int, lower: bool):
    x = as_node(x)
    op = "tril" if lower else "triu"
    if x.ndim < 2 or not all(isinstance(d, int) for d in x.shape[-2:]):
        fail(op, x, "needs at least 2 axes, the last two of known size")
    ones = np.ones(x.shape[-2:], dtype=bool)
    mask = np.tril(ones, int(k)) if lower else np.triu(ones, int(k))
    return apply("where", constant(mask), x, 0)


def tril(x, k: int = 0):
    """x with the elements above the k-th diagonal of the last two axes set to 0."""
    return triangle(x, k, lower=True)


def triu(x, k: int = 0):
    """x with the elements below the k-th diagonal of the last two axes set to 0."""
    return triangle(x, k, lower=False)


def pad(x, pad_width, value: float = 0.0):
    """Constant padding, NumPy's pad_width forms: n, (before, after), or one pair per axis."""
    return apply("pad", x, widths=pad_width, value=value)


def flip(x, axis=None):
    """x with the order of elements reversed along `axis` (all axes when None)."""
    return apply("flip", x, axis=axis)


def stop_gradient(x):
    """x itself, but gradients do not flow through it (a constant to autodiff)."""
    return apply("stop_gradient", x)


def filled_like(x, value, dtype):
    x = as_node(x)
    dtype = x.dtype if dtype is None else np.dtype(dtype)
    return apply("broadcast_to", constant(np.asarray(value, dtype=dtype)), x)


def zeros_like(x, dtype=None):
    """Zeros of x's shape (known at run time) and dtype."""
    return filled_like(x, 0, dtype)


def ones_like(x, dtype=None):
    """Ones of x's shape (known at run time) and dtype."""
    return filled_like(x, 1, dtype)
