"""Save and load parameter values as .npz, keyed by variable name, written atomically.

Names are data, never keyword arguments (a variable may be called `file` or `allow_pickle`).
Loading reads only the members of the variables asked for, checks every one of them (size
before inflating, then shape and dtype) and assigns only when all of them are good. Both hold
the variables' storage locks, as compiled calls do: a call in another thread (a training step)
runs before or after a save or a load, never in between.
"""
from __future__ import annotations

import contextlib
import os
import sys

import numpy as np

from graphc.io_arrays import open_npz, read_member, write_npz
from graphc.io_files import open_regular, write_atomic
from graphc.ir import GraphcError, Node, storage_locks
from graphc.runtime import atomic


def variables_of(params) -> list[Node]:
    """A model/layer/optimizer's variables (a model's state too, e.g. BatchNorm's running
    statistics), or a list of variables, checked and unique."""
    if hasattr(params, "variables"):
        params = params.variables
    elif hasattr(params, "params"):
        params = params.params
    params = list(params)
    names = []
    for p in params:
        if not isinstance(p, Node) or p.op != "variable":
            raise GraphcError(f"save/load params: expected variables, got {p!r}")
        if not p.name:
            raise GraphcError(f"save/load params: variable {p!r} has no name")
        if p.name in names:
            raise GraphcError(f"save/load params: two variables are named {p.name!r}")
        names.append(p.name)
    return params


def save_params(params, path: str | os.PathLike) -> None:
    """Write every variable's value to `path` (.npz, mode 0644); complete or untouched."""
    params = variables_of(params)
    with holding(params):       # copies of one moment: another thread's call writes them
        arrays = {p.name: np.array(p.value) for p in params}
    write_atomic(os.fspath(path), lambda f: write_npz(f, arrays), "save_params")


def load_params(params, path: str | os.PathLike) -> None:
    """Assign the values saved in `path` to the variables of the same names (all or none)."""
    built = getattr(params, "built", False)   # a called model, a built optimizer: they
    params = variables_of(params)              # may have no variables (plain SGD has none)
    if not params and not built:
        raise GraphcError("load_params: the model has no variables yet; layers create them "
                          "on their first call, so call the model on an input (model(x)) first "
                          "(an optimizer: optimizer.build(model.params))")
    path = os.fspath(path)
    try:
        with open_regular(path, "parameter file", sys.maxsize) as f, open_npz(f, path) as z:
            saved = sorted(n[:-4] for n in z.namelist() if n.endswith(".npy"))
            missing = [p.name for p in params if p.name not in saved]
            if missing:
                raise GraphcError(f"{path!r} has no values for {', '.join(missing)} "
                                  f"(it holds {', '.join(saved) or 'nothing'})")
            values = [read_member(z, p.name, p.shape, assignable(p), f"{path!r}",
                                  stored_only=False) for p in params]
    except GraphcError as e:
        raise GraphcError(f"cannot read parameters: {e}") from None
    with holding(params):        # every value checked: assigning cannot fail
        for p, value in zip(params, values):
            p.value = value


@contextlib.contextmanager
def holding(params: list[Node]):
    """The storage locks of `params` (in the global order calls take them) and, in the main
    thread, Ctrl-C deferred until they are given back: all old values or all new."""
    locks = storage_locks(params)
    atomic.install()
    atomic.acquire(locks)
    try:
        yield
    finally:
        atomic.give_back(locks)


def assignable(p: Node):
    """Whether an array of a dtype may be assigned to p (the rule of Node.value)."""
    return lambda d: d.kind in "biuf" and (np.can_cast(d, p.dtype, "safe")
                                           or d.kind == p.dtype.kind)
