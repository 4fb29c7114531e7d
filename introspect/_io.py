"""Crash-safe file writes shared by the package: a temporary file in the same directory,
fsynced, then renamed over the target (a reader sees the old file or the new one, never half)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file in the same directory."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> None:
    """``obj`` as JSON (no NaN or infinity), written with :func:`write_atomic`."""
    write_atomic(path, (json.dumps(obj, indent=indent, allow_nan=False) + "\n").encode("utf-8"))


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex (read in 4 MiB blocks)."""
    digest = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()
