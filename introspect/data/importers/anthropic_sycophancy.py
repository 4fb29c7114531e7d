"""Anthropic model-written-evals sycophancy rows: the user profile is the feature removed."""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Any

from introspect.data.importers.containers import _Row, _RowError
from introspect.data.importers.context import _Context, _short

#: Sentence openings that start the actual question after the user's profile (matched at a
#: sentence start, case-insensitively).
QUESTION_OPENERS = (
    "Do you agree or disagree",
    "What is your view",
    "What is your opinion",
    "What's your view",
    "What do you think",
    "If you had to choose",
    "Which of the following",
    "Which statement",
    "Which comes closest",
    "Which of these",
    "In general, would you",
    "In general, do you",
    "Would you say",
    "Would you rather",
    "Do you think",
    "Do you believe",
    "Do you feel",
    "How much",
    "How do you",
    "How would you",
    "Thinking about",
    "Overall, would you",
)

_OPTIONS_START = re.compile(r"\n[ \t]*(?:Choices:|\(A\))")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)])\s+|\n\s*")
_ADDRESSES_READER = re.compile(r"(?<![Tt]hank )\byou(?:r|rs|rself)?\b", re.IGNORECASE)
_FIRST_PERSON = re.compile(r"\bI\b|\bI'm\b|\b[Mm]y\b|\b[Mm]e\b")


def _sentence_starts(text: str) -> list[int]:
    """Where the sentences of ``text`` start, after the first."""
    return [m.end() for m in _SENTENCE_BREAK.finditer(text) if 0 < m.end() < len(text)]


def split_profile(question: str) -> tuple[str, str]:
    """Finds the user profile at the start of a sycophancy question.

    The rule, applied to the text before the options block (from the first line that starts with
    ``(A)`` or ``Choices:``; the whole text when there is none), split into sentences:

    1. ``opener``: the question starts at the first sentence that begins with one of
       :data:`QUESTION_OPENERS` ("Do you agree or disagree ...", "What is your view ...",
       "If you had to choose ...", ...);
    2. ``question``: else at the first sentence after the first one that asks something (has a
       "?") or addresses the reader ("you", "your");
    3. ``paragraph``: else after the last paragraph break (blank line).

    Everything before the question is the profile; it must be non-empty and written in the first
    person (I, my, me), otherwise this raises ValueError. Returns ``(profile, rule)`` where
    ``profile`` is an exact substring of ``question`` with surrounding whitespace stripped.
    """
    m = _OPTIONS_START.search(question)
    head = question[: m.start()] if m else question
    first = len(head) - len(head.lstrip())
    starts = sorted({first, *_sentence_starts(head)})

    found: tuple[int, str] | None = None
    for s in starts:
        sentence = head[s:].lower()
        if any(sentence.startswith(o.lower()) for o in QUESTION_OPENERS):
            found = (s, "opener")
            break
    if found is None:
        for s, e in pairwise([*starts[1:], len(head)]):
            if "?" in head[s:e] or _ADDRESSES_READER.search(head[s:e]):
                found = (s, "question")
                break
    if found is None:
        cut = head.rstrip().rfind("\n\n")
        if cut > 0:
            found = (cut, "paragraph")
    if found is None:
        raise ValueError(
            "no user profile found: no sentence before the options starts the question "
            "(e.g. 'Do you agree or disagree ...', 'What is your view ...'), asks something or "
            "addresses the reader, and there is no paragraph break"
        )
    start, rule = found
    profile = head[:start].strip()
    if not profile:
        raise ValueError("no user profile found: the question starts at the beginning of the text")
    if not _FIRST_PERSON.search(profile):
        raise ValueError(
            f"no user profile found: the text before the question ({_short(profile)!r}) is not "
            "written in the first person"
        )
    return profile, rule


def _answers(value: Any, name: str) -> list[str]:
    """An answer field as a non-empty list of non-empty strings."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(a, str) and a.strip() for a in items):
        raise _RowError(f"{name!r} must be a non-empty string or a list of them, got {value!r}")
    return items


def _sycophancy_convert(ctx: _Context, row: _Row) -> dict:
    """One sycophancy row as a pair object: x is the question, the profile is removed."""
    data = row.data or {}
    if "id" in data:
        pid = ctx.local_id(data["id"], "id", row.number)
    else:
        pid = ctx.generated_id(row.number)
    required = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
    missing = [k for k in required if k not in data]
    if missing:
        raise _RowError(f"missing field(s) {', '.join(missing)}", pid)
    question = data["question"]
    if not isinstance(question, str) or not question.strip():
        raise _RowError("'question' must be a non-empty string", pid)
    matching = _answers(data["answer_matching_behavior"], "answer_matching_behavior")
    if len(matching) != 1:
        raise _RowError(f"'answer_matching_behavior' must name one answer, got {matching!r}", pid)
    target = matching[0]
    others = _answers(data["answer_not_matching_behavior"], "answer_not_matching_behavior")
    if target in others:
        raise _RowError(f"answer {target!r} is both matching and not matching the behaviour", pid)
    try:
        profile, rule = split_profile(question)
    except ValueError as exc:
        raise _RowError(str(exc), pid) from None
    meta = {k: v for k, v in data.items() if k not in (*required, "id")}
    meta["profile_rule"] = rule
    return {
        "id": pid,
        "prompt": question,
        "remove": [profile],
        "choices": sorted(dict.fromkeys([target, *others])),
        "target": target,
        "meta": meta,
    }
