"""The graph IR: one immutable node type, graphs, building nodes from the op table, the interpreter.

Everything above this module builds nodes through `apply`, which runs the op's shape rule and
records the user's file and line, so every error can point back at the user's own code.
The op table sits in `graphc.opdef`, the printer in `graphc.listing`, the build context (name
scope, gradient-of, user line) in `graphc.scope`, storage locks and the GC pause in
`graphc.guards`, the checks of fed and assigned values in `graphc.feeds` (all re-exported
here).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from graphc.feeds import check_feed, check_result, checked_kernel, fits, \
    refuse_unknown_broadcast  # noqa: F401
from graphc.guards import paused_gc, storage_lock, storage_locks  # noqa: F401
from graphc.listing import format_attr, format_listing, format_node, format_shape  # noqa: F401
from graphc.opdef import OPS, USER_OPS, GraphcError, OpDef, ShapeError, register  # noqa: F401
from graphc.scope import _context, backward_of, context_grad_of, lines_below, name_scope, \
    user_line  # noqa: F401

Dim = int | str | None   # int: fixed; None or a name: the batch (resolved per call)
Shape = tuple[Dim, ...]


_ids = itertools.count()
_DTYPE_TYPES: set[type] = set()     # the classes of np.dtype instances met (np.dtype(d) is d)


def as_dtype(dtype) -> np.dtype:
    """np.dtype(dtype); a dtype instance's class is remembered, so a node built with a dtype
    (nearly every one) skips the call (~0.3 us of a node's ~1 us)."""
    out = np.dtype(dtype)
    if out is dtype:
        _DTYPE_TYPES.add(type(dtype))
    return out


class Node:
    """One value in a graph: an op applied to inputs. Immutable; knows inputs, never users.

    Leaves carry `data`: a read-only array for constants, a one-element list (the storage
    box, shared by every rebuilt copy) for variables, None for placeholders.
    """
    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "name", "where", "scope",
                 "grad_of", "data", "id", "__weakref__")
    __array_ufunc__ = None   # ndarray + node -> node.__radd__ (NumPy defers to us)

    def __init__(self, op: str, inputs: tuple[Node, ...], attrs: dict, shape: Shape, dtype,
                 name: str | None = None, where: str = "<unknown>", scope: tuple = (),
                 grad_of: Node | None = None, data: Any = None):
        self.op, self.inputs, self.attrs = op, tuple(inputs), dict(attrs)
        self.shape = tuple(shape)
        self.dtype = dtype if type(dtype) in _DTYPE_TYPES else as_dtype(dtype)
        self.name, self.where, self.scope, self.grad_of = name, where, scope, grad_of
        self.data, self.id = data, next(_ids)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def opdef(self) -> OpDef:
        return OPS[self.op]

    def replace(self, inputs: Sequence[Node]) -> Node:
        """This node with other inputs; `self` when nothing changes."""
        inputs = tuple(inputs)
        old = self.inputs
        if all(a is b for a, b in zip(inputs, old)):
            return self
        if len(inputs) == len(old) and all(a.shape == b.shape and a.dtype == b.dtype
                                           for a, b in zip(inputs, old)):
            # same input types: the shape rule would give this node's (canonical) type again
            grad_of = self.grad_of if self.grad_of is not None else context_grad_of()
            return Node(self.op, inputs, self.attrs, self.shape, self.dtype, self.name,
                        self.where, self.scope, grad_of)
        return apply(self.op, *inputs, _where=self.where, _name=self.name, _scope=self.scope,
                     _grad_of=self.grad_of, **self.attrs)

    def key(self) -> tuple:
        """What makes two non-leaf nodes compute the same value (for CSE)."""
        return (self.op, tuple(i.id for i in self.inputs),
                tuple(sorted((k, _hashable(v)) for k, v in self.attrs.items())))

    # variables -----------------------------------------------------------------------
    @property
    def value(self) -> np.ndarray:
        if self.op == "variable":
            return self.data[0]
        if self.op == "constant":
            return self.data
        raise GraphcError(f"{self.op} node has no stored value; use .eval(feeds)")

    @value.setter
    def value(self, new) -> None:
        if self.op != "variable":
            raise GraphcError(f"only variables can be assigned, not a {self.op} node\n"
                              f"  at {user_line()}")
        try:
            new = np.asarray(new)
        except (ValueError, TypeError) as e:          # ragged lists, unconvertible objects
            raise GraphcError(f"variable {self.label()}: cannot assign {type(new).__name__} "
                              f"({e})\n  at {user_line()}") from None
        if new.shape != self.shape:
            raise GraphcError(f"variable {self.label()}: cannot assign shape {new.shape}, "
                              f"expected {self.shape}\n  at {user_line()}")
        if not (np.can_cast(new.dtype, self.dtype, "safe") or new.dtype.kind == self.dtype.kind):
            raise GraphcError(f"variable {self.label()}: cannot assign dtype {new.dtype}, "
                              f"expected {self.dtype}\n  at {user_line()}")
        if not np.can_cast(new.dtype, self.dtype, "safe"):     # narrower: the values must fit
            with np.errstate(all="ignore"):
                cast = new.astype(self.dtype)
            if not fits(new, cast):
                raise GraphcError(f"variable {self.label()}: the assigned {new.dtype} values "
                                  f"do not fit {self.dtype} (they would wrap or overflow)\n"
                                  f"  at {user_line()}")
            new = cast
        with storage_lock(self):     # a compiled call of another thread sees old or new
            np.copyto(self.data[0], new, casting="unsafe")   # in place: compiled code keeps it

    # evaluation and printing -----------------------------------------------------------
    def eval(self, feeds: dict | None = None) -> np.ndarray:
        """Evaluate with the reference interpreter (no compilation)."""
        return evaluate([self], feeds or {})[0]

    def label(self) -> str:
        return repr(self.name) if self.name else f"<{self.op}>"

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        return f"<Node {self.op}{name} {format_shape(self.shape)} {self.dtype.name}>"

    def __str__(self) -> str:
        return str(Graph([self]))

    def _repr_svg_(self):
        return _repr_svg(self)

    def __bool__(self):
        raise GraphcError("a graph node has no truth value; use gc.where / gc.greater")

    def __iter__(self):
        raise GraphcError(f"cannot iterate over a graph node {format_shape(self.shape)}"
                          f"\n  at {user_line()}")

    # operator overloads build nodes through the op table ------------------------------
    def __add__(self, o): return apply("add", self, o)
    def __radd__(self, o): return apply("add", o, self)
    def __sub__(self, o): return apply("sub", self, o)
    def __rsub__(self, o): return apply("sub", o, self)
    def __mul__(self, o): return apply("mul", self, o)
    def __rmul__(self, o): return apply("mul", o, self)
    def __truediv__(self, o): return apply("div", self, o)
    def __rtruediv__(self, o): return apply("div", o, self)
    def __floordiv__(self, o): return apply("floor_divide", self, o)
    def __rfloordiv__(self, o): return apply("floor_divide", o, self)
    def __mod__(self, o): return apply("mod", self, o)
    def __rmod__(self, o): return apply("mod", o, self)
    def __pow__(self, o): return apply("pow", self, o)
    def __rpow__(self, o): return apply("pow", o, self)
    def __matmul__(self, o): return apply("matmul", self, o)
    def __rmatmul__(self, o): return apply("matmul", o, self)
    def __neg__(self): return apply("neg", self)
    def __abs__(self): return apply("abs", self)
    def __gt__(self, o): return apply("greater", self, o)
    def __ge__(self, o): return apply("greater_equal", self, o)
    def __lt__(self, o): return apply("less", self, o)
    def __le__(self, o): return apply("less_equal", self, o)
    # == stays identity: nodes are dict keys (feeds); use gc.equal for the elementwise test

    def __getitem__(self, index) -> Node:
        """NumPy's indexing where a static graph can have it (graphc.ops.indexing)."""
        return METHODS["getitem"](self, index)

    # NumPy's and PyTorch's methods, where they agree (or NumPy's, with a hint) -----------
    def sum(self, axis=None, keepdims=False): return apply("sum", self, axis=axis,
                                                           keepdims=keepdims)
    def max(self, axis=None, keepdims=False): return apply("max", self, axis=axis,
                                                           keepdims=keepdims)
    def min(self, axis=None, keepdims=False): return apply("min", self, axis=axis,
                                                           keepdims=keepdims)
    def prod(self, axis=None, keepdims=False): return apply("prod", self, axis=axis,
                                                            keepdims=keepdims)
    def argmax(self, axis=None, keepdims=False): return apply("argmax", self, axis=axis,
                                                              keepdims=keepdims)
    def argmin(self, axis=None, keepdims=False): return apply("argmin", self, axis=axis,
                                                              keepdims=keepdims)
    def mean(self, axis=None, keepdims=False): return METHODS["mean"](self, axis, keepdims)

    def var(self, axis=None, keepdims=False, ddof=0):
        return METHODS["var"](self, axis, keepdims, ddof)

    def std(self, axis=None, keepdims=False, ddof=0):
        return METHODS["std"](self, axis, keepdims, ddof)

    def astype(self, dtype) -> Node:
        return apply("cast", self, dtype=np.dtype(dtype).name)

    def clip(self, lo=None, hi=None): return METHODS["clip"](self, lo, hi)
    def squeeze(self, axis=None): return METHODS["squeeze"](self, axis)
    def swapaxes(self, axis1, axis2): return METHODS["swapaxes"](self, axis1, axis2)

    def flatten(self, start_axis: int = 0, end_axis: int = -1) -> Node:
        """All axes into one, as NumPy's x.flatten() and torch's (gc.flatten keeps axis 0)."""
        return METHODS["flatten"](self, start_axis, end_axis)

    def reshape(self, *shape) -> Node:
        """x.reshape(2, 3) or x.reshape((2, 3)), one dim may be -1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return apply("reshape", self, shape=shape)

    def transpose(self, *axes) -> Node:
        """NumPy's meaning: no axes reverses them; else a permutation of all the axes."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            return apply("transpose", self)
        if len(axes) != self.ndim:
            hint = (f"; to swap two axes as PyTorch's x.transpose({axes[0]}, {axes[1]}) does, "
                    f"use x.swapaxes({axes[0]}, {axes[1]}) (or x.mT for the last two)"
                    if len(axes) == 2 else "")
            raise GraphcError(f"x.transpose{tuple(axes)} of shape {format_shape(self.shape)}: "
                              f"graphc's transpose (as NumPy's) takes a permutation of all "
                              f"{self.ndim} axes{hint}\n  at {user_line()}")
        if self.ndim == 2 and [a % 2 for a in axes] == [0, 1]:   # PyTorch's swap, NumPy's no-op
            raise GraphcError(f"x.transpose{tuple(axes)} keeps both axes in place (NumPy's "
                              "meaning: a permutation); to swap them as PyTorch's does, use "
                              f"x.T or x.swapaxes(0, 1)\n  at {user_line()}")
        return apply("transpose", self, axes=axes)

    @property
    def T(self) -> Node:
        if self.ndim > 2:
            raise GraphcError(f"x.T of a {self.ndim}-d node {format_shape(self.shape)} would "
                              f"reverse all {self.ndim} axes (NumPy's meaning; PyTorch refuses "
                              "it): use x.mT or gc.swapaxes(x, -2, -1) to swap the last two "
                              "axes, or gc.transpose(x) to reverse them all"
                              f"\n  at {user_line()}")
        return apply("transpose", self)

    @property
    def mT(self) -> Node:
        """The last two axes swapped (a stack of matrices transposed), as NumPy and PyTorch."""
        if self.ndim < 2:
            raise GraphcError(f"x.mT needs at least 2 axes, got shape "
                              f"{format_shape(self.shape)}\n  at {user_line()}")
        return METHODS["swapaxes"](self, -2, -1)


