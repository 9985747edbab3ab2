"""Files for save/load: atomic writes through recognisable temp files, reading only regular files.

A killed writer leaves at most `NAME.graphc-tmp-XXXXXXXX` files beside its target; the next save
of the same target removes them (saves of one folder hold an advisory lock on it, so a running
save's temp files are never taken for leftovers). Readers open with O_NONBLOCK and look at what
they opened before reading, so a FIFO, a device or a link to one is refused at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from typing import BinaryIO, Callable

from graphc.ir import GraphcError

TEMP_MARK = ".graphc-tmp-"
CHUNK = 1 << 20


def temp_pattern(name: str) -> re.Pattern:
    """What the temp files of target file `name` look like."""
    return re.compile(re.escape(name + TEMP_MARK) + r"[0-9a-f]{8}\Z")


@contextlib.contextmanager
def folder_lock(folder: str):
    """Hold an advisory lock on `folder` (POSIX); saves into one folder run one at a time."""
    try:
        import fcntl
        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):     # no fcntl (Windows) or an unreadable folder: no lock
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                   # closing releases the lock


def fsync_folder(folder: str) -> None:
    """Make renames in `folder` durable (best effort: not every system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_leftovers(folder: str, names: list[str], extra: re.Pattern | None = None) -> None:
    """Delete temp files of the targets `names` (and files matching `extra`) in `folder`."""
    patterns = [temp_pattern(n) for n in names] + ([extra] if extra else [])
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if any(p.match(entry) for p in patterns):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))


def write_temp(path: str, write: Callable[[BinaryIO], None], what: str) -> tuple[str, str]:
    """Write a new temp file beside `path` (mode 0644, synced); (temp path, its sha256)."""
    folder, name = os.path.split(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(folder, name + TEMP_MARK + os.urandom(4).hex())
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise GraphcError(f"{what}: cannot write {path}: {e.strerror or e}") from None
    else:
        raise GraphcError(f"{what}: cannot create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            digest = sha256_of(f)
        os.chmod(tmp, 0o644)
        return tmp, digest
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise GraphcError(f"{what}: cannot write {path}: {e.strerror or e}") from None
        raise


def replace(src: str, dst: str, what: str) -> None:
    try:
        os.replace(src, dst)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(src)
        raise GraphcError(f"{what}: cannot write {dst}: {e.strerror or e}") from None


def write_atomic(path: str, write: Callable[[BinaryIO], None], what: str = "save") -> str:
    """Write `path` whole or not at all (temp file, fsync, rename); returns its sha256."""
    folder, name = os.path.split(os.path.abspath(path))
    with folder_lock(folder):
        remove_leftovers(folder, [name])
        tmp, digest = write_temp(path, write, what)
        replace(tmp, path, what)
        fsync_folder(folder)
    return digest


def open_regular(path: str, what: str, limit: int) -> BinaryIO:
    """Open `path` for reading if it is a regular file of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
                     | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise GraphcError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise GraphcError(f"{what} {path} is not a regular file")
        if info.st_size > limit:
            raise GraphcError(f"{what} {path} has {info.st_size} bytes, more than the limit "
                              f"of {limit} (raise it with max_bytes=)")
        with contextlib.suppress(AttributeError, OSError):   # back to blocking reads
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_of(f: BinaryIO) -> str:
    """The sha256 of an open file's content (read from the start; leaves it at the start)."""
    f.seek(0)
    digest = hashlib.sha256()
    while chunk := f.read(CHUNK):
        digest.update(chunk)
    f.seek(0)
    return digest.hexdigest()


def read_all(f: BinaryIO, path: str, what: str, limit: int) -> bytes:
    """The rest of an open file, refusing more than `limit` bytes (it may grow while read)."""
    chunks, total = [], 0
    while chunk := f.read(min(CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise GraphcError(f"{what} {path} has more than the limit of {limit} bytes "
                              "(raise it with max_bytes=)")
    return b"".join(chunks)
