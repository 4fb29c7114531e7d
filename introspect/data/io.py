"""Reading and writing pair files (JSONL), with per-line errors and an error policy.

Every problem names the file, the line and the id when there is one. With ``on_error="fail"``
the first bad line raises :class:`PairFileError`; with ``"skip"`` bad lines are collected as
:class:`Skipped` records (line, id, reason, raw text) and every good pair is kept.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

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

    def to_json(self) -> dict:
        return {"source": self.source, "line": self.line, "id": self.pair_id,
                "reason": self.reason, "raw": self.raw}  # fmt: skip

    def describe(self) -> str:
        who = f", id {self.pair_id!r}" if self.pair_id else ""
        return f"{self.source}:{self.line}{who}: {self.reason}"


@dataclass
class ReadReport:
    """What a read produced besides the pairs."""

    skipped: list[Skipped] = field(default_factory=list)
    rows: int = 0

    def handle(self, skipped: Skipped, on_error: str) -> None:
        if on_error == "fail":
            raise PairFileError(skipped.reason, pair_id=skipped.pair_id,
                                where=f"{skipped.source}:{skipped.line}")  # fmt: skip
        self.skipped.append(skipped)


class _Checker:
    """The checks every pair row gets, whatever it came from: the schema (:meth:`Pair.from_json`)
    and ids unique over the whole input. Bad rows raise (``fail``) or go to ``report``
    (``skip``), named by ``source`` and their number there."""

    def __init__(self, source: str, on_error: str, report: ReadReport | None):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.source, self.on_error = source, on_error
        self.report = report if report is not None else ReadReport()
        self.seen: set[str] = set()

    def skip(self, number: int, pair_id: str | None, reason: str, raw: str) -> None:
        self.report.handle(Skipped(self.source, number, pair_id, reason, raw), self.on_error)

    def check(self, number: int, obj: object, raw: str) -> Pair | None:
        """The pair of one row (a parsed JSON object or a :class:`Pair`), or None if skipped."""
        if isinstance(obj, Pair):
            pair = obj
        else:
            try:
                pair = Pair.from_json(obj)
            except PairError as exc:
                self.skip(number, exc.pair_id, exc.reason, raw)
                return None
        if pair.id in self.seen:
            self.skip(number, pair.id, "duplicate id (an earlier line has it)", raw)
            return None
        self.seen.add(pair.id)
        return pair


def iter_pairs(
    path: str | os.PathLike, *, on_error: str = "fail", report: ReadReport | None = None
) -> Iterator[Pair]:
    """Streams the valid pairs of a JSONL pair file in file order.

    Memory stays flat in the file size apart from the set of ids seen (for duplicate checks).
    Bad lines raise (``fail``) or are recorded in ``report.skipped`` (``skip``).
    """
    path = Path(path)
    checker = _Checker(str(path), on_error, report)
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not valid UTF-8 (byte {exc.start} of the line)"
                checker.skip(lineno, None, reason, raw.decode("utf-8", "replace").rstrip("\n"))
                continue
            stripped = text.strip()
            if not stripped:
                continue
            checker.report.rows += 1
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as exc:
                reason = f"not valid JSON ({exc.msg} at column {exc.colno})"
                checker.skip(lineno, None, reason, stripped)
                continue
            pair = checker.check(lineno, obj, stripped)
            if pair is not None:
                yield pair


def iter_coerced(
    items: Iterable[Pair | Mapping], *, on_error: str = "fail", report: ReadReport | None = None
) -> Iterator[Pair]:
    """Streams pairs from :class:`Pair` objects or dicts in the pair-file schema, each dict
    validated exactly as :func:`iter_pairs` validates a line (and ids unique over the whole
    input); a problem names the item's 1-based position (``item K``) and its id."""
    checker = _Checker("item", on_error, report)
    for k, item in enumerate(items, start=1):
        checker.report.rows += 1
        if not isinstance(item, (Pair, Mapping)):
            reason = f"expected a Pair or a dict, not {type(item).__name__}"
            checker.skip(k, None, reason, repr(item)[:200])
            continue
        # A Pair is checked in its pair-file form too: it may have been built by hand.
        raw = dumps(item) if isinstance(item, Pair) else None
        obj = json.loads(raw) if raw is not None else dict(item)
        if raw is None:
            raw = json.dumps(obj, ensure_ascii=False, default=str)
        pair = checker.check(k, obj, raw)
        if pair is not None:
            yield pair


def coerce_pairs(
    items: Iterable[Pair | Mapping], *, on_error: str = "fail", report: ReadReport | None = None
) -> list[Pair]:
    """All valid pairs of ``items`` (see :func:`iter_coerced`), for code that builds pairs
    itself rather than writing a pair file.

    >>> from introspect.data import coerce_pairs
    >>> pairs = coerce_pairs([{"id": "a", "prompt": "Is it (A) or (B)? I think (B).",
    ...                        "remove": ["I think (B)."], "choices": ["(A)", "(B)"],
    ...                        "target": "(B)"}])
    >>> pairs[0].x_mod
    'Is it (A) or (B)?'
    """
    return list(iter_coerced(items, on_error=on_error, report=report))


def read_pairs(path: str | os.PathLike, *, on_error: str = "fail") -> tuple[list[Pair], ReadReport]:
    """All valid pairs of a pair file, and the report of what was skipped.

    >>> pairs, report = read_pairs("pairs.jsonl", on_error="skip")  # doctest: +SKIP
    >>> [s.describe() for s in report.skipped]  # doctest: +SKIP
    """
    report = ReadReport()
    pairs = list(iter_pairs(path, on_error=on_error, report=report))
    return pairs, report


def _atomic_write_lines(path: Path, lines: Iterable[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line)
                f.write("\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
