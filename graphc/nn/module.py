"""Layers and models: callables that build graph nodes and own their variables.

A layer creates its variables on its first call, when the input's shape is known, and reuses
them on every later call, so `model(x, training=True)` and `model(x, training=False)` build a
training graph and an evaluation graph over the same variables. A model is a layer that holds
other layers (as attributes, lists or dicts) and connects them in `forward`: residual
connections, several inputs and shared layers are plain Python. Parameters, state, kernels
and state updates are collected from the layers a model holds, the way PyTorch modules do.
"""
from __future__ import annotations

import contextlib
import inspect
import contextvars
from typing import Callable, Iterator, Sequence

import numpy as np

import graphc as gc
from graphc.ir import GraphcError, Node, format_shape
from graphc.nn import init as initializers
from graphc.scope import user_line

# The mode of the innermost layer call: a layer called inside a model's forward without an
# explicit `training=` takes its caller's mode, so an evaluation graph never silently uses
# batch statistics or dropout because a `training=` was forgotten somewhere inside.
_training = contextvars.ContextVar("graphc_training", default=True)
# the outermost layer call in progress: a layer called twice inside it (shared by two inputs)
# keeps the state updates of both calls, in order; a later outer call starts afresh
_outer_call = contextvars.ContextVar("graphc_outer_call", default=None)
# inside a frozen layer (`trainable = False` on it or on a layer holding it): BatchNorm runs in
# inference mode there, as in Keras, so fit leaves every variable of a frozen layer as it is
_frozen = contextvars.ContextVar("graphc_frozen", default=False)


def frozen() -> bool:
    """Whether the layer being called is frozen, or held by a frozen layer."""
    return _frozen.get()


def whole(v, what: str, least: int = 1) -> int:
    """An int >= least, for sizes and counts (bools, floats and strings are refused): Dense(-1)
    failed in NumPy, Conv2D(2, 0) divided by zero, Dense(2.5) made 2 units, batch_size=0
    divided an epoch by zero."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
        kind = "a positive int" if least == 1 else f"an int >= {least}"
        raise GraphcError(f"{what} must be {kind}, got {v!r}\n  at {user_line()}")
    return int(v)


def hyper(v, what: str, low: float = 0.0, below: float | None = None) -> float:
    """A hyperparameter as a float in [low, below), checked where it is given (PyTorch's
    rule): Adam(-1) trained uphill, Adam('a') and fit(l2='1e-4') failed in `constant`
    naming neither the optimizer nor the argument."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, (bool, str)) or not (f >= low and (below is None or f < below)) \
            or f == float("inf"):
        where = f"[{low}, {below})" if below is not None else f">= {low}"
        raise GraphcError(f"{what} must be a number {where}, got {v!r}\n  at {user_line()}")
    return f


def identity(x: Node) -> Node:
    return x


def gelu_tanh(x: Node) -> Node:
    return gc.gelu(x, approximate="tanh")


def softmax(x: Node) -> Node:
    return gc.softmax(x, axis=-1)


def log_softmax(x: Node) -> Node:
    return gc.log_softmax(x, axis=-1)


# functions of the module, not lambdas: a layer holds its activation, and a model that held a
# lambda could not be pickled ("Can't pickle <function <lambda>>")
ACTIVATIONS: dict[str, Callable[[Node], Node]] = {
    "relu": gc.relu, "sigmoid": gc.sigmoid, "tanh": gc.tanh, "softplus": gc.softplus,
    "gelu": gc.gelu, "gelu_tanh": gelu_tanh, "silu": gc.silu, "swish": gc.silu,
    "leaky_relu": gc.leaky_relu, "elu": gc.elu, "softmax": softmax, "log_softmax": log_softmax,
}


def activation_fn(activation: str | Callable | None) -> Callable[[Node], Node]:
    """The function for an activation name ('relu', 'gelu', ...), a callable, or None."""
    if activation is None or activation == "linear":
        return identity
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        raise GraphcError(f"unknown activation {activation!r}; choose one of "
                          f"{', '.join(ACTIVATIONS)}, None, or pass a function\n"
                          f"  at {user_line()}")
    return ACTIVATIONS[activation]


def no_super(layer) -> GraphcError:
    return GraphcError(f"{type(layer).__name__}.__init__ must call super().__init__() before "
                       f"the layer is used\n  at {user_line()}")


def unheld_error(layer) -> GraphcError:
    """A layer with variables made inside another's forward (`nn.Dense(4)(x)` there): params
    missed its variables, so fit silently never trained them."""
    return GraphcError(f"{type(layer).__name__} {layer.name!r} is made or called inside "
                       f"another layer's forward but no layer holds it (an attribute, or a "
                       f"list or dict in one, not starting with '_'): params would miss its "
                       f"variables and fit would never train them; create it in __init__\n"
                       f"  at {user_line()}")


