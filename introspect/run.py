"""Run directories: the on-disk result of an extraction, written crash-safely and read back lazily.

A run directory holds, for every pair in pair-file order, f(x), f(x') and the hidden states
captured at chosen layers and positions for x and x'.

>>> w = RunWriter("run", model_id="smollm2-135m", weights_hash="ab12...",
...               config={"behaviour": "logodds"}, input_hash="cd34...", layers=[6, 12],
...               positions=["last"], hidden_size=576)
>>> w.add(ids, f_x, f_mod, hidden={(6, "last", "x"): hx6, (6, "last", "mod"): hm6, ...})
>>> w.close()
>>> run = open_run("run")
>>> run.ids[:2], run.delta[:2], run.hidden(6, "x").shape      # [N, D], memory-mapped

Layout (``K`` ranks; a single-process run is rank 0 of 1)::

    manifest.json                      the run: identity, settings, shard list, completion state
    manifest.r{rank}.json              one part per rank (multi-rank runs only; see merge_ranks)
    shard-r{rank}-{index:05d}.safetensors   f_x, f_mod (float64, [rows]) and one tensor per
                                       captured state, h.L{layer}.{position}.{side} ([rows, D])
    ids-r{rank}-{index:05d}.json       the pair ids of the shard's rows, a JSON list of strings

Shard ``index`` of a rank holds that rank's local rows ``[index * shard_rows, ...)``: shards are cut
every ``shard_rows`` rows counted from the start of the rank's stream, only the last one is short,
so a resumed writer cuts exactly where an uninterrupted one would and produces identical files.

Crash safety: every file is written to a temporary file in the same directory, fsynced and renamed
into place; the shard's files come first and the manifest (listing the shard with its row range,
byte sizes and sha256 of each file) is rewritten last, the same way. A crash at any moment leaves
either the old manifest (the new shard is not counted; its files are strays that a resumed writer
removes) or the new one. ``RunWriter(..., resume=True)`` re-checks every listed shard's sha256,
drops a damaged shard and all later ones of that rank, and reports in :attr:`RunWriter.rows_done`
how many rows of its stream the caller should skip.

Multi-rank runs: rank ``r`` of ``K`` is given the rows whose global index ``g`` has
``g % K == r``, in order, and writes only its own files and its manifest part
``manifest.r{r}.json``. Global row ``g`` is local row ``g // K`` of rank ``g % K``;
:func:`merge_ranks` (called once after every rank has closed, or by :func:`open_run` when all parts
are complete) writes ``manifest.json`` listing every shard. The strided assignment applies to the
rows that are actually added: pairs that are skipped must be removed before the rows are dealt
out, so that every rank holds ``len(range(r, N, K))`` rows.

Shards are standard safetensors files (readable by ``safetensors.safe_open``); this module writes
and reads the format directly so that a shard is streamed to disk without a second in-memory copy
and tensors can be memory-mapped with ``numpy.memmap``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from introspect.errors import IntrospectError

__all__ = [
    "FORMAT_VERSION",
    "SIDES",
    "Run",
    "RunError",
    "RunWriter",
    "hidden_name",
    "merge_ranks",
    "open_run",
]

logger = logging.getLogger(__name__)

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

_HASH_CHUNK = 1 << 20


class RunError(IntrospectError, RuntimeError):
    """A run directory that is missing, corrupt or incompatible (messages name the file)."""


# --------------------------------------------------------------------------------------- names


def hidden_name(layer: int, position: str, side: str) -> str:
    """The tensor name of one captured state inside a shard, e.g. ``h.L12.last.x``."""
    return f"h.L{int(layer)}.{position}.{side}"


def _shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank}-{index:05d}.safetensors"


def _ids_name(rank: int, index: int) -> str:
    return f"ids-r{rank}-{index:05d}.json"


def _part_name(rank: int) -> str:
    return f"manifest.r{rank}.json"


def _own_manifest_name(rank: int, world_size: int) -> str:
    return MANIFEST if world_size == 1 else _part_name(rank)


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
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    try:
        from introspect import __version__

        return __version__
    except ImportError:  # pragma: no cover - only when loaded outside the package
        return "unknown"


# --------------------------------------------------------------------------------- atomic files


def _fsync_dir(path: Path) -> None:
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


class _AtomicWriter:
    """A file written under a temporary name in its final directory, hashed as it is written,
    fsynced and renamed into place on success (removed on failure)."""

    def __init__(self, path: Path):
        self.path = path
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.file.write(view)
        self.hash.update(view)
        self.size += view.nbytes

    def __enter__(self) -> _AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            try:
                if exc_type is None:
                    self.file.flush()
                    os.fsync(self.file.fileno())
            finally:
                self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def record(self) -> dict:
        return {"sha256": self.hash.hexdigest(), "bytes": self.size}


def _write_atomic(path: Path, data: bytes) -> dict:
    with _AtomicWriter(path) as f:
        f.write(data)
    _fsync_dir(path.parent)
    return f.record()


def _write_json(path: Path, obj: Any) -> dict:
    text = json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n"
    return _write_atomic(path, text.encode("utf-8"))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
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
    with _AtomicWriter(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, _, _, chunks in tensors:
            for c in chunks:
                f.write(np.ascontiguousarray(c).reshape(-1).view(np.uint8))
    _fsync_dir(path.parent)
    return f.record()


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


# ------------------------------------------------------------------------------------- helpers


def _normalise_json(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be JSON-serialisable: {e}") from None


def _describe_mismatch(field: str, old: Any, new: Any) -> list[str]:
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
    out: list[str] = []
    for field in _IDENTITY_FIELDS:
        if old.get(field) != new.get(field):
            out.extend(_describe_mismatch(field, old.get(field), new.get(field)))
    return out


def _dtype_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.")
    if name in _HIDDEN_DTYPES:
        return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return name


def _skip_record(item: Any) -> dict:
    if hasattr(item, "to_json"):
        item = item.to_json()
    if not isinstance(item, Mapping):
        raise ValueError(f"a skipped row must be a dict with id, line and reason, not {item!r}")
    rec = {"id": item.get("id"), "line": item.get("line"), "reason": item.get("reason")}
    if item.get("source") is not None:
        rec["source"] = item["source"]
    return _normalise_json(rec, "a skipped row")


def _skip_key(rec: Mapping) -> tuple:
    return (rec.get("source"), rec.get("line"), rec.get("id"))


def _rank_rows(shards: Sequence[Mapping]) -> int:
    return shards[-1]["rows"][1] if shards else 0


# ----------------------------------------------------------------------------------- the writer


class RunWriter:
    """Writes one rank's rows of a run directory in shards of ``shard_rows`` rows.

    ``add`` buffers rows (at most one shard's worth; each batch is copied) and writes a shard
    every ``shard_rows`` rows; ``close`` writes the last, short shard and marks the run (or, with
    several ranks, this rank's part) complete. Rows that were added but not yet written when the
    process dies are lost; :attr:`rows_done` says how many rows are on disk.

    ``config`` is the extraction's settings (any JSON-serialisable dict); together with the model,
    the input hash, layers, positions, sides, hidden size and dtype, shard size and world size it
    must match exactly for ``resume=True`` to continue a run. Without ``resume`` the directory must
    not already hold this rank's files. Used as a context manager, an exception leaves the run
    unfinished (resumable) instead of closing it.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        model_id: str,
        weights_hash: str,
        config: Mapping[str, Any],
        input_hash: str,
        layers: Sequence[int],
        positions: Sequence[str],
        hidden_size: int,
        hidden_dtype: str = "float32",
        shard_rows: int = 4096,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
        sides: Sequence[str] = SIDES,
    ):
        self.path = Path(path)
        layers = [int(x) for x in layers]
        positions = [str(p) for p in positions]
        sides = [str(s) for s in sides]
        hidden_dtype = _dtype_name(hidden_dtype)
        if hidden_dtype not in _HIDDEN_DTYPES:
            raise ValueError(
                f"hidden_dtype must be one of {sorted(_HIDDEN_DTYPES)}, not {hidden_dtype!r}"
            )
        if len(set(layers)) != len(layers):
            raise ValueError(f"layers has duplicates: {layers}")
        if len(set(positions)) != len(positions) or not all(positions):
            raise ValueError(f"positions must be distinct non-empty names: {positions}")
        if not sides or len(set(sides)) != len(sides) or not set(sides) <= set(SIDES):
            raise ValueError(f"sides must be distinct values from {list(SIDES)}: {sides}")
        if int(hidden_size) < 1 and layers and positions:
            raise ValueError(f"hidden_size must be >= 1, not {hidden_size}")
        if int(shard_rows) < 1:
            raise ValueError(f"shard_rows must be >= 1, not {shard_rows}")
        if not (int(world_size) >= 1 and 0 <= int(rank) < int(world_size)):
            raise ValueError(
                f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}"
            )

        self.rank, self.world_size = int(rank), int(world_size)
        self.shard_rows = int(shard_rows)
        self.hidden_size = int(hidden_size)
        self.hidden_dtype = hidden_dtype
        self._st_code, self._np_dtype = _HIDDEN_DTYPES[hidden_dtype]
        self._keys = [(layer, pos, side) for layer in layers for pos in positions for side in sides]
        self._identity = {
            "model": {"id": str(model_id), "weights_hash": str(weights_hash)},
            "config": _normalise_json(dict(config), "config"),
            "input_hash": str(input_hash),
            "layers": layers,
            "positions": positions,
            "sides": sides,
            "hidden_size": self.hidden_size,
            "hidden_dtype": hidden_dtype,
            "shard_rows": self.shard_rows,
            "world_size": self.world_size,
        }
        self._manifest_path = self.path / _own_manifest_name(self.rank, self.world_size)
        self._shards: list[dict] = []
        self._skipped: list[dict] = []
        self._skipped_keys: set[tuple] = set()
        self._complete = False
        self._closed = False
        self._created = _now()
        self._completed_at: str | None = None
        self._info: dict[str, Any] = {}
        self._reset_pending()

        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        if resume:
            changed = self._resume()
        else:
            self._check_fresh()
            changed = True
        if changed:
            self._write_manifest()

    # -- state

    @property
    def rows_done(self) -> int:
        """Rows of this rank's stream that are durably written (after a resume: rows to skip)."""
        return _rank_rows(self._shards)

    @property
    def complete(self) -> bool:
        return self._complete

    @property
    def manifest_path(self) -> Path:
        return self._manifest_path

    def _reset_pending(self) -> None:
        self._pending_n = 0
        self._pending_ids: list[str] = []
        self._pending_f: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._pending_h: dict[tuple[int, str, str], list[np.ndarray]] = {k: [] for k in self._keys}

    def _owns(self, name: str) -> bool:
        owner = _owner(name)
        if self.world_size == 1:
            return owner is not None
        return owner == self.rank or (owner == "merged" and self.rank == 0 and name != MANIFEST)

    # -- opening

    def _check_fresh(self) -> None:
        names = sorted(os.listdir(self.path))
        if self.world_size == 1:
            conflicts = names
        else:
            conflicts = [
                n
                for n in names
                if not (
                    isinstance(_owner(n), int)
                    and _owner(n) != self.rank
                    and _owner(n) < self.world_size
                )
            ]
        if not conflicts:
            self._check_other_manifests()
            return
        held = [n for n in (MANIFEST, _part_name(self.rank)) if (self.path / n).exists()]
        if held:
            raise RunError(
                f"{self.path} already holds a run ({held[0]}); pass --resume "
                "(resume=True) to continue it, or choose a new directory"
            )
        shown = ", ".join(conflicts[:5]) + (", ..." if len(conflicts) > 5 else "")
        raise RunError(
            f"{self.path} is not empty ({shown}); choose a new directory, "
            "or pass --resume (resume=True) to continue a run there"
        )

    def _resume(self) -> bool:
        """Loads this rank's manifest, checks it, re-verifies its shards and removes strays.

        Returns whether the manifest must be rewritten.
        """
        changed = True
        self._check_other_manifests()
        if self._manifest_path.exists():
            old = _read_json(self._manifest_path)
            if not isinstance(old, dict) or "shards" not in old:
                raise RunError(f"{self._manifest_path}: not a run manifest")
            if int(old.get("format_version", 0)) > FORMAT_VERSION:
                raise RunError(
                    f"{self._manifest_path}: format version {old.get('format_version')} "
                    f"is newer than this introspect ({FORMAT_VERSION})"
                )
            problems = _mismatches(old, self._identity)
            if self.world_size > 1 and int(old.get("rank", -1)) != self.rank:
                problems.append(f"rank: run part has {old.get('rank')!r}, now {self.rank!r}")
            if problems:
                raise RunError(
                    f"cannot resume {self._manifest_path}: it was written with other "
                    "settings (use a new directory, or the original settings):\n  - "
                    + "\n  - ".join(problems)
                )
            self._created = old.get("created_at", self._created)
            self._info = dict(old.get("info") or {})
            for rec in old.get("skipped", []):
                key = _skip_key(rec)
                if key not in self._skipped_keys:
                    self._skipped_keys.add(key)
                    self._skipped.append(rec)
            kept = self._verify_own_shards(
                sorted(
                    (s for s in old["shards"] if int(s.get("rank", 0)) == self.rank),
                    key=lambda s: int(s["index"]),
                )
            )
            self._shards = kept
            self._complete = bool(old.get("complete")) and len(kept) == len(old["shards"])
            if self._complete:
                self._completed_at = old.get("completed_at")
                changed = False
            if self.rows_done:
                logger.info(
                    "resuming %s: %d rows already written (%d shards)",
                    self.path,
                    self.rows_done,
                    len(kept),
                )
        self._remove_strays()
        if self.world_size > 1 and not self._complete and (self.path / MANIFEST).exists():
            logger.info(
                "%s: removing the merged manifest; it is rewritten when every rank is done",
                self.path,
            )
            (self.path / MANIFEST).unlink()
        return changed

    def _check_other_manifests(self) -> None:
        """Every other manifest in the directory (other ranks' parts, a merged or single-rank
        ``manifest.json``) must describe the same run."""
        for name in sorted(os.listdir(self.path)):
            if name == self._manifest_path.name or not (
                name == MANIFEST or re.fullmatch(r"manifest\.r\d+\.json", name)
            ):
                continue
            other = _read_json(self.path / name)
            problems = (
                _mismatches(other, self._identity)
                if isinstance(other, dict)
                else ["not a run manifest"]
            )
            if problems:
                raise RunError(
                    f"{self.path / name} belongs to a run with other settings, so this "
                    "writer cannot use the directory (choose a new one):\n  - "
                    + "\n  - ".join(problems)
                )

    def _verify_own_shards(self, shards: list[dict]) -> list[dict]:
        kept: list[dict] = []
        for i, shard in enumerate(shards):
            problem = None
            start = i * self.shard_rows
            try:
                index, (lo, hi) = int(shard["index"]), (int(x) for x in shard["rows"])
            except (KeyError, TypeError, ValueError):
                index, lo, hi = -1, -1, -1
            if index != i or lo != start or not (start < hi <= start + self.shard_rows):
                problem = f"unexpected shard index/rows {shard.get('index')}, {shard.get('rows')}"
            elif hi - lo != self.shard_rows and i != len(shards) - 1:
                problem = f"short shard {shard['rows']} before the last one"
            else:
                for name, rec in shard["files"].items():
                    p = self.path / name
                    if not p.is_file():
                        problem = f"{p} is missing"
                    elif p.stat().st_size != rec["bytes"]:
                        problem = (
                            f"{p} has {p.stat().st_size} bytes, the manifest says {rec['bytes']}"
                        )
                    elif _sha256_file(p) != rec["sha256"]:
                        problem = f"{p} does not match its sha256 in the manifest"
                    if problem:
                        break
            if problem:
                logger.warning(
                    "%s; dropping shard %d of rank %d and the %d after it, they will "
                    "be written again",
                    problem,
                    i,
                    self.rank,
                    len(shards) - i - 1,
                )
                break
            kept.append(shard)
        return kept

    def _remove_strays(self) -> None:
        keep = {self._manifest_path.name}
        for shard in self._shards:
            keep.update(shard["files"])
        for name in sorted(os.listdir(self.path)):
            if name in keep or not self._owns(name):
                continue
            logger.info("%s: removing %s (not part of the run)", self.path, name)
            (self.path / name).unlink()

    # -- writing

    def add(
        self,
        ids: Sequence[str],
        f_x: Any,
        f_mod: Any,
        hidden: Mapping[tuple[int, str, str], Any] | None = None,
        skipped: Iterable[Any] | None = None,
    ) -> None:
        """Appends a batch of rows (in pair-file order, for this rank's stream).

        ``f_x`` and ``f_mod`` are [B] arrays, ``hidden`` maps every ``(layer, position, side)``
        this run captures to a [B, hidden_size] array. ``skipped`` lists pairs that were not
        turned into rows (dicts with ``id``, ``line``, ``reason``); they are recorded once each
        in the manifest. The arrays are copied, so the caller may reuse them afterwards.
        """
        if self._closed:
            raise RunError(f"{self.path}: the writer is closed")
        ids = list(ids)
        if not all(isinstance(i, str) for i in ids):
            raise ValueError("ids must be strings")
        b = len(ids)
        fx = np.asarray(f_x, dtype=_F64)
        fm = np.asarray(f_mod, dtype=_F64)
        for name, arr in (("f_x", fx), ("f_mod", fm)):
            if arr.shape != (b,):
                raise ValueError(f"{name} has shape {arr.shape}, expected ({b},) for {b} ids")
        hidden = dict(hidden or {})
        hidden = {(int(k[0]), str(k[1]), str(k[2])): v for k, v in hidden.items()}
        missing = [k for k in self._keys if k not in hidden]
        extra = [k for k in hidden if k not in set(self._keys)]
        if missing or extra:
            raise ValueError(
                "hidden must have one [B, D] array for each (layer, position, side) of the run"
                + (
                    f"; missing {missing[:4]}{' ...' if len(missing) > 4 else ''}"
                    if missing
                    else ""
                )
                + (f"; unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}" if extra else "")
            )
        arrays = {}
        for key in self._keys:
            arr = np.asarray(hidden[key])
            if arr.shape != (b, self.hidden_size):
                raise ValueError(
                    f"hidden{key} has shape {arr.shape}, expected {(b, self.hidden_size)}"
                )
            arrays[key] = arr
        if b and self._complete:
            raise RunError(
                f"{self._manifest_path} is already complete ({self.rows_done} rows); "
                "no rows can be added"
            )
        for item in skipped or ():
            rec = _skip_record(item)
            key = _skip_key(rec)
            if key not in self._skipped_keys:
                self._skipped_keys.add(key)
                self._skipped.append(rec)

        pos = 0
        while pos < b:
            take = min(b - pos, self.shard_rows - self._pending_n)
            sl = slice(pos, pos + take)
            self._pending_ids.extend(ids[sl])
            self._pending_f[0].append(np.array(fx[sl], dtype=_F64, copy=True))
            self._pending_f[1].append(np.array(fm[sl], dtype=_F64, copy=True))
            for key in self._keys:
                self._pending_h[key].append(
                    np.array(arrays[key][sl], dtype=self._np_dtype, order="C", copy=True)
                )
            self._pending_n += take
            pos += take
            if self._pending_n == self.shard_rows:
                self._flush()

    def _flush(self) -> None:
        n = self._pending_n
        if n == 0:
            return
        index = len(self._shards)
        start = self.rows_done
        shard_name, ids_name = _shard_name(self.rank, index), _ids_name(self.rank, index)
        tensors = [
            ("f_x", "F64", (n,), self._pending_f[0]),
            ("f_mod", "F64", (n,), self._pending_f[1]),
        ]
        tensors += [
            (hidden_name(*key), self._st_code, (n, self.hidden_size), self._pending_h[key])
            for key in self._keys
        ]
        meta = {
            "format": "introspect-run",
            "format_version": str(FORMAT_VERSION),
            "rank": str(self.rank),
            "index": str(index),
            "rows": f"{start}:{start + n}",
        }
        files = {shard_name: _write_safetensors(self.path / shard_name, tensors, meta)}
        ids_blob = (json.dumps(self._pending_ids, ensure_ascii=True) + "\n").encode("ascii")
        files[ids_name] = _write_atomic(self.path / ids_name, ids_blob)
        self._shards.append(
            {"rank": self.rank, "index": index, "rows": [start, start + n], "files": files}
        )
        self._reset_pending()
        self._write_manifest()

    def close(self) -> None:
        """Writes the remaining rows and marks the run (this rank's part) complete."""
        if self._closed:
            return
        if not self._complete:
            self._flush()
            self._complete = True
            self._completed_at = _now()
        self._write_manifest()
        self._closed = True

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            if self._pending_n:
                logger.warning(
                    "%s: %d buffered rows were not written; the run can be resumed from row %d",
                    self.path,
                    self._pending_n,
                    self.rows_done,
                )
            self._reset_pending()
            self._closed = True

    @property
    def info(self) -> dict[str, Any]:
        """Measurements about the run that are not part of its identity (e.g. the fidelity of a
        reduced precision), kept across ``resume``; see :meth:`set_info`."""
        return dict(self._info)

    def set_info(self, key: str, value: Any) -> None:
        """Records ``value`` (JSON-serialisable) under ``info[key]`` of the manifest, now."""
        self._info[str(key)] = _normalise_json(value, f"info[{key!r}]")
        self._write_manifest()

    def _manifest(self) -> dict:
        m: dict[str, Any] = {"format_version": FORMAT_VERSION, "introspect": _version()}
        m.update(self._identity)
        if self._info:
            m["info"] = self._info
        if self.world_size > 1:
            m["rank"] = self.rank
        m["shards"] = self._shards
        m["skipped"] = self._skipped
        m["complete"] = self._complete
        m["rows_done"] = self.rows_done
        if self._complete:
            m["rows_total"] = self.rows_done
        m["created_at"] = self._created
        m["updated_at"] = _now()
        if self._complete:
            m["completed_at"] = self._completed_at
        return m

    def _write_manifest(self) -> None:
        _write_json(self._manifest_path, self._manifest())


