"""XSTest prompts: a one-message chat with the ``focus`` trigger removed; refusal is the target."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from introspect.data.importers.containers import _Row, _RowError
from introspect.data.importers.context import _Context
from introspect.data.io import PairFileError
from introspect.data.pairs import remove_spans

XSTEST_CHOICES = ("I'm sorry", "Sure")
XSTEST_TARGET = "I'm sorry"
_XSTEST_ID_COLUMNS = ("id", "id_v2", "id_v1")
_SENTINEL = "\x00"


def _word_char(c: str) -> bool:
    """True for a character that is part of a word."""
    return c.isalnum()


def focus_spans(prompt: str, focus: str) -> list[tuple[int, int]]:
    """Where the XSTest ``focus`` occurs in ``prompt``, as (start, end) character spans.

    The focus (stripped) is matched case-insensitively. Occurrences that are whole words are
    preferred; when there are none, each occurrence is widened to the whole word(s) it lies in,
    so that "kill" in "killing time" removes "killing", not a fragment. Raises ValueError when the
    focus is empty or does not occur.
    """
    needle = focus.strip()
    if not needle:
        raise ValueError("empty 'focus' (no trigger to remove)")
    hits = [m.span() for m in re.finditer(re.escape(needle), prompt, re.IGNORECASE)]
    if not hits:
        raise ValueError(f"focus {needle!r} does not occur in the prompt")

    def cuts_word_left(s: int) -> bool:
        return s > 0 and _word_char(prompt[s - 1]) and _word_char(prompt[s])

    def cuts_word_right(e: int) -> bool:
        return e < len(prompt) and _word_char(prompt[e - 1]) and _word_char(prompt[e])

    whole = [(s, e) for s, e in hits if not cuts_word_left(s) and not cuts_word_right(e)]
    if whole:
        return whole
    widened = []
    for s, e in hits:
        while cuts_word_left(s):
            s -= 1
        while cuts_word_right(e):
            e += 1
        if not widened or s >= widened[-1][1]:
            widened.append((s, e))
    return widened


def _xstest_remove(prompt: str, spans: Sequence[tuple[int, int]]) -> tuple[list[str], str | None]:
    """The ``remove`` spans, or (when a span's text also occurs where it must stay, e.g. inside
    another word) None and the explicit x' with exactly those occurrences deleted."""
    forms = list(dict.fromkeys(prompt[s:e] for s, e in spans))
    chosen = set(spans)
    exact = all(
        (m.start(), m.end()) in chosen
        for form in forms
        for m in re.finditer(re.escape(form), prompt)
    )
    if exact:
        return forms, None
    marked, last = [], 0
    for s, e in spans:
        marked += [prompt[last:s], _SENTINEL]
        last = e
    marked.append(prompt[last:])
    return forms, remove_spans("".join(marked), [_SENTINEL])


def _xstest_check_columns(columns: Sequence[str], source: str) -> None:
    """Rejects a file without the ``prompt`` and ``focus`` columns."""
    missing = [c for c in ("prompt", "focus") if c not in columns]
    if missing:
        raise PairFileError(
            f"not an XSTest file: missing column(s) {', '.join(missing)} "
            f"(has {', '.join(columns) or 'no columns'})",
            where=source,
        )


def _xstest_convert(ctx: _Context, row: _Row) -> dict:
    """One XSTest row as a pair object (a one-message chat without the focus)."""
    data = row.data or {}
    id_column = next((c for c in _XSTEST_ID_COLUMNS if c in data), None)
    if id_column is None:
        pid = ctx.generated_id(row.number)
    else:
        pid = ctx.local_id(data[id_column], id_column, row.number)
    missing = [c for c in ("prompt", "focus") if c not in data]
    if missing:
        raise _RowError(f"missing column(s) {', '.join(missing)}", pid)
    prompt, focus = data["prompt"], data["focus"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _RowError("empty 'prompt'", pid)
    if focus is None:
        focus = ""
    if not isinstance(focus, str):
        raise _RowError(f"'focus' must be text, got {focus!r}", pid)
    try:
        spans = focus_spans(prompt, focus)
    except ValueError as exc:
        raise _RowError(str(exc), pid) from None
    forms, x_mod = _xstest_remove(prompt, spans)
    meta = {k: data[k] for k in ("type", "label", "focus", "note") if k in data}
    meta.update({k: data[k] for k in _XSTEST_ID_COLUMNS if k in data and k != id_column})
    obj: dict[str, Any] = {
        "id": pid,
        "prompt": [{"role": "user", "content": prompt}],
        "choices": list(XSTEST_CHOICES),
        "target": XSTEST_TARGET,
        "meta": meta,
    }
    if x_mod is None:
        obj["remove"] = forms
    else:
        obj["prompt_mod"] = [{"role": "user", "content": x_mod}]
        meta["removed"] = forms
    return obj
