"""Arrays in `.npz` files, written by key (any string) and read only as far as the caller expects.

Reading trusts nothing in the archive: a member's declared size is checked against the shape
the caller expects before it is opened, its `.npy` header (shape, dtype, order) before any data
is read, and then exactly that many bytes are read; members nobody asked for are never
decompressed. Pickled objects are never read.
"""
from __future__ import annotations

import math
import struct
import zipfile
import zlib
from typing import BinaryIO, Callable

import numpy as np

from graphc.ir import GraphcError

HEADER_ROOM = 1 << 16     # bytes a .npy member may hold beyond its data (its header)
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, ValueError,
              NotImplementedError, RuntimeError, KeyError, struct.error, OverflowError,
              UnicodeDecodeError)


def write_npz(f: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz of `arrays` (as np.savez writes, keys passed as data, not names)."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, value in arrays.items():
            with z.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)


def open_npz(f: BinaryIO, path: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(f)
    except ZIP_ERRORS as e:
        raise GraphcError(f"{path} is not a valid arrays file: {str(e)[:200]}") from None


def read_member(z: zipfile.ZipFile, key: str, shape: tuple[int, ...],
                accept: Callable[[np.dtype], bool], what: str, stored_only: bool,
                itemsize: int = 8) -> np.ndarray:
    """The array under `key`, which must have `shape` and a dtype `accept` takes.

    `itemsize` bounds the member's size before it is opened; `stored_only` refuses compressed
    members (whose size on disk says nothing of what they inflate to).
    """
    try:
        info = z.getinfo(key + ".npy")
    except KeyError:
        raise GraphcError(f"{what}: no array {key!r} in the arrays file") from None
    limit = math.prod(shape) * itemsize + HEADER_ROOM
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or (
            stored_only and info.compress_type != zipfile.ZIP_STORED):
        raise GraphcError(f"{what}: array {key!r} is stored with compression method "
                          f"{info.compress_type}, which is not accepted here")
    if info.file_size > limit:
        raise GraphcError(f"{what}: array {key!r} ({info.file_size} bytes) is larger than "
                          f"its declared shape {list(shape)} allows")
    try:
        with z.open(info) as member:
            return read_npy(member, key, shape, accept, what)
    except GraphcError:
        raise
    except ZIP_ERRORS as e:
        raise GraphcError(f"{what}: array {key!r} cannot be read: {type(e).__name__}: "
                          f"{str(e)[:200]}") from None


def read_npy(member: BinaryIO, key: str, shape: tuple[int, ...],
             accept: Callable[[np.dtype], bool], what: str) -> np.ndarray:
    fmt = np.lib.format
    version = fmt.read_magic(member)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise ValueError(f"unknown .npy version {version}")
    read_header = fmt.read_array_header_1_0 if version == (1, 0) \
        else fmt.read_array_header_2_0
    have, fortran, dtype = read_header(member, max_header_size=HEADER_ROOM)
    if dtype.hasobject:
        raise GraphcError(f"{what}: array {key!r} holds Python objects (pickled objects are "
                          "refused)")
    if have != tuple(shape):
        raise GraphcError(f"{what}: array {key!r} has shape {list(have)}, expected "
                          f"{list(shape)}")
    if dtype.names or dtype.subdtype or not accept(dtype):
        raise GraphcError(f"{what}: array {key!r} has dtype {dtype}, which does not fit")
    size = math.prod(shape) * dtype.itemsize
    data = member.read(size)
    if len(data) != size or member.read(1):   # reading to the end checks the CRC
        raise GraphcError(f"{what}: array {key!r} has {len(data)} bytes of data, its header "
                          f"declares {size}")
    array = np.frombuffer(data, dtype)
    return array.reshape(shape, order="F" if fortran else "C")
