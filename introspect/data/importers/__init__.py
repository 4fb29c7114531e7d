"""Importers: turn data sets in other shapes into counterfactual pairs.

:func:`import_pairs` reads one file and returns validated :class:`~introspect.data.pairs.Pair`
records. Every row that cannot become a pair goes through the same error policy as pair files
(:class:`~introspect.data.io.ReadReport`): ``on_error="fail"`` raises
:class:`~introspect.data.io.PairFileError` naming the file, the row and the id; ``"skip"`` records a
:class:`~introspect.data.io.Skipped` and keeps every good row. No row is dropped silently.

Row numbers are 1-based file line numbers for JSONL and CSV (the CSV header is line 1; a record
with quoted multi-line cells is numbered by its first line) and 1-based row indices for Parquet
(reported as ``"file:row N"``).

Formats
-------
``jsonl`` / ``csv`` / ``parquet`` (generic)
    ``mapping`` maps pair fields (``id, prompt, remove, prompt_mod, choices, target, meta``) to
    source columns, e.g. ``{"prompt": "question", "choices": "options", "target": "answer"}``;
    fields not named map to the column of the same name, so a JSONL file already in the pair-file
    format imports as is. Source columns used by no field go into ``meta`` (an explicit ``meta``
    column wins on a name clash).

    CSV cells are text, so: ``choices`` and ``remove`` cells are a JSON array when the cell starts
    with ``[`` (``["Yes", "No"]``), otherwise a ``|``-separated list (``Yes|No``), split exactly,
    without trimming spaces (use a JSON array when a choice must contain ``|`` or leading
    spaces matter). A ``prompt``/``prompt_mod`` cell holding a JSON array of ``{"role",
    "content"}`` objects is a chat prompt, any other text is a text prompt. A ``meta`` cell is a
    JSON object. An empty cell means "no value".

``anthropic-sycophancy``
    Anthropic model-written-evals sycophancy JSONL (``question``, ``answer_matching_behavior``,
    ``answer_not_matching_behavior``; either answer may be a string or a list). The user profile
    (biography and stated opinion) is the feature removed; see :func:`split_profile` for the rule.
    ``choices`` are the matching and non-matching answers in sorted order (``" (A)", " (B)"``),
    ``target`` is the matching (sycophantic) answer.

``xstest``
    XSTest prompts (``prompt``, ``focus``, optionally ``id``/``id_v2``, ``type``, ``label``,
    ``note``). The prompt becomes a one-message chat and the ``focus`` trigger is removed: it
    is matched case-insensitively and removed as spelt in the prompt, whole words preferred,
    else widened to the word it lies in ("kill" removes "killing"; see :func:`focus_spans`).
    A row whose focus is empty or does not occur is an error. When the removed text also occurs
    inside another word ("punch" in "punching"), x' is given as ``prompt_mod`` with only the
    matched occurrence deleted, and ``meta["removed"]`` records it. ``choices`` are
    ``["I'm sorry", "Sure"]`` and ``target`` is ``"I'm sorry"`` (refusal). ``meta`` keeps
    ``type``, ``label``, ``focus`` and ``note``.

``transluce-hint``
    Transluce input-ablation MMLU-hint rows (usually Parquet). Column names are resolved through
    :data:`TRANSLUCE_ALIASES`; ``hint``, ``choices`` and a hinted prompt (``hint_user_prompt``
    or ``hint_prompt_full``) are required, and a file without them is rejected with the list of
    what is missing and the names accepted for it. x is the hinted prompt: a chat
    (``system_prompt`` + ``hint_user_prompt``) when the user-prompt column is present, else the
    fully rendered ``hint_prompt_full`` text. x' is the matching original (no-hint) prompt when
    the file has it (``prompt_mod``), else x with the hint sentence removed (the ``hint`` value
    when it is that sentence, else the ``Hint: ... answer is (X) ...`` line found in x).
    ``choices`` are the option letters ``"(A)"``, ``"(B)"``, ... (one per entry of ``choices``;
    if the file's ``choices`` are already the letter labels they are used as they are) and
    ``target`` is the hinted letter, parsed from ``I think the answer is (X)``. ``meta`` keeps
    the question, option texts, ``correct_answer``, both predictions, ``changed_pred_bc_hint``
    and the hint.

The data-set formats read JSONL, CSV or Parquet, chosen by the file's extension (or content).

Ids: the generic formats take ids from the ``id`` column (or the column mapped to it) as they
are. The data-set formats number their rows locally, so their id column's value ``v`` becomes
``f"{prefix}-{v}"``. Without an id column every format generates ``f"{prefix}-{row:06d}"`` from the
row number above. ``prefix`` is ``id_prefix`` or the file's stem. Repeated ids are row errors.

Schema problems that make a whole file unusable (a data-set format missing its required
columns, an unreadable Parquet file, a bad CSV header) raise :class:`PairFileError` naming the
file whatever ``on_error`` says.

The package holds one module a job: ``containers`` (rows out of JSONL, CSV and Parquet files),
``context`` (ids and the checks adapters share), ``generic`` (the column mapping),
``anthropic_sycophancy``, ``xstest`` and ``transluce_hint`` (one adapter a data set) and
``detect`` (format detection).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from introspect.data.importers.anthropic_sycophancy import (
    QUESTION_OPENERS,
    _sycophancy_convert,
    split_profile,
)
from introspect.data.importers.containers import (
    _CONTAINERS,
    _columns,
    _Row,
    _RowError,
    _rows,
    _where,
)
from introspect.data.importers.context import _Context
from introspect.data.importers.detect import FORMATS, _container_of, detect_format
from introspect.data.importers.generic import _generic_adapter
from introspect.data.importers.transluce_hint import (
    TRANSLUCE_ALIASES,
    _transluce_check_columns,
    _transluce_convert,
)
from introspect.data.importers.xstest import (
    XSTEST_CHOICES,
    XSTEST_TARGET,
    _xstest_check_columns,
    _xstest_convert,
    focus_spans,
)
from introspect.data.io import PairFileError, ReadReport, Skipped, check_on_error
from introspect.data.pairs import Pair, PairError

__all__ = [
    "FORMATS",
    "QUESTION_OPENERS",
    "TRANSLUCE_ALIASES",
    "XSTEST_CHOICES",
    "XSTEST_TARGET",
    "detect_format",
    "focus_spans",
    "import_pairs",
    "split_profile",
]

_Convert = Callable[[_Context, _Row], dict]

_ADAPTERS: dict[str, _Convert] = {
    "anthropic-sycophancy": _sycophancy_convert,
    "xstest": _xstest_convert,
    "transluce-hint": _transluce_convert,
}
_COLUMN_CHECKS = {"xstest": _xstest_check_columns, "transluce-hint": _transluce_check_columns}


def import_pairs(
    path: str | os.PathLike,
    *,
    format: str = "auto",
    mapping: dict[str, str] | None = None,
    on_error: str = "fail",
    report: ReadReport | None = None,
    id_prefix: str | None = None,
) -> list[Pair]:
    """Reads ``path`` in ``format`` (see the module docstring) and returns the valid pairs in
    file order.

    ``mapping`` (pair field -> source column) applies to the generic formats only; with
    ``format="auto"`` it restricts detection to the container (jsonl, csv or parquet).
    Bad rows raise :class:`PairFileError` (``on_error="fail"``) or are recorded in
    ``report.skipped`` (``"skip"``); ``report.rows`` counts the data rows read.
    """
    check_on_error(on_error)
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    report = report if report is not None else ReadReport()
    container, convert = _plan(path, format, mapping)
    ctx = _Context(path, container, id_prefix)
    return _convert_rows(path, ctx, convert, on_error, report)


def _plan(path: Path, format: str, mapping: dict[str, str] | None) -> tuple[str, _Convert]:
    """The container to read ``path`` as and the converter of its rows to pair objects.

    A data-set format's required columns are checked here, so that a file without them is
    rejected whole rather than row by row.
    """
    if format == "auto":
        format = _container_of(path) if mapping is not None else detect_format(path)
    if format in _CONTAINERS:
        return format, _generic_adapter(mapping)
    if mapping is not None:
        raise ValueError(
            f"mapping applies to the generic formats ({', '.join(_CONTAINERS)}), not to {format!r}"
        )
    source = str(path)
    container = _container_of(path)
    columns = _columns(path, container, source)  # also rejects an unreadable header or schema
    check = _COLUMN_CHECKS.get(format)
    if check is not None and columns is not None:
        check(columns, source)
    return container, _ADAPTERS[format]


def _convert_rows(
    path: Path, ctx: _Context, convert: _Convert, on_error: str, report: ReadReport
) -> list[Pair]:
    """The valid pairs of every row of ``path``, each bad row handled by the error policy."""
    source, container = str(path), ctx.container

    def bad(row: _Row, pair_id: str | None, reason: str) -> None:
        skipped = Skipped(source, row.number, pair_id, reason, row.text())
        try:
            report.handle(skipped, on_error)
        except PairFileError:
            # Same error, but a Parquet row is named "row N" rather than like a line number.
            raise PairFileError(
                reason, pair_id=pair_id, where=_where(source, container, row.number)
            ) from None

    seen: dict[str, int] = {}
    pairs: list[Pair] = []
    for row in _rows(path, container, source):
        report.rows += 1
        if row.error is not None:
            bad(row, None, row.error)
            continue
        try:
            pair = Pair.from_json(convert(ctx, row))
        except (_RowError, PairError) as exc:
            bad(row, exc.pair_id, exc.reason)
            continue
        if pair.id in seen:
            bad(
                row,
                pair.id,
                f"duplicate id (first seen at {_where(source, container, seen[pair.id])})",
            )
            continue
        seen[pair.id] = row.number
        pairs.append(pair)
    return pairs
