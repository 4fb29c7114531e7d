"""Rows out of JSONL, CSV and Parquet files, with the row number each error is reported at.

A row that cannot be read at all (bad UTF-8 or JSON, a malformed CSV record) still comes out, as
a :class:`_Row` with ``data=None`` and ``error`` set, so that the caller's error policy sees it.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from introspect.data.io import PairFileError

_CONTAINERS = ("jsonl", "csv", "parquet")


class _RowError(Exception):
    """A row that cannot become a pair (reason, and the id when one is known)."""

    def __init__(self, reason: str, pair_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.pair_id = pair_id


@dataclass
class _Row:
    """One data row of a file, as read, with the number errors name it by."""

    number: int  # line number (JSONL, CSV) or 1-based row index (Parquet)
    data: dict[str, Any] | None  # None when the row could not be read at all
    raw: str | None = None  # the source text; None: rendered from data on demand
    error: str | None = None

    def text(self) -> str:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.data, ensure_ascii=False, default=str)


def _where(source: str, container: str, number: int) -> str:
    """How errors name a row: ``"file:N"`` for a line, ``"file:row N"`` for a Parquet row."""
    return f"{source}:row {number}" if container == "parquet" else f"{source}:{number}"


def _read_jsonl(path: Path) -> Iterator[_Row]:
    """The rows of a JSONL file, one an object line; blank lines are passed over."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                shown = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield _Row(lineno, None, shown, f"not valid UTF-8 (byte {exc.start} of the line)")
                continue
            stripped = text.strip()
            if not stripped:
                continue
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as exc:
                yield _Row(
                    lineno, None, stripped, f"not valid JSON ({exc.msg} at column {exc.colno})"
                )
                continue
            if not isinstance(obj, dict):
                reason = f"a row must be a JSON object, got {type(obj).__name__}"
                yield _Row(lineno, None, stripped, reason)
                continue
            yield _Row(lineno, obj, stripped)


class _LineTap:
    """Feeds lines to csv.reader and remembers them, so each record's raw text is known."""

    def __init__(self, lines):
        self._lines = iter(lines)
        self._taken: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self._taken.append(line)
        return line

    def take(self) -> str:
        text = "".join(self._taken)
        self._taken.clear()
        return text.rstrip("\r\n")


def _csv_header(path: Path, source: str) -> list[str]:
    """The CSV file's header (checked); ``[]`` for an empty file."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        try:
            return _check_header(next(csv.reader(f), []), source)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise PairFileError(
                f"cannot read the CSV header ({exc})", where=f"{source}:1"
            ) from None


def _check_header(header: list[str], source: str) -> list[str]:
    """Rejects a header with an empty or repeated column name (the whole file is unusable)."""
    if not header:
        return header
    blank = [i + 1 for i, name in enumerate(header) if not name.strip()]
    if blank:
        raise PairFileError(
            f"CSV header has an empty column name (column {blank[0]})", where=f"{source}:1"
        )
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
        raise PairFileError(
            f"CSV header repeats column(s) {', '.join(map(repr, dupes))}", where=f"{source}:1"
        )
    return header


def _read_csv(path: Path, source: str) -> Iterator[_Row]:
    """The records of a CSV file after its header, each numbered by its first line."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        tap = _LineTap(f)
        reader = csv.reader(tap)
        try:
            header = _check_header(next(reader, []), source)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise PairFileError(
                f"cannot read the CSV header ({exc})", where=f"{source}:1"
            ) from None
        if not header:
            return
        tap.take()
        last = reader.line_num  # the last line of the previous record
        while True:
            start = last + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                last = reader.line_num
                yield _Row(start, None, tap.take(), f"malformed CSV ({exc})")
                continue
            except UnicodeDecodeError as exc:
                raise PairFileError(
                    f"not valid UTF-8 ({exc.reason})", where=f"{source}:{start}"
                ) from None
            last = reader.line_num
            raw = tap.take()
            if not cells or (len(cells) == 1 and not cells[0].strip() and len(header) > 1):
                continue  # a blank line
            if len(cells) != len(header):
                reason = f"malformed CSV row: {len(cells)} field(s), the header has {len(header)}"
                yield _Row(start, None, raw, reason)
                continue
            yield _Row(start, dict(zip(header, cells, strict=True)), raw)


def _parquet_module():
    """``pyarrow.parquet``, or ImportError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "reading Parquet files needs pyarrow, an optional dependency: pip install pyarrow"
        ) from None
    return pq


def _open_parquet(path: Path, source: str):
    """The Parquet file, or PairFileError when it cannot be read as one."""
    pq = _parquet_module()
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise PairFileError(f"not a readable Parquet file ({exc})", where=source) from None


def _read_parquet(path: Path, source: str) -> Iterator[_Row]:
    """The rows of a Parquet file, numbered from 1, read in batches."""
    pf = _open_parquet(path, source)
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for data in batch.to_pylist():
            n += 1
            yield _Row(n, data)


def _columns(path: Path, container: str, source: str) -> list[str] | None:
    """The column names when the container declares them (CSV, Parquet), else None."""
    if container == "csv":
        return _csv_header(path, source)
    if container == "parquet":
        return list(_open_parquet(path, source).schema_arrow.names)
    return None


def _rows(path: Path, container: str, source: str) -> Iterator[_Row]:
    """The rows of ``path`` read as ``container``."""
    if container == "jsonl":
        return _read_jsonl(path)
    if container == "csv":
        return _read_csv(path, source)
    return _read_parquet(path, source)
