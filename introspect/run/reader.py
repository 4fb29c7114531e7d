"""Reading a run directory back: ``open_run`` and the lazily loaded :class:`Run`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from introspect._io import sha256_file
from introspect.run.format import (
    _F64,
    _HIDDEN_DTYPES,
    _ST_DTYPES,
    FORMAT_VERSION,
    MANIFEST,
    SIDES,
    RunError,
    _load_parts,
    _part_name,
    _rank_rows,
    _read_header,
    _read_json,
    _write_json,
    hidden_name,
)
from introspect.run.merge import _merge

logger = logging.getLogger(__name__)


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
        self.tensors = self._read_layout()
        self._check_tensors(run)

    def _read_layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...], int]]:
        """``{name: (dtype, shape, file offset)}`` of every tensor, from the file's header."""
        self.data_start, header = _read_header(self.file)
        size = self.file.stat().st_size
        tensors: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
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
            tensors[name] = (dt, shape, self.data_start + a)
        return tensors

    def _check_tensors(self, run: Run) -> None:
        """Every tensor the run's settings call for is there, with its dtype and shape."""
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
        """Tensor ``name`` of the shard, memory-mapped read-only."""
        dt, shape, offset = self.tensors[name]
        if 0 in shape:
            return np.empty(shape, dtype=dt)
        return np.memmap(self.file, dtype=dt, mode="r", offset=offset, shape=shape)

    def ids(self) -> list[str]:
        """The pair ids of the shard's rows."""
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
        entries = self._read_settings(manifest)
        self.complete: bool = bool(manifest.get("complete"))
        self.skipped: list[dict] = list(manifest.get("skipped", []))
        self.info: dict = dict(manifest.get("info") or {})
        if verify:
            self._verify_files(entries)
        self._index_shards(entries)
        self.ids: list[str] = self._gather_ids()
        self.f_x: np.ndarray = np.array(self._gather("f_x", (), _F64))
        self.f_mod: np.ndarray = np.array(self._gather("f_mod", (), _F64))
        self.delta: np.ndarray = self.f_mod - self.f_x

    def _read_settings(self, manifest: Mapping) -> list[Mapping]:
        """Sets the run's identity and settings from the manifest; returns its shard entries."""
        manifest_file = self.manifest_file
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
        return entries

    def _verify_files(self, entries: list[Mapping]) -> None:
        """Every file the manifest lists is there with its size and sha256."""
        for entry in entries:
            for name, rec in entry["files"].items():
                p = self.path / name
                if not p.is_file():
                    raise RunError(f"{p}: file is missing (listed in {self.manifest_file.name})")
                if p.stat().st_size != rec["bytes"] or sha256_file(p) != rec["sha256"]:
                    raise RunError(
                        f"{p}: checksum mismatch, the file is corrupt (its sha256 "
                        f"differs from {self.manifest_file.name})"
                    )

    def _index_shards(self, entries: list[Mapping]) -> None:
        """Opens the shards by rank, checks that they cover contiguous rows and works out how
        many rows are readable (all of them, or the prefix every rank has reached)."""
        manifest_file, k = self.manifest_file, self.world_size
        self._by_rank: list[list[_Shard]] = [[] for _ in range(k)]
        for entry in entries:
            shard = _Shard(self.path, entry, self)
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
            logger.warning("%s: the run is not complete; %d rows are readable", self.path, n)
        self._n = n
        self._take = [len(range(r, n, k)) for r in range(k)]

    def __len__(self) -> int:
        return self._n

    @property
    def rows_total(self) -> int:
        """The number of readable rows."""
        return self._n

    def __repr__(self) -> str:
        state = "complete" if self.complete else "incomplete"
        return (
            f"Run({str(self.path)!r}, {self._n} rows, {state}, model {self.model_id!r}, "
            f"layers {self.layers}, positions {self.positions})"
        )

    def _pieces(self, r: int) -> Iterator[tuple[_Shard, int]]:
        """(shard, rows of it to use) for rank r, up to the readable prefix."""
        left = self._take[r]
        for s in self._by_rank[r]:
            if left <= 0:
                break
            use = min(s.rows, left)
            yield s, use
            left -= use

    def _gather_ids(self) -> list[str]:
        """The ids of the readable rows, in global order."""
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
        """Tensor ``name`` over the readable rows in global order (a memmap when one shard)."""
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

    def hidden_shards(
        self, layer: int, side: str = "x", position: str | None = None
    ) -> Iterator[tuple[int, range, np.ndarray]]:
        """Yields ``(rank, local_rows, memmap)`` per shard, without copying (single- or multi-rank);
        global row of local row ``i`` of rank ``r`` is ``i * world_size + r``."""
        name = self._hidden_name(layer, side, position)
        for r in range(self.world_size):
            for s, use in self._pieces(r):
                yield r, range(s.lo, s.lo + use), s.array(name)[:use]

    def _hidden_name(self, layer: int, side: str, position: str | None) -> str:
        """The tensor name of a captured state; ValueError when the run did not capture it."""
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
    """Opens a run directory written by :class:`~introspect.run.RunWriter`.

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