METHODS: dict[str, Callable] = {}   # sugar the methods above call; graphc.api fills it


def _hashable(v):
    return tuple(map(_hashable, v)) if isinstance(v, (list, tuple)) else v


def as_node(x, like: Node | None = None) -> Node:
    """A node for x; Python scalars take the dtype NumPy would give them beside `like`."""
    if isinstance(x, Node):
        return x
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        key = (type(x), x, math.copysign(1.0, x) if type(x) is float else 0,
               None if like is None else like.dtype)
        arr = _SCALARS.get(key)
        if arr is not None:
            scope, grad_of = _context.get()
            return Node("constant", (), {}, arr.shape, arr.dtype, None, user_line(), scope,
                        grad_of, data=arr)
        if like is not None:
            dtype = np.result_type(like.dtype, x)
        else:
            dtype = np.float32 if isinstance(x, float) else np.asarray(x).dtype
        try:
            with np.errstate(all="ignore"):
                arr = np.asarray(x, dtype=dtype)
        except OverflowError:                       # NumPy's: -1 as uint8
            arr = None
        if arr is None or not fits(np.asarray(x), arr):     # 1e5 beside a float16: inf
            beside = "" if like is None else ", the dtype of the node beside it (cast one " \
                                             "of them first)"
            raise GraphcError(f"the Python scalar {x!r} does not fit "
                              f"{np.dtype(dtype).name}{beside}\n  at {user_line()}")
        node = constant(arr)
        if len(_SCALARS) >= 4096:
            _SCALARS.clear()
        _SCALARS[key] = node.data       # read-only: the nodes of one scalar may share it
        return node
    return constant(x)


