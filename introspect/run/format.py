"""The run-directory format: file names, constants, manifest helpers and the safetensors encoding
of shards (the layout is described in :mod:`introspect.run`)."""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import itertools
import json
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from introspect._io import open_atomic, write_atomic, write_json_atomic
from introspect.errors import EXIT_WRITE, IntrospectError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIDES = ("x", "mod")

# numpy dtype name -> (safetensors dtype code, little-endian numpy dtype)
_HIDDEN_DTYPES = {
    "float16": ("F16", np.dtype("<f2")),
    "float32": ("F32", np.dtype("<f4")),
    "float64": ("F64", np.dtype("<f8")),
}
_ST_DTYPES = {code: dt for code, dt in _HIDDEN_DTYPES.values()}
_F64 = np.dtype("<f8")

# Settings that must be identical for a resumed writer, and across the ranks of one run.
_IDENTITY_FIELDS = (
    "model",
    "config",
    "input_hash",
    "layers",
    "positions",
    "sides",
    "hidden_size",
    "hidden_dtype",
    "shard_rows",
    "world_size",
)


class RunError(IntrospectError, RuntimeError):
    """A run directory that is missing, corrupt or incompatible (messages name the file)."""


class RunWriteError(IntrospectError, OSError):
    """A file of the run could not be written (a full disk, a file-size limit, permissions); the
    run so far is kept and continues with ``resume=True`` (``--resume``) once that is fixed."""

    exit_code = EXIT_WRITE

    def __str__(self) -> str:
        return self.strerror or super().__str__()


_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turns an ``OSError`` while writing ``path`` into one :class:`RunWriteError` naming it."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, RunWriteError):
            raise
        why = exc.strerror or str(exc)
        if exc.errno in _FULL:
            why += " (the disk is full or a file-size limit was reached)"
        raise RunWriteError(
            exc.errno,
            f"cannot write {path}: {why}; the rows written so far are kept: make room and run "
            "again with --resume (resume=True)",
        ) from exc


# --------------------------------------------------------------------------------------- names


def hidden_name(layer: int, position: str, side: str) -> str:
    """The tensor name of one captured state inside a shard, e.g. ``h.L12.last.x``."""
    return f"h.L{int(layer)}.{position}.{side}"


def _shard_name(rank: int, index: int) -> str:
    """The tensor file of shard ``index`` of ``rank``."""
    return f"shard-r{rank}-{index:05d}.safetensors"


def _ids_name(rank: int, index: int) -> str:
    """The pair-id file of shard ``index`` of ``rank``."""
    return f"ids-r{rank}-{index:05d}.json"


def _part_name(rank: int) -> str:
    """The manifest part of one rank of a multi-rank run."""
    return f"manifest.r{rank}.json"


def _own_manifest_name(rank: int, world_size: int) -> str:
    """The manifest a rank's writer keeps: the run's own one, or its part with several ranks."""
    return MANIFEST if world_size == 1 else _part_name(rank)


_PART = re.compile(r"manifest\.r(\d+)\.json")

_OWNED = re.compile(
    r"^\.?(?:shard-r(?P<r1>\d+)-\d{5,}\.safetensors|ids-r(?P<r2>\d+)-\d{5,}\.json"
    r"|manifest\.r(?P<r3>\d+)\.json|(?P<merged>manifest\.json))(?P<tmp>\..*\.tmp)?$"
)


def _owner(name: str) -> int | str | None:
    """Which writer a file in a run directory belongs to: a rank, ``"merged"``, or None (foreign).

    Temporary files (``.NAME.XXXX.tmp``) belong to the writer of ``NAME``.
    """
    m = _OWNED.match(name)
    if m is None or (name.startswith(".") != bool(m.group("tmp"))):
        return None
    if m.group("merged"):
        return "merged"
    return int(m.group("r1") or m.group("r2") or m.group("r3"))


def _now() -> str:
    """The current UTC time as stored in manifests (ISO 8601, to the second)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    """The introspect version recorded in manifests."""
    try:
        from introspect import __version__

        return __version__
    except ImportError:  # pragma: no cover - only when loaded outside the package
        return "unknown"


# ------------------------------------------------------------------------------------- files


def _write_bytes(path: Path, data: bytes) -> dict:
    """Writes ``data`` crash-safely (directory fsynced too); ``{"sha256", "bytes"}`` of it."""
    with _writing(path):
        write_atomic(path, data, sync_dir=True)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _write_json(path: Path, obj: Any) -> None:
    """Writes a manifest crash-safely, in the layout every run file uses (indent 1)."""
    with _writing(path):
        write_json_atomic(path, obj, indent=1, sync_dir=True)


def _read_json(path: Path) -> Any:
    """A JSON file of the run; :class:`RunError` naming it when it is missing or not JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: not valid JSON ({e})") from None


# ---------------------------------------------------------------------------------- safetensors


