"""Format detection: the container by extension or first bytes, then a data-set format when the
columns match one."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from introspect.data.importers.containers import _columns, _read_jsonl
from introspect.data.importers.transluce_hint import _transluce_resolve

FORMATS = ("auto", "jsonl", "csv", "parquet", "anthropic-sycophancy", "xstest", "transluce-hint")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _container_of(path: Path) -> str:
    """jsonl, csv or parquet: by extension, else by the first bytes; ValueError if unsure."""
    ext = path.suffix.lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    with path.open("rb") as f:
        head = f.read(4)
        if head == b"PAR1":
            return "parquet"
        f.seek(0)
        for raw in f:
            line = raw.strip()
            if not line:
                continue
            try:
                first = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError):
                break
            if isinstance(first, dict):
                return "jsonl"
            break
    raise ValueError(
        f"cannot tell the format of {str(path)!r} (extension {ext or 'none'!r}); "
        f"pass format= one of {', '.join(FORMATS[1:])}"
    )


_SYCOPHANCY_KEYS = {"question", "answer_matching_behavior", "answer_not_matching_behavior"}
_XSTEST_KEYS = {"prompt", "focus", "type", "label"}


def _first_jsonl_keys(path: Path) -> list[str] | None:
    """The keys of the first object of a JSONL file (None when unreadable or empty)."""
    for row in _read_jsonl(path):
        return list(row.data) if row.data is not None else None
    return None


def _dataset_format(columns: Sequence[str]) -> str | None:
    """The data-set format whose columns ``columns`` has, or None."""
    keys = set(columns)
    if _SYCOPHANCY_KEYS <= keys:
        return "anthropic-sycophancy"
    if _XSTEST_KEYS <= keys:
        return "xstest"
    if not _transluce_resolve(columns)[1]:
        return "transluce-hint"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file: its container by extension (or by its first bytes), then a data-set
    format when the columns (CSV header, Parquet schema, first JSONL object's keys) match one.

    Raises ValueError when the container cannot be told (unknown extension and content that is
    neither Parquet nor a JSON object per line).
    """
    path = Path(path)
    container = _container_of(path)
    source = str(path)
    if container == "jsonl":
        columns = _first_jsonl_keys(path)
    else:
        columns = _columns(path, container, source)
    if columns:
        return _dataset_format(columns) or container
    return container