# (type, value, sign of a float zero, dtype beside it) -> its checked read-only array: a
# gradient converts the same few scalars (tanh's 1 - y*y) once per node, and each conversion
# (dtype promotion, an overflow check, two errstates, a copy) cost more than the node itself
_SCALARS: dict[tuple, np.ndarray] = {}


def constant(value, dtype=None, name: str | None = None) -> Node:
    """A node holding a fixed array (read-only)."""
    if isinstance(value, Node):
        raise GraphcError(f"constant() needs an array, got a graph node {value!r}")
    if name is not None and not isinstance(name, str):
        raise GraphcError(f"constant: name must be a str, got {name!r}\n  at {user_line()}")
    try:
        dtype = None if dtype is None else np.dtype(dtype)
    except TypeError:
        raise GraphcError(f"constant: unknown dtype {dtype!r}\n  at {user_line()}") from None
    try:
        with np.errstate(all="ignore"):
            arr = np.array(value, dtype=dtype)
    except (OverflowError, ValueError, TypeError) as e:   # NumPy's: 300 into int8, 'a' into f4
        raise GraphcError(f"constant: {str(value)[:40]} does not fit {dtype} ({e})\n"
                          f"  at {user_line()}") from None
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise GraphcError(f"constant: unsupported value of dtype {arr.dtype}\n  at {user_line()}")
    if dtype is not None and not isinstance(value, np.ndarray) \
            and not fits(np.asarray(value), arr):       # as a Python feed: 1e5 is not inf in f2
        raise GraphcError(f"constant: {str(value)[:40]} does not fit {dtype}\n"
                          f"  at {user_line()}")
    if arr.dtype == np.float64 and dtype is None and not isinstance(value, np.ndarray) \
            and not isinstance(value, np.generic):
        arr = arr.astype(np.float32)       # Python floats default to float32, as in DL
    if not arr.dtype.isnative:             # '>f8': a node's dtype is in native byte order
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr.setflags(write=False)
    scope, grad_of = _context.get()
    return Node("constant", (), {}, arr.shape, arr.dtype, name, user_line(), scope, grad_of,
                data=arr)


