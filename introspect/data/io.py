"""Reading and writing pair files (JSONL), with per-line errors and an error policy.

Every problem names the file, the line and the id when there is one. With ``on_error="fail"``
the first bad line raises :class:`PairFileError`; with ``"skip"`` bad lines are collected as
:class:`Skipped` records (line, id, reason, raw text) and every good pair is kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from introspect.data.pairs import Pair, PairError, dumps

ON_ERROR = ("fail", "skip")


class PairFileError(PairError):
    """A pair file problem that stopped reading (``on_error="fail"``)."""


@dataclass(frozen=True)
class Skipped:
    """A row that was not turned into a pair, and why."""

    source: str
    line: int
    pair_id: str | None
    reason: str
    raw: str = ""
    #: How errors name the row; ``None``: ``"source:line"``.
    where: str | None = None

    @property
    def location(self) -> str:
        """Where the row is, as errors name it (``"pairs.jsonl:3"``, ``"item 3"``)."""
        return self.where if self.where is not None else f"{self.source}:{self.line}"

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "id": self.pair_id,
                "reason": self.reason, "raw": self.raw}  # fmt: skip

    def describe(self) -> str:
        who = f", id {self.pair_id!r}" if self.pair_id else ""
        return f"{self.location}{who}: {self.reason}"


@dataclass
class ReadReport:
    """What a read produced besides the pairs."""

    skipped: list[Skipped] = field(default_factory=list)
    rows: int = 0

    def handle(self, skipped: Skipped, on_error: str) -> None:
        if on_error == "fail":
            raise PairFileError(skipped.reason, pair_id=skipped.pair_id,
                                where=skipped.location)  # fmt: skip
        self.skipped.append(skipped)


def check_on_error(on_error: str) -> None:
    """Raises ValueError unless ``on_error`` is one of :data:`ON_ERROR`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def admit(obj: Any, seen: set[str], *, unit: str) -> Pair:
    """One decoded pair object (or :class:`Pair`) checked as a pair-file line is checked.

    Validates it and rejects an id already in ``seen``, which gains the id of a good pair.
    Raises :class:`PairError` without a location (the caller knows where ``obj`` came from);
    ``unit`` names what holds a pair (``"line"``, ``"item"``) in the duplicate-id message. A
    :class:`Pair` is validated through its JSON form and returned as it is.
    """
    if isinstance(obj, Pair):
        Pair.from_json(obj.to_json())
        pair = obj
    else:
        pair = Pair.from_json(obj)
    if pair.id in seen:
        raise PairError(f"duplicate id (an earlier {unit} has it)", pair_id=pair.id)
    seen.add(pair.id)
    return pair


def iter_pairs(
    path: str | os.PathLike, *, on_error: str = "fail", report: ReadReport | None = None
) -> Iterator[Pair]:
    """Streams the valid pairs of a JSONL pair file in file order.

    Memory stays flat in the file size apart from the set of ids seen (for duplicate checks).
    Bad lines raise (``fail``) or are recorded in ``report.skipped`` (``skip``).
    """
    check_on_error(on_error)
    report = report if report is not None else ReadReport()
    path = Path(path)
    source = str(path)
    seen: set[str] = set()
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 (byte {exc.start} of the line)"
                shown = raw.decode("utf-8", "replace").rstrip("\n")
                report.handle(Skipped(source, lineno, None, reason, shown), on_error)
                continue
            stripped = text.strip()
            if not stripped:
                continue
            report.rows += 1
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
                report.handle(Skipped(source, lineno, None, reason, stripped), on_error)
                continue
            try:
                pair = admit(obj, seen, unit="line")
            except PairError as exc:
                report.handle(Skipped(source, lineno, exc.pair_id, exc.reason, stripped), on_error)
                continue
            yield pair


def read_pairs(path: str | os.PathLike, *, on_error: str = "fail") -> tuple[list[Pair], ReadReport]:
    """All valid pairs of a pair file, and the report of what was skipped.

    >>> pairs, report = read_pairs("pairs.jsonl", on_error="skip")  # doctest: +SKIP
    >>> [s.describe() for s in report.skipped]  # doctest: +SKIP
    """
    report = ReadReport()
    pairs = list(iter_pairs(path, on_error=on_error, report=report))
    return pairs, report


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> int:
    """Streams ``lines`` (one per line, UTF-8) into ``path`` atomically; returns their count."""
    from introspect._io import open_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_atomic(path) as f:
        for line in lines:
            f.write(line.encode("utf-8") + b"\n")
            n += 1
    return n


def write_pairs(path: str | os.PathLike, pairs: Iterable[Pair]) -> int:
    """Writes pairs as JSONL atomically (a reader never sees a half-written file).

    Raises PairError on a repeated id; returns the number of pairs written.

    >>> from introspect.data.tasks import generate
    >>> write_pairs("syc.jsonl", generate("sycophancy", 100, seed=0))  # doctest: +SKIP
    100
    """
    seen: set[str] = set()

    def lines():
        for p in pairs:
            if p.id in seen:
                raise PairError("duplicate id", pair_id=p.id)
            seen.add(p.id)
            yield dumps(p)

    return _atomic_write_lines(Path(path), lines())


def write_skipped(path: str | os.PathLike, skipped: Iterable[Skipped]) -> int:
    """Writes the skipped-row report as JSONL (source, line, id, reason, raw)."""
    return _atomic_write_lines(
        Path(path), (json.dumps(s.to_json(), ensure_ascii=False) for s in skipped)
    )