# ------------------------------------------------------------------------------ merging ranks


def _load_parts(path: Path) -> dict[int, dict]:
    parts: dict[int, dict] = {}
    for name in os.listdir(path):
        m = re.fullmatch(r"manifest\.r(\d+)\.json", name)
        if m:
            part = _read_json(path / name)
            if not isinstance(part, dict) or "shards" not in part:
                raise RunError(f"{path / name}: not a run manifest")
            parts[int(m.group(1))] = part
    return parts


def _merge(path: Path, parts: Mapping[int, dict], *, require_complete: bool) -> dict:
    """One manifest for all ranks; with ``require_complete=False`` missing or unfinished parts are
    allowed (the result is then incomplete)."""
    if not parts:
        raise RunError(f"{path}: no {MANIFEST} and no manifest.r*.json parts; not a run directory")
    first = parts[min(parts)]
    k = int(first.get("world_size", 1))
    for r, part in sorted(parts.items()):
        problems = _mismatches(first, part)
        if problems:
            raise RunError(
                f"{path / _part_name(r)} does not belong to the same run as "
                f"{_part_name(min(parts))}:\n  - " + "\n  - ".join(problems)
            )
        if r >= k:
            raise RunError(f"{path / _part_name(r)}: rank {r} but world_size is {k}")
    missing = [r for r in range(k) if r not in parts]
    unfinished = [r for r in range(k) if r in parts and not parts[r].get("complete")]
    if require_complete and (missing or unfinished):
        what = [f"{_part_name(r)} is missing" for r in missing]
        what += [f"{_part_name(r)} is not complete" for r in unfinished]
        raise RunError(f"{path}: cannot merge the ranks yet: " + "; ".join(what))
    counts = {r: _rank_rows(parts[r]["shards"]) if r in parts else 0 for r in range(k)}
    complete = not missing and not unfinished
    total = sum(counts.values())
    if complete:
        bad = [r for r in range(k) if counts[r] != len(range(r, total, k))]
        if bad:
            raise RunError(
                f"{path}: the ranks hold {[counts[r] for r in range(k)]} rows, which is not a "
                f"strided split of {total} rows over {k} ranks (rank r must hold the rows with "
                "index % world_size == r)"
            )
    m: dict[str, Any] = {"format_version": FORMAT_VERSION, "introspect": _version()}
    m.update({f: first.get(f) for f in _IDENTITY_FIELDS})
    m["row_order"] = "strided: global row g is local row g // world_size of rank g % world_size"
    m["parts"] = [
        {
            "rank": r,
            "file": _part_name(r),
            "rows": counts[r],
            "complete": bool(parts.get(r, {}).get("complete")),
        }
        for r in range(k)
    ]
    m["shards"] = [s for r in range(k) for s in (parts[r]["shards"] if r in parts else [])]
    skipped: list[dict] = []
    seen: set[tuple] = set()
    for r in range(k):
        for rec in parts.get(r, {}).get("skipped", []):
            if _skip_key(rec) not in seen:
                seen.add(_skip_key(rec))
                skipped.append(rec)
    skipped.sort(key=lambda s: (s.get("line") is None, s.get("line") or 0, str(s.get("id"))))
    m["skipped"] = skipped
    info: dict[str, Any] = {}
    for r in sorted(parts, reverse=True):  # rank 0's values win
        info.update(parts[r].get("info") or {})
    if info:
        m["info"] = info
    m["complete"] = complete
    if complete:
        m["rows_total"] = total
    m["created_at"] = min((p.get("created_at") or "" for p in parts.values()), default="")
    m["updated_at"] = _now()
    return m


