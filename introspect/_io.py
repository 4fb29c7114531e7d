"""Crash-safe file writes shared by the package: a temporary file in the same directory,
fsynced, then renamed over the target (a reader sees the old file or the new one, never half)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(path: str | os.PathLike) -> None:
    """Flushes a directory's entries (a rename into it) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


@contextmanager
def open_atomic(path: str | os.PathLike, *, sync_dir: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to stream into, renamed over ``path`` when the block ends without an error.

    The data goes to a temporary file in the same directory, which is fsynced before the rename
    and removed if anything fails. With ``sync_dir`` the directory is fsynced after the rename
    too, so that the new name itself survives a power loss.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if sync_dir:
        fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes, *, sync_dir: bool = False) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory (see
    :func:`open_atomic` for ``sync_dir``)."""
    with open_atomic(path, sync_dir=sync_dir) as f:
        f.write(data)


def write_json_atomic(
    path: str | os.PathLike, obj: Any, *, indent: int | None = None, sync_dir: bool = False
) -> None:
    """``obj`` as JSON (no NaN or infinity), written with :func:`write_atomic`."""
    text = json.dumps(obj, indent=indent, allow_nan=False) + "\n"
    write_atomic(path, text.encode("utf-8"), sync_dir=sync_dir)


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
