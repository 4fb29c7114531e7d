"""Merging the manifest parts of a multi-rank (torchrun) run into one ``manifest.json``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from introspect.run.format import (
    _IDENTITY_FIELDS,
    FORMAT_VERSION,
    MANIFEST,
    RunError,
    _add_skipped,
    _load_parts,
    _mismatches,
    _now,
    _part_name,
    _problem_list,
    _rank_rows,
    _read_json,
    _version,
    _write_json,
)


def _check_parts(path: Path, parts: Mapping[int, dict], *, require_complete: bool) -> int:
    """The run's world size, after checking that every part belongs to the same run (and, with
    ``require_complete``, that every rank's part is there and complete)."""
    first = parts[min(parts)]
    k = int(first.get("world_size", 1))
    for r, part in sorted(parts.items()):
        problems = _mismatches(first, part)
        if problems:
            raise RunError(
                f"{path / _part_name(r)} does not belong to the same run as "
                f"{_part_name(min(parts))}:" + _problem_list(problems)
            )
        if r >= k:
            raise RunError(f"{path / _part_name(r)}: rank {r} but world_size is {k}")
    missing = [r for r in range(k) if r not in parts]
    unfinished = [r for r in range(k) if r in parts and not parts[r].get("complete")]
    if require_complete and (missing or unfinished):
        what = [f"{_part_name(r)} is missing" for r in missing]
        what += [f"{_part_name(r)} is not complete" for r in unfinished]
        raise RunError(f"{path}: cannot merge the ranks yet: " + "; ".join(what))
    return k


def _check_strided(path: Path, counts: Mapping[int, int], k: int) -> None:
    """The ranks of a complete run must hold a strided split of its rows."""
    total = sum(counts.values())
    bad = [r for r in range(k) if counts[r] != len(range(r, total, k))]
    if bad:
        raise RunError(
            f"{path}: the ranks hold {[counts[r] for r in range(k)]} rows, which is not a "
            f"strided split of {total} rows over {k} ranks (rank r must hold the rows with "
            "index % world_size == r)"
        )


def _merged_skipped(parts: Mapping[int, dict], k: int) -> list[dict]:
    """The skipped pairs of all ranks, once each, in pair-file order."""
    skipped: list[dict] = []
    seen: set[tuple] = set()
    for r in range(k):
        _add_skipped(skipped, seen, parts.get(r, {}).get("skipped", []))
    skipped.sort(key=lambda s: (s.get("line") is None, s.get("line") or 0, str(s.get("id"))))
    return skipped


def _merge(path: Path, parts: Mapping[int, dict], *, require_complete: bool) -> dict:
    """One manifest for all ranks; with ``require_complete=False`` missing or unfinished parts are
    allowed (the result is then incomplete)."""
    if not parts:
        raise RunError(f"{path}: no {MANIFEST} and no manifest.r*.json parts; not a run directory")
    k = _check_parts(path, parts, require_complete=require_complete)
    first = parts[min(parts)]
    counts = {r: _rank_rows(parts[r]["shards"]) if r in parts else 0 for r in range(k)}
    complete = all(r in parts and parts[r].get("complete") for r in range(k))
    total = sum(counts.values())
    if complete:
        _check_strided(path, counts, k)
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
    m["skipped"] = _merged_skipped(parts, k)
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
