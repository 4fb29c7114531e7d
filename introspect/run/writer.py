"""The writer of a run directory: one rank's rows in shards, crash-safe, resumable."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from introspect._io import sha256_file
from introspect.run.format import (
    _F64,
    _HIDDEN_DTYPES,
    _PART,
    FORMAT_VERSION,
    MANIFEST,
    SIDES,
    RunError,
    _add_skipped,
    _dtype_name,
    _ids_name,
    _mismatches,
    _normalise_json,
    _now,
    _own_manifest_name,
    _owner,
    _part_name,
    _problem_list,
    _rank_rows,
    _read_json,
    _shard_name,
    _skip_record,
    _version,
    _write_bytes,
    _write_json,
    _write_safetensors,
    hidden_name,
)

logger = logging.getLogger(__name__)

HiddenKey = tuple[int, str, str]


def _checked_settings(
    layers: Sequence[int],
    positions: Sequence[str],
    sides: Sequence[str],
    hidden_dtype: str,
    hidden_size: int,
    shard_rows: int,
    rank: int,
    world_size: int,
) -> tuple[list[int], list[str], list[str], str]:
    """The writer's layers, positions, sides and dtype name, normalised; ValueError when the
    settings cannot describe a run."""
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
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return layers, positions, sides, hidden_dtype


def _few(keys: list, what: str) -> str:
    """``"; {what} [first four keys] ..."``, or nothing when ``keys`` is empty."""
    if not keys:
        return ""
    return f"; {what} {keys[:4]}{' ...' if len(keys) > 4 else ''}"


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
        layers, positions, sides, hidden_dtype = _checked_settings(
            layers, positions, sides, hidden_dtype, hidden_size, shard_rows, rank, world_size
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
        self._open(resume)

    # -- state

    @property
    def rows_done(self) -> int:
        """Rows of this rank's stream that are durably written (after a resume: rows to skip)."""
        return _rank_rows(self._shards)

    @property
    def complete(self) -> bool:
        """Whether this rank's part (the run, with one rank) is closed and complete."""
        return self._complete

    @property
    def manifest_path(self) -> Path:
        """The manifest this writer keeps: ``manifest.json``, or its rank's part."""
        return self._manifest_path

    def _reset_pending(self) -> None:
        """Empties the buffer of rows not yet written."""
        self._pending_n = 0
        self._pending_ids: list[str] = []
        self._pending_f: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
        self._pending_h: dict[HiddenKey, list[np.ndarray]] = {k: [] for k in self._keys}

    def _owns(self, name: str) -> bool:
        """Whether a file in the directory is this writer's to remove when it is not listed."""
        owner = _owner(name)
        if self.world_size == 1:
            return owner is not None
        return owner == self.rank or (owner == "merged" and self.rank == 0 and name != MANIFEST)

    # -- opening

    def _open(self, resume: bool) -> None:
        """Creates the directory, or takes up the run in it, and writes the manifest if needed."""
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

    def _check_fresh(self) -> None:
        """A new run needs a directory without files of this rank (or of any, with one rank)."""
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
            changed = self._take_up(self._read_own_manifest())
        self._remove_strays()
        if self.world_size > 1 and not self._complete and (self.path / MANIFEST).exists():
            logger.info(
                "%s: removing the merged manifest; it is rewritten when every rank is done",
                self.path,
            )
            (self.path / MANIFEST).unlink()
        return changed

    def _read_own_manifest(self) -> dict:
        """This rank's manifest, checked to describe the run this writer was opened for."""
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
                "settings (use a new directory, or the original settings):"
                + _problem_list(problems)
            )
        return old

    def _take_up(self, old: dict) -> bool:
        """Continues from the manifest ``old``: keeps its intact shards, skipped pairs and info.

        Returns whether the manifest must be rewritten (not when a complete run is intact).
        """
        self._created = old.get("created_at", self._created)
        self._info = dict(old.get("info") or {})
        _add_skipped(self._skipped, self._skipped_keys, old.get("skipped", []))
        kept = self._verify_own_shards(
            sorted(
                (s for s in old["shards"] if int(s.get("rank", 0)) == self.rank),
                key=lambda s: int(s["index"]),
            )
        )
        self._shards = kept
        self._complete = bool(old.get("complete")) and len(kept) == len(old["shards"])
        changed = True
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
        return changed

    def _check_other_manifests(self) -> None:
        """Every other manifest in the directory (other ranks' parts, a merged or single-rank
        ``manifest.json``) must describe the same run."""
        for name in sorted(os.listdir(self.path)):
            if name == self._manifest_path.name or not (name == MANIFEST or _PART.fullmatch(name)):
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
                    "writer cannot use the directory (choose a new one):" + _problem_list(problems)
                )

    def _verify_own_shards(self, shards: list[dict]) -> list[dict]:
        """The leading shards (in index order) that are intact; the first damaged one and all
        after it are dropped, with a warning."""
        kept: list[dict] = []
        for i, shard in enumerate(shards):
            problem = self._shard_problem(i, shard, last=i == len(shards) - 1)
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

    def _shard_problem(self, i: int, shard: Mapping, *, last: bool) -> str | None:
        """What is wrong with the manifest entry of shard ``i`` or its files (None: intact)."""
        start = i * self.shard_rows
        try:
            index, (lo, hi) = int(shard["index"]), (int(x) for x in shard["rows"])
        except (KeyError, TypeError, ValueError):
            index, lo, hi = -1, -1, -1
        if index != i or lo != start or not (start < hi <= start + self.shard_rows):
            return f"unexpected shard index/rows {shard.get('index')}, {shard.get('rows')}"
        if hi - lo != self.shard_rows and not last:
            return f"short shard {shard['rows']} before the last one"
        for name, rec in shard["files"].items():
            p = self.path / name
            if not p.is_file():
                return f"{p} is missing"
            if p.stat().st_size != rec["bytes"]:
                return f"{p} has {p.stat().st_size} bytes, the manifest says {rec['bytes']}"
            if sha256_file(p) != rec["sha256"]:
                return f"{p} does not match its sha256 in the manifest"
        return None

    def _remove_strays(self) -> None:
        """Removes this writer's files that its manifest does not list (left by a crash)."""
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
        hidden: Mapping[HiddenKey, Any] | None = None,
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
        arrays = self._checked_hidden(hidden, b)
        if b and self._complete:
            raise RunError(
                f"{self._manifest_path} is already complete ({self.rows_done} rows); "
                "no rows can be added"
            )
        _add_skipped(self._skipped, self._skipped_keys, map(_skip_record, skipped or ()))
        self._buffer(ids, fx, fm, arrays)

    def _checked_hidden(
        self, hidden: Mapping[HiddenKey, Any] | None, b: int
    ) -> dict[HiddenKey, np.ndarray]:
        """The batch's hidden states by key, checked to be one [b, D] array per captured key."""
        hidden = dict(hidden or {})
        hidden = {(int(k[0]), str(k[1]), str(k[2])): v for k, v in hidden.items()}
        missing = [k for k in self._keys if k not in hidden]
        extra = [k for k in hidden if k not in set(self._keys)]
        if missing or extra:
            raise ValueError(
                "hidden must have one [B, D] array for each (layer, position, side) of the run"
                + _few(missing, "missing")
                + _few(extra, "unexpected")
            )
        arrays = {}
        for key in self._keys:
            arr = np.asarray(hidden[key])
            if arr.shape != (b, self.hidden_size):
                raise ValueError(
                    f"hidden{key} has shape {arr.shape}, expected {(b, self.hidden_size)}"
                )
            arrays[key] = arr
        return arrays

    def _buffer(
        self,
        ids: list[str],
        fx: np.ndarray,
        fm: np.ndarray,
        arrays: Mapping[HiddenKey, np.ndarray],
    ) -> None:
        """Copies checked rows into the buffer, writing a shard each time it fills up."""
        b, pos = len(ids), 0
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
        """Writes the buffered rows as the next shard, then the manifest that lists it."""
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
        files[ids_name] = _write_bytes(self.path / ids_name, ids_blob)
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
        """This writer's manifest as it stands now."""
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
        """Rewrites this writer's manifest crash-safely."""
        _write_json(self._manifest_path, self._manifest())
