"""Transluce input-ablation MMLU-hint rows: the hint sentence is the feature removed, the hinted
option letter is the target."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from introspect.data.importers.containers import _Row, _RowError
from introspect.data.importers.context import _Context, _is_blank, _short
from introspect.data.io import PairFileError

#: Canonical Transluce field -> accepted column names, first match wins.
TRANSLUCE_ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "qid", "question_id"),
    "question": ("question",),
    "choices": ("choices", "options"),
    "correct_answer": ("correct_answer", "answer", "gold_answer"),
    "zeroshot_prediction": (
        "zeroshot_prediction",
        "zero_shot_prediction",
        "no_hint_prediction",
        "original_prediction",
    ),
    "random_hint_prediction": ("random_hint_prediction", "hint_prediction", "hinted_prediction"),
    "changed_pred_bc_hint": ("changed_pred_bc_hint", "changed", "changed_prediction"),
    "hint": ("hint", "hint_text", "hint_sentence"),
    "system_prompt": ("system_prompt", "system"),
    "hint_user_prompt": ("hint_user_prompt", "hinted_user_prompt", "user_prompt_with_hint"),
    "original_user_prompt": (
        "original_user_prompt",
        "no_hint_user_prompt",
        "user_prompt_without_hint",
    ),
    "hint_prompt_full": ("hint_prompt_full", "hint_prompt", "hinted_prompt", "prompt_with_hint"),
    "original_prompt_full": (
        "original_prompt_full",
        "original_prompt",
        "no_hint_prompt",
        "prompt_without_hint",
    ),
}

# Required: each entry is satisfied by any one of its canonical fields.
_TRANSLUCE_REQUIRED = (("hint",), ("choices",), ("hint_user_prompt", "hint_prompt_full"))
_TRANSLUCE_META = (
    "question",
    "correct_answer",
    "zeroshot_prediction",
    "random_hint_prediction",
    "changed_pred_bc_hint",
    "hint",
)

_HINT_LETTER = re.compile(r"answer is\s*\(?\s*([A-Za-z])\s*\)", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^\s*\(?\s*([A-Za-z])\s*\)?\s*$")
_LETTER_LABEL = re.compile(r"^\s*\(?([A-Z])\)?\s*$")
_HINT_SENTENCE = re.compile(r"Hint:[^\n]*?answer is\s*\(?\s*[A-Za-z]\s*\)[^\n]*", re.IGNORECASE)


def _transluce_resolve(columns: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(canonical -> column, missing requirements described with their aliases)."""
    present = set(columns)
    resolved = {}
    for name, aliases in TRANSLUCE_ALIASES.items():
        hit = next((a for a in aliases if a in present), None)
        if hit is not None:
            resolved[name] = hit
    missing = []
    for group in _TRANSLUCE_REQUIRED:
        if not any(name in resolved for name in group):
            alts = [a for name in group for a in TRANSLUCE_ALIASES[name]]
            missing.append(" or ".join(alts))
    return resolved, missing


def _transluce_missing_message(missing: list[str]) -> str:
    """The error for a file or row without the required fields."""
    return (
        "not a Transluce hint file: missing "
        + "; ".join(f"[{m}]" for m in missing)
        + " (column names accepted for each field are listed in TRANSLUCE_ALIASES)"
    )


def _transluce_check_columns(columns: Sequence[str], source: str) -> None:
    """Rejects a file whose columns lack a required field."""
    _, missing = _transluce_resolve(columns)
    if missing:
        raise PairFileError(_transluce_missing_message(missing), where=source)


def _letter_choices(options: Any, pid: str) -> list[str]:
    """The option letters ``"(A)"``, ``"(B)"``, ... for the options (or the labels as given)."""
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError:
            raise _RowError("'choices' must be a list (or a JSON array)", pid) from None
    if not isinstance(options, (list, tuple)) or not options:
        raise _RowError(f"'choices' must be a non-empty list, got {options!r}", pid)
    if len(options) > 26:
        raise _RowError(f"'choices' has {len(options)} options; at most 26 are lettered", pid)
    letters = [chr(ord("A") + i) for i in range(len(options))]
    labels = [_LETTER_LABEL.match(o) if isinstance(o, str) else None for o in options]
    if all(m is not None and m.group(1) == c for m, c in zip(labels, letters, strict=True)):
        return list(options)  # already the letter labels "A", "(B)", " C", ...: keep them
    return [f"({c})" for c in letters]


def _hinted_letter(hint: str, x: str, pid: str) -> tuple[str, str | None]:
    """The hinted option letter, and the hint sentence as it stands in the prompt ``x`` (None
    when it is not there). ``hint`` is a whole sentence or just the letter ("(C)"); in the
    latter case the sentence (and, failing the hint, the letter) is found in ``x``."""
    m = _HINT_LETTER.search(hint) or _BARE_LETTER.match(hint)
    sentence = None
    if _HINT_LETTER.search(hint) and hint.strip() in x:  # a whole hint sentence, not "(C)"
        sentence = hint.strip()
    else:
        found = _HINT_SENTENCE.search(x)
        sentence = found.group(0).strip() if found else None
        if m is None and found is not None:
            m = _HINT_LETTER.search(found.group(0))
    if m is None:
        raise _RowError(
            f"cannot parse the hinted answer from hint {_short(hint)!r} "
            "(expected 'I think the answer is (X)')",
            pid,
        )
    return m.group(1).upper(), sentence


def _transluce_convert(ctx: _Context, row: _Row) -> dict:
    """One Transluce row as a pair object (see the package docstring for the rule)."""
    data = row.data or {}
    cols, missing = _transluce_resolve(list(data))
    value = {name: data[col] for name, col in cols.items()}
    if "id" in value:
        pid = ctx.local_id(value["id"], cols["id"], row.number)
    else:
        pid = ctx.generated_id(row.number)
    if missing:
        raise _RowError(_transluce_missing_message(missing), pid)

    chat = not _is_blank(value.get("hint_user_prompt"))
    x_key, mod_key = (
        ("hint_user_prompt", "original_user_prompt")
        if chat
        else ("hint_prompt_full", "original_prompt_full")
    )
    x = value.get(x_key)
    if not isinstance(x, str) or not x.strip():
        raise _RowError("the hinted prompt is empty", pid)

    hint = value["hint"]
    hint = hint if isinstance(hint, str) else ("" if hint is None else str(hint))
    letter, sentence = _hinted_letter(hint, x, pid)

    choices = _letter_choices(value["choices"], pid)
    target = next((c for c in choices if _LETTER_LABEL.match(c).group(1) == letter), None)
    if target is None:
        raise _RowError(f"hinted answer ({letter}) is not one of the choices {choices!r}", pid)

    system = value.get("system_prompt")

    def render(user: str) -> Any:
        if not chat:
            return user
        msgs = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
        return [*msgs, {"role": "user", "content": user}]

    obj: dict[str, Any] = {"id": pid, "prompt": render(x), "choices": choices, "target": target}
    original = value.get(mod_key)
    if isinstance(original, str) and original.strip():
        obj["prompt_mod"] = render(original)
    elif sentence is not None:
        obj["remove"] = [sentence]
    else:
        raise _RowError(
            f"the hint {_short(hint)!r} is not in the prompt and the file has no "
            "original (no-hint) prompt",
            pid,
        )
    meta = {name: value[name] for name in _TRANSLUCE_META if name in value}
    if "choices" in value:
        meta["options"] = value["choices"]
    obj["meta"] = meta
    return obj