def takes_training(forward) -> bool:
    """Whether forward takes `training=`: PyTorch's `def forward(self, x)` does not (its
    layers still follow the caller's mode); it failed with a TypeError."""
    params = inspect.signature(forward).parameters.values()
    return any(p.name == "training" and p.kind != p.POSITIONAL_ONLY
               or p.kind == p.VAR_KEYWORD for p in params)


def unique(items) -> list:
    """Items in first-seen order, each once (a shared layer's variables count once)."""
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out


LAYER_ATTRS = frozenset({"auto_named", "name", "seed", "path", "opens_scope", "own_params",
                         "own_kernels", "own_state", "own_state_updates", "state_call",
                         "built", "output_shape", "trainable"})


class Layer:
    """Base class: `layer(*nodes, training=None)` builds nodes; `.params` lists its variables.

    Subclasses define `build(*inputs)` (create variables with `add_variable`, once the
    shapes are known) and `forward(*inputs, training)`. `training=None` takes the mode of the
    enclosing call (True at the top); `layer(x, False)` is `layer(x, training=False)`.
    """
    kind = "layer"

    def __init__(self, name: str | None = None, seed: int | None = None):
        if name is not None and not isinstance(name, str):   # failed at the first call
            raise GraphcError(f"{type(self).__name__}: name must be a str, got {name!r}\n"
                              f"  at {user_line()}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):   # 'a', -1: ValueError at the first call
            raise GraphcError(f"{type(self).__name__}: seed must be an int >= 0 or None, got "
                              f"{seed!r}\n  at {user_line()}")
        self.auto_named = name is None
        self.name = name or self.kind
        self.seed = seed
        self.path: tuple[str, ...] | None = None   # names of the enclosing models + own name
        self.opens_scope = True                    # containers only once inside another
        self.own_params: list[Node] = []
        self.own_kernels: list[Node] = []          # the weights regularization applies to
        self.own_state: list[Node] = []            # non-trained variables (running stats)
        self.own_state_updates: list[tuple[Node, Node]] = []
        self.state_call = None          # the outer call that recorded own_state_updates
        self.built = False
        self.output_shape = None
        self.trainable = True      # Keras's flag: False freezes this layer and those inside

    # calling ---------------------------------------------------------------------------
    def __call__(self, *inputs: Node, training: bool | None = None, **options):
        """The layer's output node(s); `options` (an attention mask, a recurrent layer's
        initial state) go to its forward as they are."""
        if "own_params" not in vars(self):
            raise no_super(self)
        if inputs and isinstance(inputs[-1], bool) and training is None:
            *inputs, training = inputs       # the first API's layer(x, training), kept
        for x in inputs:
            if not isinstance(x, Node):
                raise GraphcError(f"{self.name}: call the layer on graph nodes, got "
                                  f"{type(x).__name__}\n  at {user_line()}")
        if not inputs:
            raise GraphcError(f"{self.name}: call the layer on at least one graph node\n"
                              f"  at {user_line()}")
        if options:
            takes = inspect.signature(self.forward).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in takes.values()):
                for key in options:
                    if key not in takes or key in ("self", "training"):
                        raise GraphcError(f"{self.name}: {type(self).__name__} takes no "
                                          f"argument {key!r}\n  at {user_line()}")
        if training is None:
            training = _training.get()
        unheld = self.path is None and _outer_call.get() is not None
        if self.path is None:
            self.place(())
        token = _training.set(bool(training))
        outer = _outer_call.get()
        outer_token = _outer_call.set(object()) if outer is None else None
        frozen_token = None if self.trainable else _frozen.set(True)
        try:
            with self.scope():
                if not self.built:
                    self.build(*inputs)
                    self.built = True
                if unheld and (self.own_params or self.own_state):
                    raise unheld_error(self)
                self.place_children()         # including layers that build() created
                if training and self.state_call is not _outer_call.get():
                    self.own_state_updates = []
                    self.state_call = _outer_call.get()
                if takes_training(self.forward):
                    options["training"] = bool(training)
                out = self.forward(*inputs, **options)
        finally:
            _training.reset(token)
            if frozen_token is not None:
                _frozen.reset(frozen_token)
            if outer_token is not None:
                _outer_call.reset(outer_token)
        if not (isinstance(out, Node) or isinstance(out, (tuple, list))
                and all(isinstance(o, Node) for o in out)):   # None, 3, a dict: TypeError
            raise GraphcError(f"{type(self).__name__} {self.name!r}: forward must return a "
                              f"graph node or a tuple/list of them, got {type(out).__name__}"
                              f"\n  at {user_line()}")
        self.output_shape = out.shape if isinstance(out, Node) else tuple(o.shape for o in out)
        return out

    def scope(self):
        return gc.name_scope(self.name) if self.opens_scope else contextlib.nullcontext()

    def build(self, *inputs: Node) -> None:
        """Create the variables, now that the inputs' shapes are known."""

    def forward(self, *inputs: Node, training: bool):
        raise GraphcError(f"{type(self).__name__} must define forward(self, x, training)\n"
                          f"  at {user_line()}")

    def __getattr__(self, attr: str):
        """Called only for attributes not found: Layer.__init__'s own, when a subclass's
        __init__ forgot super().__init__() (`model.params` was an AttributeError)."""
        if attr in LAYER_ATTRS and "own_params" not in vars(self):
            raise no_super(self)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {attr!r}")

    # naming ----------------------------------------------------------------------------
    def named_children(self) -> list[tuple[str, Layer]]:
        """The layers this one holds, with the names they get when auto-named."""
        return []

    def children(self) -> list[Layer]:
        return [child for _, child in self.named_children()]

    def place(self, prefix: tuple[str, ...]) -> None:
        """Fix this layer's path (the prefix of its variables' names), then its children's."""
        self.path = prefix + (self.name,)
        self.place_children()

    def place_children(self) -> None:
        """Name, seed and place the children not placed yet (shared ones keep their place)."""
        inner = self.path if self.opens_scope else self.path[:-1]
        names: dict[str, Layer] = {}
        for name, child in self.named_children():
            if child.path is None:
                if child.auto_named:
                    child.name, child.auto_named = name, False
                if child.seed is None:
                    child.seed = self.seed
                child.opens_scope = True
                child.place(inner)
            if names.setdefault(child.name, child) is not child:
                raise GraphcError(f"{type(self).__name__} {self.name!r}: two layers are "
                                  f"named {child.name!r}; name them apart (name=...)")

    @property
    def full_name(self) -> str:
        return "/".join(self.path or (self.name,))

    # variables -------------------------------------------------------------------------
    def add_variable(self, suffix: str, shape, init, fan_in, fan_out, dtype,
                     kernel: bool = False) -> Node:
        """A trained variable named 'path/suffix', drawn from its own seeded generator."""
        name = f"{self.full_name}/{suffix}"
        rng = initializers.generator(self.seed or 0, name)
        try:
            value = initializers.initialize(init, shape, fan_in, fan_out, rng, dtype)
        except MemoryError:          # Dense(10**12): NumPy's error, from inside its generator
            raise GraphcError(f"{type(self).__name__} {self.full_name!r}: the variable {name} "
                              f"of shape {shape} does not fit in memory") from None
        var = gc.variable(value, name=name)
        self.own_params.append(var)
        if kernel:
            self.own_kernels.append(var)
        return var

    def add_state(self, suffix: str, value: np.ndarray) -> Node:
        """A variable that is not trained but updated (running statistics): `.state`."""
        var = gc.variable(value, name=f"{self.full_name}/{suffix}")
        self.own_state.append(var)
        return var

    def update_state(self, var: Node, new: Node) -> None:
        """Record (var, new) for this training call; `fit` applies it with the step. `new`
        is computed from `pending(var)`, so a second call replaces the first's pair."""
        new = new if new.dtype == var.dtype else gc.cast(new, var.dtype)
        self.own_state_updates = [(v, n) for v, n in self.own_state_updates
                                  if v is not var] + [(var, new)]

    def pending(self, var: Node) -> Node:
        """var's value after the state updates of this outer call so far: a layer shared by
        two inputs (a Siamese encoder) updates its running statistics with both, in order,
        as PyTorch does; only the last call's batch counted before."""
        for v, new in reversed(self.own_state_updates):
            if v is var:
                return new
        return var

    def walk(self, trainable: bool = False) -> Iterator[Layer]:
        """This layer and every layer inside it, each once, parents first; `trainable`:
        not those with `trainable = False` nor the layers inside them."""
        seen = set()
        stack = [self]
        while stack:
            layer = stack.pop()
            if id(layer) in seen or trainable and not layer.trainable:
                continue
            seen.add(id(layer))
            yield layer
            stack.extend(reversed(layer.children()))

    @property
    def params(self) -> list[Node]:
        """The trained variables of this layer and the layers inside it; a layer set
        `trainable = False` (Keras's way to freeze it) is left out: the optimizer, fit and
        gd.fit leave it as it is. `layer.trainable = False` was silently ignored."""
        return unique(p for layer in self.walk(trainable=True) for p in layer.own_params)

    @property
    def kernels(self) -> list[Node]:
        return unique(k for layer in self.walk() for k in layer.own_kernels)

    @property
    def state(self) -> list[Node]:
        """Variables updated while training but not by the optimizer (BatchNorm's stats)."""
        return unique(s for layer in self.walk() for s in layer.own_state)

    @property
    def variables(self) -> list[Node]:
        """params (frozen ones too) + state: what `save_params` writes and `load_params`
        restores."""
        return unique(p for layer in self.walk() for p in layer.own_params) + self.state

    @property
    def state_updates(self) -> list[tuple[Node, Node]]:
        """The (variable, new value) pairs of the last training-mode call: add them to a
        hand-written step's `updates` (`fit` does)."""
        return [pair for layer in self.walk() for pair in layer.own_state_updates]

    # showing ---------------------------------------------------------------------------
    def summary(self) -> str:
        """One line per layer: name, output shape, parameter count (after the first call)."""
        rows, total = [], 0
        skip = len(self.path or ()) - (0 if self.opens_scope else 1)
        for layer in self.walk():
            if layer.children() and not layer.own_params:
                continue                      # a container: its layers have the rows
            count = sum(int(np.prod(p.shape)) for p in layer.own_params)
            total += count
            shape = show_shape(layer.output_shape)
            name = "/".join((layer.path or (layer.name,))[skip:]) or layer.name
            rows.append((name, shape, count))
        width = max([14] + [len(r[0]) + 2 for r in rows])
        lines = [f"{'layer':<{width}}{'output shape':<22}{'params':>8}"]
        lines += [f"{n:<{width}}{s:<22}{c:>8}" for n, s, c in rows]
        lines.append(f"{'total':<{width + 22}}{total:>8}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {vars(self).get('name', '?')!r}>"   # even before init


def show_shape(shape) -> str:
    """'(?, 8)'; several outputs (an RNN's sequence and state) one after the other; '?' before
    the first call."""
    if not shape:
        return "?"
    if isinstance(shape[0], tuple):
        return " ".join(format_shape(s) for s in shape)
    return format_shape(shape)


class Model(Layer):
    """A layer made of layers: create them in `__init__` (attributes, lists, dicts) and
    connect them in `forward(*inputs, training)`; params, fit, save_params... then work.

        class Residual(nn.Model):
            def __init__(self, units):
                super().__init__()
                self.dense, self.norm = nn.Dense(units, "gelu"), nn.LayerNorm()
            def forward(self, x, training):
                return x + self.dense(self.norm(x))
    """
    kind = "model"

    def __init__(self, name: str | None = None, seed: int | None = None):
        super().__init__(name, seed)
        self.opens_scope = False

    def named_children(self) -> list[tuple[str, Layer]]:
        """Layers held in attributes (in assignment order), lists/tuples and dicts of them."""
        found: list[tuple[str, Layer]] = []
        for attr, value in vars(self).items():
            if not attr.startswith("_"):
                held_layers(attr, value, found, set())
        return unique_children(found)


def held_layers(name: str, value, found: list, seen: set) -> None:
    """The layers in an attribute's value, at any depth of lists, tuples and dicts
    (`blocks_0_1`): layers in a list of lists were silently left out of params and fit."""
    if isinstance(value, Layer):
        found.append((name, value))
    elif isinstance(value, (list, tuple, dict)) and id(value) not in seen:
        seen.add(id(value))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            held_layers(f"{name}_{key}", item, found, seen)


def unique_children(found):
    seen, out = set(), []
    for name, layer in found:
        if id(layer) not in seen:
            seen.add(id(layer))
            out.append((name, layer))
    return out


class Sequential(Model):
    """Layers applied in order. Unnamed layers are named by kind and position ('dense_2').
    Layers without a seed of their own take the model's (or its parent's, else 0)."""
    kind = "sequential"

    def __init__(self, layers: Sequence[Layer], name: str | None = None,
                 seed: int | None = None):
        super().__init__(name, seed)
        if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
            raise GraphcError(f"Sequential takes a list of layers, got {layers!r}\n"
                              f"  at {user_line()}")     # Sequential(Dense(3)): TypeError
        self.layers = list(layers)
        names = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise GraphcError(f"Sequential: item {i} is not a layer: {layer!r}\n"
                                  f"  at {user_line()}")
            if any(layer is earlier for earlier in self.layers[:i]):
                continue          # applied again, sharing its weights (PyTorch allows it)
            if layer.auto_named:
                layer.name = f"{layer.kind}_{i}"
            if layer.name in names:
                raise GraphcError(f"Sequential: two layers are named {layer.name!r}")
            names.add(layer.name)

    def named_children(self) -> list[tuple[str, Layer]]:
        return unique_children((layer.name, layer) for layer in self.layers)

    def forward(self, x: Node, training: bool) -> Node:
        for layer in self.layers:      # each layer opens its own scope
            x = layer(x)
        return x