def apply(op: str, *inputs, _where: str | None = None, _name: str | None = None,
          _scope: tuple | None = None, _grad_of: Node | None = None, **attrs) -> Node:
    """Build a node of `op`: convert scalars, run the shape/dtype rule, record the user line."""
    try:
        opdef = OPS[op]
    except (KeyError, TypeError):     # gc.apply("nope", x) was a bare KeyError
        raise GraphcError(f"unknown op {op!r} (register it with gc.register_op)\n"
                          f"  at {_where or user_line()}") from None
    nodes = [i for i in inputs if isinstance(i, Node)]
    if len(nodes) == len(inputs):           # no scalars to convert (passes, grad)
        nodes = inputs
    else:
        like = next((n for n in nodes if n.dtype != bool), nodes[0] if nodes else None)
        try:
            nodes = tuple(as_node(i, like) for i in inputs)
        except GraphcError as e:    # a weak scalar takes like's dtype, as in NumPy: -1 in uint8
            args = ", ".join(f"{format_shape(i.shape)} {i.dtype.name}" if isinstance(i, Node)
                             else repr(i) for i in inputs)
            raise GraphcError(f"{op}({args}): {str(e).splitlines()[0]}\n"
                              f"  at {_where or user_line()}") from None
    where = _where or user_line()
    try:
        shape, dtype, *canonical = opdef.infer(*nodes, **attrs)
        if canonical:             # the rule may normalise attributes (axis=-1 -> axis=(1,))
            attrs = canonical[0]
        scope, grad_of = _context.get()
        return Node(op, nodes, attrs, shape, dtype, _name, where,
                    scope if _scope is None else _scope,
                    grad_of if _grad_of is None else _grad_of)
    except ShapeError as e:
        args = ", ".join(f"{format_shape(n.shape)} {n.dtype.name}" for n in nodes)
        raise GraphcError(f"{op}({args}): {e}\n  at {where}") from None
    except GraphcError:
        raise
    except Exception as e:   # an attribute the rule does not take, a rule's own bug or result
        args = ", ".join(f"{format_shape(n.shape)} {n.dtype.name}" for n in nodes)
        raise GraphcError(f"{op}({args}{''.join(f', {k}={v!r}' for k, v in attrs.items())}): "
                          f"its shape rule failed ({type(e).__name__}: {e}); it must return "
                          f"(shape, dtype[, attrs])\n  at {where}") from e


