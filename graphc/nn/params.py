"""Save and load parameter values as .npz, keyed by variable name, written atomically."""
from __future__ import annotations

import os
import tempfile
import zipfile

import numpy as np

from graphc.ir import GraphcError, Node


def variables_of(params) -> list[Node]:
    """A model/layer/optimizer's variables, or a list of variables, checked and unique."""
    if hasattr(params, "params"):
        params = params.params
    elif hasattr(params, "variables"):
        params = params.variables
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
    """Write every variable's value to `path` (.npz); the file is complete or untouched."""
    params = variables_of(params)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{p.name: p.value for p in params})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_params(params, path: str | os.PathLike) -> None:
    """Assign the values saved in `path` to the variables of the same names."""
    params = variables_of(params)
    if not params:
        raise GraphcError("load_params: the model has no variables yet; layers create them "
                          "on their first call, so call the model on an input (model(x)) first")
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            saved = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise GraphcError(f"cannot read parameters from {os.fspath(path)!r}: {e}") from None
    missing = [p.name for p in params if p.name not in saved]
    if missing:
        raise GraphcError(f"{os.fspath(path)!r} has no values for {', '.join(missing)} "
                          f"(it holds {', '.join(sorted(saved)) or 'nothing'})")
    for p in params:
        if saved[p.name].shape != p.shape:
            raise GraphcError(f"{os.fspath(path)!r}: {p.name!r} has shape "
                              f"{saved[p.name].shape}, the variable {p.shape}")
    for p in params:
        p.value = saved[p.name]