def _write_safetensors(
    path: Path,
    tensors: Sequence[tuple[str, str, tuple[int, ...], Sequence[np.ndarray]]],
    metadata: Mapping[str, str],
) -> dict:
    """Streams ``(name, dtype code, shape, chunks)`` tensors into a safetensors file, atomically.

    The chunks of a tensor, concatenated along the first axis, are its data. Tensors are laid out
    in the order given, without gaps; the header is padded with spaces to a multiple of 8 bytes so
    that the data of every tensor is aligned to its element size (as long as larger element sizes
    come first). Returns ``{"sha256", "bytes"}`` of the file.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, code, shape, chunks in tensors:
        nbytes = sum(c.nbytes for c in chunks)
        expect = int(np.prod(shape, dtype=np.int64)) * _ST_DTYPES[code].itemsize
        if nbytes != expect:  # pragma: no cover - internal consistency
            raise AssertionError(f"{name}: {nbytes} bytes for shape {shape}")
        header[name] = {
            "dtype": code,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-(8 + len(blob)) % 8)
    pieces = itertools.chain(
        (struct.pack("<Q", len(blob)), blob),
        (
            np.ascontiguousarray(c).reshape(-1).view(np.uint8)
            for *_, chunks in tensors
            for c in chunks
        ),
    )
    digest, size = hashlib.sha256(), 0
    with _writing(path), open_atomic(path, sync_dir=True) as f:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            f.write(view)
            digest.update(view)
            size += view.nbytes
    return {"sha256": digest.hexdigest(), "bytes": size}


def _read_header(path: Path) -> tuple[int, dict]:
    """``(offset of the data section, header)`` of a safetensors file."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise RunError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if n > size - 8 or n > 100_000_000:
                raise RunError(f"{path}: corrupt safetensors header (length {n})")
            header = json.loads(f.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise RunError(f"{path}: corrupt safetensors header")
    return 8 + n, header


# ----------------------------------------------------------------------------- manifest fields


def _normalise_json(value: Any, what: str) -> Any:
    """``value`` as it reads back from JSON; ValueError naming ``what`` if it cannot be stored."""
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def _describe_mismatch(field: str, old: Any, new: Any) -> list[str]:
    """One line per differing leaf of two values of a manifest field."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if key not in old:
                out.append(f"{field}.{key}: not in the run, now {new[key]!r}")
            elif key not in new:
                out.append(f"{field}.{key}: run has {old[key]!r}, now missing")
            elif old[key] != new[key]:
                out.extend(_describe_mismatch(f"{field}.{key}", old[key], new[key]))
        return out
    return [f"{field}: run has {old!r}, now {new!r}"]


def _mismatches(old: Mapping, new: Mapping) -> list[str]:
    """How two manifests differ in the settings that identify a run (empty: the same run)."""
    out: list[str] = []
    for field in _IDENTITY_FIELDS:
        if old.get(field) != new.get(field):
            out.extend(_describe_mismatch(field, old.get(field), new.get(field)))
    return out


def _problem_list(problems: Sequence[str]) -> str:
    """Problems as the indented bullet list that ends a :class:`RunError` message."""
    return "\n  - " + "\n  - ".join(problems)


def _dtype_name(dtype: Any) -> str:
    """The numpy name of a dtype given as a string, numpy dtype or torch dtype."""
    name = str(dtype).removeprefix("torch.")
    if name in _HIDDEN_DTYPES:
        return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return name


def _skip_record(item: Any) -> dict:
    """The manifest record of a pair that was not turned into a row."""
    if hasattr(item, "to_json"):
        item = item.to_json()
    if not isinstance(item, Mapping):
        raise ValueError(f"a skipped row must be a dict with id, line and reason, not {item!r}")
    rec = {"id": item.get("id"), "line": item.get("line"), "reason": item.get("reason")}
    if item.get("source") is not None:
        rec["source"] = item["source"]
    return _normalise_json(rec, "a skipped row")


def _skip_key(rec: Mapping) -> tuple:
    """What makes two skipped records the same pair."""
    return (rec.get("source"), rec.get("line"), rec.get("id"))


def _add_skipped(out: list[dict], seen: set[tuple], records: Iterable[Mapping]) -> None:
    """Appends to ``out`` each record whose pair is not in ``seen`` yet (and marks it seen)."""
    for rec in records:
        key = _skip_key(rec)
        if key not in seen:
            seen.add(key)
            out.append(rec)


def _rank_rows(shards: Sequence[Mapping]) -> int:
    """Rows of a rank's stream covered by its (contiguous, ordered) shard entries."""
    return shards[-1]["rows"][1] if shards else 0


def _load_parts(path: Path) -> dict[int, dict]:
    """The manifest parts of a multi-rank run directory, by rank."""
    parts: dict[int, dict] = {}
    for name in os.listdir(path):
        m = _PART.fullmatch(name)
        if m:
            part = _read_json(path / name)
            if not isinstance(part, dict) or "shards" not in part:
                raise RunError(f"{path / name}: not a run manifest")
            parts[int(m.group(1))] = part
    return parts