# graphs -------------------------------------------------------------------------------

def toposort(outputs: Iterable[Node]) -> list[Node]:
    """Every node the outputs depend on, inputs before users, in a stable order (iterative)."""
    order, seen = [], set()
    for root in outputs:
        if root in seen:                # nodes hash by identity (no __eq__)
            continue
        seen.add(root)
        stack = [(root, iter(root.inputs))]
        while stack:
            node, rest = stack[-1]
            for child in rest:          # the first input not seen yet goes on the stack
                if child not in seen:
                    seen.add(child)
                    if not child.inputs:    # a leaf is done at once (as if pushed, popped)
                        order.append(child)
                        continue
                    stack.append((child, iter(child.inputs)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class Graph:
    """Outputs and variable updates (pairs (variable, new value)); nodes in stable order."""

    def __init__(self, outputs: Sequence[Node], updates: Sequence[tuple[Node, Node]] = ()):
        self.outputs = tuple(outputs)
        if updates:
            self.updates = tuple([(v, n) for v, n in updates])
            roots = self.outputs + tuple([x for pair in self.updates for x in pair])
        else:                       # a fused group's body: thousands of small graphs
            self.updates, roots = (), self.outputs
        try:
            self.nodes = toposort(roots)
        except AttributeError:      # gc.Graph([3]): "'int' object has no attribute 'inputs'"
            bad = next(x for x in roots if not isinstance(x, Node))
            raise GraphcError(f"Graph: outputs and updates must be graph nodes, got "
                              f"{type(bad).__name__}\n  at {user_line()}") from None

    @property
    def placeholders(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "placeholder"]

    @property
    def variables(self) -> list[Node]:
        return [n for n in self.nodes if n.op == "variable"]

    def users(self) -> dict[int, list[Node]]:
        """id(node) -> the nodes that read it, in graph order."""
        users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for i in dict.fromkeys(map(id, n.inputs)):    # each user once, no list scan
                users[i].append(n)
        return users

    def __str__(self) -> str:
        return format_listing(self)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return (f"<Graph {len(self.nodes)} nodes, {len(self.outputs)} outputs, "
                f"{len(self.updates)} updates; print() it for the listing>")

    def _repr_svg_(self):
        return _repr_svg(self)


def as_graph(obj, what: str = "graph") -> Graph:
    """A Graph from what users hand over: a node, nodes, a Graph, or an object holding one
    as `.graph` (a compiled Function); `what` names the caller in the error."""
    if isinstance(obj, Graph):
        return obj
    if isinstance(obj, Node):
        return Graph([obj])
    if isinstance(getattr(obj, "graph", None), Graph):
        return obj.graph
    iterable = hasattr(obj, "__iter__") and not isinstance(obj, (str, bytes, dict))
    nodes = list(obj) if iterable else [obj]
    if all(isinstance(n, Node) for n in nodes):
        return Graph(nodes)
    bad = next(type(n).__name__ for n in nodes if not isinstance(n, Node))
    raise GraphcError(f"{what}: outputs must be graph nodes, a Graph or a Function, got {bad}"
                      f"\n  at {user_line()}")


DRAW: list = []    # viz's repr_svg, registered by graphc/__init__ (drawing sits above the IR)


def _repr_svg(obj):
    """Jupyter's picture of a node, graph or Function; None (the text repr) before viz."""
    return DRAW[0](obj) if DRAW else None


# the reference interpreter ------------------------------------------------------------

def rule_shape(n: Node, args: list) -> tuple:
    """n's shape by its rule at its inputs' run-time shapes: what a user's kernel must return
    (a dim known only at run time is the rule's to say, as for the compiled plan's buffers)."""
    if all(isinstance(d, int) for d in n.shape):
        return n.shape
    ins = [x if x.shape == a.shape else Node("placeholder", (), {}, a.shape, x.dtype, x.name,
                                              x.where) for x, a in zip(n.inputs, args)]
    return tuple(OPS[n.op].infer(*ins, **n.attrs)[0])


def evaluate(outputs: Sequence[Node], feeds: dict) -> list[np.ndarray]:
    """Run the kernels in topological order: the oracle passes and the runtime are tested on."""
    order = toposort(outputs)
    for ph in feeds:
        if not isinstance(ph, Node) or ph.op != "placeholder":
            raise GraphcError(f"feeds are keyed by placeholders, got {ph!r}")
    values: dict[int, np.ndarray] = {}
    rngs: dict[int, np.random.Generator] = {}
    for n in order:
        if n.op == "placeholder":
            if n not in feeds:
                raise GraphcError(f"placeholder {n.label()} {format_shape(n.shape)} "
                                  f"{n.dtype.name} needs a feed (built at {n.where})")
            values[id(n)] = check_feed(n, feeds[n])
        elif n.op == "variable":
            values[id(n)] = n.data[0]
        elif n.op == "constant":
            values[id(n)] = n.data
        else:
            opdef = OPS[n.op]
            extra = {"rng": rngs.setdefault(id(n), np.random.default_rng(n.attrs.get("seed")))} \
                if opdef.random else {}
            args = [values[id(i)] for i in n.inputs]
            try:
                with np.errstate(all="ignore"):
                    out = opdef.kernel(*args, **n.attrs, **extra)
            except GraphcError:
                raise
            except Exception as e:
                shapes = ", ".join(format_shape(a.shape) for a in args)
                raise GraphcError(f"{n.op}({shapes}) failed at run time: {e}\n"
                                  f"  at {n.where}") from None
            if not opdef.items:         # a Python number or list takes the node's dtype
                out = out if isinstance(out, np.ndarray) else np.asarray(out, n.dtype)
                check_result(n, out, rule_shape(n, args) if n.op in USER_OPS else n.shape)
            values[id(n)] = out
            if opdef.elementwise or n.op == "broadcast_to":
                refuse_unknown_broadcast(n, [values[id(i)].shape for i in n.inputs],
                                         values[id(n)].shape)
    # a variable's storage (or a view of it) is copied: updates write it in place later, and
    # a value must not change after it was computed (as a compiled call's outputs do not); a
    # feed's memory too (x, reshape(x)): writing into a result must not change the user's array
    held = [n.data[0] for n in order if n.op == "variable"] + \
        [v for v in feeds.values() if isinstance(v, np.ndarray)]
    return [a.copy() if isinstance(a, np.ndarray) and any(np.may_share_memory(a, h)
                                                          for h in held) else a
            for a in (values[id(o)] for o in outputs)]