def merge_ranks(path: str | os.PathLike) -> None:
    """Writes ``manifest.json`` for a multi-rank run whose ranks have all closed.

    Call it once (from rank 0) after every rank's writer is closed; :func:`open_run` also calls
    it when all parts are complete and no merged manifest exists. A single-rank run needs no
    merge (its writer writes ``manifest.json`` itself), and this is then a no-op. Raises
    :class:`RunError` when a part is missing, unfinished or from another run.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: not a directory")
    parts = _load_parts(path)
    if not parts and (path / MANIFEST).exists():
        existing = _read_json(path / MANIFEST)
        if isinstance(existing, dict) and int(existing.get("world_size", 1)) == 1:
            return
    merged = _merge(path, parts, require_complete=True)
    for shard in merged["shards"]:
        for name, rec in shard["files"].items():
            p = path / name
            if not p.is_file() or p.stat().st_size != rec["bytes"]:
                raise RunError(f"{p}: missing or of the wrong size ({rec['bytes']} bytes expected)")
    _write_json(path / MANIFEST, merged)


# --------------------------------------------------------------------------------- the reader


class _Shard:
    """One shard file's layout: where each tensor's bytes are."""

    def __init__(self, path: Path, entry: Mapping, run: Run):
        self.entry = entry
        self.rank = int(entry.get("rank", 0))
        self.lo, self.hi = (int(x) for x in entry["rows"])
        self.rows = self.hi - self.lo
        names = list(entry["files"])
        tensor_files = [n for n in names if n.endswith(".safetensors")]
        ids_files = [n for n in names if n.endswith(".json")]
        if len(tensor_files) != 1 or len(ids_files) != 1:
            raise RunError(
                f"{run.manifest_file}: shard entry {entry.get('index')} of rank "
                f"{self.rank} must list one .safetensors and one .json file"
            )
        self.file = path / tensor_files[0]
        self.ids_file = path / ids_files[0]
        self.data_start, header = _read_header(self.file)
        size = self.file.stat().st_size
        self.tensors: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dt = _ST_DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                a, b = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise RunError(
                    f"{self.file}: tensor {name!r} has an unsupported header entry {info!r}"
                ) from None
            if (
                b - a != int(np.prod(shape, dtype=np.int64)) * dt.itemsize
                or self.data_start + b > size
            ):
                raise RunError(f"{self.file}: tensor {name!r} has inconsistent offsets")
            self.tensors[name] = (dt, shape, self.data_start + a)
        expect = {"f_x": (_F64, (self.rows,)), "f_mod": (_F64, (self.rows,))}
        d = run.hidden_size
        hdt = _HIDDEN_DTYPES[run.hidden_dtype][1]
        for layer in run.layers:
            for pos in run.positions:
                for side in run.sides:
                    expect[hidden_name(layer, pos, side)] = (hdt, (self.rows, d))
        for name, (dt, shape) in expect.items():
            got = self.tensors.get(name)
            if got is None:
                raise RunError(f"{self.file}: tensor {name!r} is missing")
            if got[0] != dt or got[1] != shape:
                raise RunError(
                    f"{self.file}: tensor {name!r} is {got[0].name} {list(got[1])}, "
                    f"expected {dt.name} {list(shape)}"
                )

    def array(self, name: str) -> np.ndarray:
        dt, shape, offset = self.tensors[name]
        if 0 in shape:
            return np.empty(shape, dtype=dt)
        return np.memmap(self.file, dtype=dt, mode="r", offset=offset, shape=shape)

    def ids(self) -> list[str]:
        ids = _read_json(self.ids_file)
        if (
            not isinstance(ids, list)
            or len(ids) != self.rows
            or not all(isinstance(i, str) for i in ids)
        ):
            raise RunError(f"{self.ids_file}: expected a JSON list of {self.rows} id strings")
        return ids


class Run:
    """A run directory opened for reading (see :func:`open_run`).

    ``ids``, ``f_x``, ``f_mod`` and ``delta`` (= f_mod − f_x, float64) are in pair-file order and
    loaded in memory; :meth:`hidden` returns [N, D] arrays backed by the shard files. For an
    incomplete run (``complete`` is False) they cover the rows written so far: with several ranks,
    the longest prefix of the global order that every rank has reached.
    """

    def __init__(self, path: Path, manifest: dict, manifest_file: Path, *, verify: bool):
        self.path = path
        self.manifest = manifest
        self.manifest_file = manifest_file
        try:
            if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
                raise RunError(
                    f"{manifest_file}: format version {manifest['format_version']} is "
                    f"newer than this introspect ({FORMAT_VERSION})"
                )
            self.model_id: str = manifest["model"]["id"]
            self.weights_hash: str = manifest["model"]["weights_hash"]
            self.config: dict = manifest["config"]
            self.input_hash: str = manifest["input_hash"]
            self.layers: list[int] = [int(x) for x in manifest["layers"]]
            self.positions: list[str] = list(manifest["positions"])
            self.sides: list[str] = list(manifest.get("sides", SIDES))
            self.hidden_size: int = int(manifest["hidden_size"])
            self.hidden_dtype: str = manifest["hidden_dtype"]
            self.shard_rows: int = int(manifest["shard_rows"])
            self.world_size: int = int(manifest.get("world_size", 1))
            entries = list(manifest["shards"])
        except (KeyError, TypeError, ValueError) as e:
            raise RunError(f"{manifest_file}: not a valid run manifest ({e!r})") from None
        if self.hidden_dtype not in _HIDDEN_DTYPES:
            raise RunError(f"{manifest_file}: unsupported hidden_dtype {self.hidden_dtype!r}")
        self.complete: bool = bool(manifest.get("complete"))
        self.skipped: list[dict] = list(manifest.get("skipped", []))
        self.info: dict = dict(manifest.get("info") or {})

        if verify:
            for entry in entries:
                for name, rec in entry["files"].items():
                    p = path / name
                    if not p.is_file():
                        raise RunError(f"{p}: file is missing (listed in {manifest_file.name})")
                    if p.stat().st_size != rec["bytes"] or _sha256_file(p) != rec["sha256"]:
                        raise RunError(
                            f"{p}: checksum mismatch, the file is corrupt (its sha256 "
                            f"differs from {manifest_file.name})"
                        )

        k = self.world_size
        self._by_rank: list[list[_Shard]] = [[] for _ in range(k)]
        for entry in entries:
            shard = _Shard(path, entry, self)
            if not 0 <= shard.rank < k:
                raise RunError(f"{manifest_file}: shard of rank {shard.rank} in a run of {k} ranks")
            self._by_rank[shard.rank].append(shard)
        for r, shards in enumerate(self._by_rank):
            shards.sort(key=lambda s: s.lo)
            at = 0
            for s in shards:
                if s.lo != at or s.rows <= 0:
                    raise RunError(
                        f"{manifest_file}: the shards of rank {r} do not cover "
                        f"contiguous rows (at row {at}: {s.entry['rows']})"
                    )
                at = s.hi
        counts = [_rank_rows([s.entry for s in shards]) for shards in self._by_rank]
        if self.complete:
            n = sum(counts)
            if any(counts[r] != len(range(r, n, k)) for r in range(k)):
                raise RunError(f"{manifest_file}: ranks hold {counts} rows, not a strided split")
        else:
            n = min(counts[r] * k + r for r in range(k)) if k > 1 else counts[0]
            logger.warning("%s: the run is not complete; %d rows are readable", path, n)
        self._n = n
        self._take = [len(range(r, n, k)) for r in range(k)]

        self.ids: list[str] = self._gather_ids()
        self.f_x: np.ndarray = np.array(self._gather("f_x", (), _F64))
        self.f_mod: np.ndarray = np.array(self._gather("f_mod", (), _F64))
        self.delta: np.ndarray = self.f_mod - self.f_x

    def __len__(self) -> int:
        return self._n

    @property
    def rows_total(self) -> int:
        return self._n

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"Run({str(self.path)!r}, {self._n} rows, {state}, model {self.model_id!r}, "
            f"layers {self.layers}, positions {self.positions})"
        )

    def _pieces(self, r: int):
        """(shard, rows of it to use) for rank r, up to the readable prefix."""
        left = self._take[r]
        for s in self._by_rank[r]:
            if left <= 0:
                break
            use = min(s.rows, left)
            yield s, use
            left -= use

    def _gather_ids(self) -> list[str]:
        k = self.world_size
        if k == 1:
            out: list[str] = []
            for s, use in self._pieces(0):
                out.extend(s.ids()[:use])
            return out
        ids: list[Any] = [None] * self._n
        for r in range(k):
            local: list[str] = []
            for s, use in self._pieces(r):
                local.extend(s.ids()[:use])
            ids[r::k] = local
        return ids

    def _gather(self, name: str, tail: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        k = self.world_size
        if k == 1:
            pieces = [s.array(name)[:use] for s, use in self._pieces(0)]
            if len(pieces) == 1:
                return pieces[0]
            if not pieces:
                return np.empty((0, *tail), dtype=dtype)
            return np.concatenate(pieces)
        out = np.empty((self._n, *tail), dtype=dtype)
        for r in range(k):
            for s, use in self._pieces(r):
                out[r + k * s.lo : r + k * (s.lo + use) : k] = s.array(name)[:use]
        return out

    def hidden(self, layer: int, side: str = "x", position: str | None = None) -> np.ndarray:
        """The [N, D] hidden states at ``layer`` for ``side`` (``"x"`` or ``"mod"``) and
        ``position`` (default: the first captured position), rows in pair-file order.

        A single-rank run stored in one shard returns a read-only ``numpy.memmap`` of the shard
        file (no copy). When the rows span several shards, or come from several ranks, the
        shards are memory-mapped and copied into one new array (N × D × itemsize bytes in memory);
        read large runs shard by shard with :meth:`hidden_shards` instead.
        """
        name = self._hidden_name(layer, side, position)
        return self._gather(name, (self.hidden_size,), _HIDDEN_DTYPES[self.hidden_dtype][1])

    def hidden_shards(self, layer: int, side: str = "x", position: str | None = None):
        """Yields ``(rank, local_rows, memmap)`` per shard, without copying (single- or multi-rank);
        global row of local row ``i`` of rank ``r`` is ``i * world_size + r``."""
        name = self._hidden_name(layer, side, position)
        for r in range(self.world_size):
            for s, use in self._pieces(r):
                yield r, range(s.lo, s.lo + use), s.array(name)[:use]

    def _hidden_name(self, layer: int, side: str, position: str | None) -> str:
        if int(layer) not in self.layers:
            raise ValueError(f"layer {layer} was not captured; this run has layers {self.layers}")
        if side not in self.sides:
            raise ValueError(f"side must be one of {self.sides}, not {side!r}")
        if position is None:
            if not self.positions:
                raise ValueError("this run captured no hidden-state positions")
            position = self.positions[0]
        if position not in self.positions:
            raise ValueError(
                f"position {position!r} was not captured; this run has {self.positions}"
            )
        return hidden_name(layer, position, side)


def open_run(path: str | os.PathLike, *, verify: bool = True) -> Run:
    """Opens a run directory written by :class:`RunWriter`.

    With ``verify`` (default) every file's sha256 is checked against the manifest and a mismatch
    raises :class:`RunError` naming the file. An incomplete run opens with ``complete=False``
    (and a logged warning) exposing the rows written so far. A multi-rank run whose parts are all
    complete but not yet merged is merged here (``manifest.json`` is written when the directory
    is writable).

    >>> run = open_run("build/run")  # doctest: +SKIP
    >>> run.ids[:2], run.delta[:2], run.hidden(15, "x").shape  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run directory")
    top = path / MANIFEST
    parts = None
    if top.exists():
        manifest = _read_json(top)
        if not isinstance(manifest, dict):
            raise RunError(f"{top}: not a run manifest")
        return Run(path, manifest, top, verify=verify)
    parts = _load_parts(path)
    if not parts:
        raise RunError(f"{path}: no {MANIFEST}; not a run directory (or the run has not started)")
    manifest = _merge(path, parts, require_complete=False)
    if manifest["complete"]:
        try:
            _write_json(top, manifest)
        except OSError as e:
            logger.warning(
                "%s: could not write the merged manifest (%s); merged in memory", path, e
            )
        return Run(path, manifest, top, verify=verify)
    return Run(path, manifest, path / _part_name(min(parts)), verify=verify)
