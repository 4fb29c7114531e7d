"""Reading labels: the label a free-text explanation states (:func:`parse_explanation`), and the
labels in a style from the labels given to fit: numeric Δ (:func:`labels_from_delta`) or names
(:func:`labels_from_names`, a choice matched by :func:`canonical_choice`; under ``"precursor"``
``"remain:<choice>"``/``"change:<choice>"``, the choice matched the same way).

Text is compared case-folded, with white space folded, curly apostrophes made straight,
``<<<answer: ...>>>`` markers dropped and spaces inside brackets removed; a choice matches by
its text, by the text inside its brackets, or (a single letter or digit) with brackets added.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from introspect.explain.verbal.sentences import (
    BINS,
    UNCHANGED,
    UNPARSED,
    precursor_label,
    split_precursor,
)

__all__ = [
    "canonical_choice",
    "choice_keys",
    "labels_from_delta",
    "labels_from_names",
    "parse_explanation",
]

_PAREN = re.compile(r"\(\s*([^()]*?)\s*\)")
_SPACE = re.compile(r"\s+")
_UNCHANGED_CUES = [
    re.compile(p)
    for p in (
        r"\b(?:stay|stays|remain|remains|be)\s+(?:exactly\s+)?(?:the\s+)?(?:same|unchanged)\b",
        r"\bunchanged\b",
        r"\bnot\s+(?:be\s+)?change[ds]?\b",
        r"n't\s+(?:be\s+)?change[ds]?\b",
        r"\bno\s+change\b",
        r"\bsame\s+answer\b",
    )
]
_CHANGE_CUE = re.compile(
    r"\b(?:change|changes|changed|switch|switches|switched|flip|flips|flipped)\s+to\s+(?=(.*))"
)
_SOFT_CUE = re.compile(r"\bwould\s+(?:now\s+|instead\s+)?be\s+(?=(.*))")
_REMAIN_CUE = re.compile(r"\b(?:remain|remains|stay|stays)\s+(?:at\s+|as\s+)?(?=(.*))")
_BIN_CUES = [
    (re.compile(r"\bmore\s+likely\b"), "toward"),
    (re.compile(r"\btowards?\b"), "toward"),
    (re.compile(r"\bless\s+likely\b"), "away"),
    (re.compile(r"\baway\s+from\b"), "away"),
]
_LEAD = re.compile(r"^(?:the\s+)?(?:answer|option|choice)\b\s*:?\s*")
_CONFLICT = object()


def _norm(text: str) -> str:
    text = text.casefold().replace("\u2019", "'")
    text = re.sub(r"<<<\s*answer\s*:\s*", "", text).replace(">>>", "")
    text = _PAREN.sub(r"(\1)", text)
    text = re.sub(r"\(\s+", "(", text)
    return _SPACE.sub(" ", text).strip()


def choice_keys(choice: str) -> list[str]:
    """The normalised forms a choice may be written in (none for an empty choice)."""
    key = _norm(choice).rstrip(".").strip()
    if not key:
        return []
    keys = [key]
    inner = re.fullmatch(r"\((.+)\)", key)
    if inner:
        keys.append(inner.group(1))
    elif re.fullmatch(r"[a-z0-9]", key):
        keys.append(f"({key})")
    return keys


def _match_choice(rest: str, choices: Sequence[str]) -> Any:
    """The choice ``rest`` starts with; None when none does; _CONFLICT when two do equally."""
    rest = _LEAD.sub("", rest.strip())
    # An unclosed bracket ("(b" from a cut-off generation) still names b.
    variants = [rest, rest[1:]] if rest.startswith("(") else [rest]
    best_len, best = 0, set()
    for c in choices:
        for key in choice_keys(c):
            end = len(key)
            for r in variants:
                if r.startswith(key) and (end == len(r) or not r[end].isalnum()):
                    if end > best_len:
                        best_len, best = end, {c}
                    elif end == best_len:
                        best.add(c)
    if not best:
        return None
    return best.pop() if len(best) == 1 else _CONFLICT


def _stated_labels(t: str, choices: Sequence[str]) -> set[Any]:
    """Every label the normalised text ``t`` states; _CONFLICT for a change to no single
    choice."""
    found: set[Any] = set()
    if any(p.search(t) for p in _UNCHANGED_CUES):
        found.add(UNCHANGED)
    for m in _CHANGE_CUE.finditer(t):
        hit = _match_choice(m.group(1), choices)
        found.add(_CONFLICT if hit is None else hit)
    for m in _SOFT_CUE.finditer(t):
        hit = _match_choice(m.group(1), choices)
        if hit is not None:
            found.add(hit)
    for pattern, label in _BIN_CUES:
        if pattern.search(t):
            found.add(label)
    return found


def _stated_precursor(t: str, choices: Sequence[str]) -> set[Any]:
    """Every precursor label the normalised text ``t`` states (a choice it remains at or changes
    to); _CONFLICT for a change to no single choice, or for an unchanged answer that names no
    choice."""
    found: set[Any] = set()
    for kind, cue in (("remain", _REMAIN_CUE), ("change", _CHANGE_CUE)):
        for m in cue.finditer(t):
            hit = _match_choice(m.group(1), choices)
            if hit is None and kind == "remain":
                continue  # "remain the same", "stay unchanged": names no choice
            found.add(_CONFLICT if hit is None or hit is _CONFLICT else (kind, hit))
    if any(p.search(t) for p in _UNCHANGED_CUES) and not any(
        f is not _CONFLICT and f[0] == "remain" for f in found
    ):
        found.add(_CONFLICT)  # "stays the same" names no choice (and contradicts a change)
    return found


def parse_explanation(text: Any, choices: Iterable[str], style: str | None = None) -> str:
    """The label an explanation states: ``"unchanged"``, one of ``choices`` (as given),
    ``"toward"``/``"away"``, or ``"unparsed"`` when the text states none, several different ones,
    or a change to something that is not a choice. ``style`` (``"choice"``/``"binned"``) restricts
    the labels accepted; None accepts both vocabularies. ``style="precursor"`` reads the
    precursor's sentences instead: ``"remain:<c>"`` (the answer would remain, stay, at c) or
    ``"change:<c>"`` (c stripped), else ``"unparsed"``. Never raises on odd input."""
    if not isinstance(text, str):
        return UNPARSED
    try:
        choices = [c for c in choices if isinstance(c, str)]
    except TypeError:
        choices = []
    t = _norm(text)
    if not t:
        return UNPARSED
    if style == "precursor":
        stated = _stated_precursor(t, choices)
        if len(stated) != 1 or _CONFLICT in stated:
            return UNPARSED
        kind, choice = stated.pop()
        try:
            return precursor_label(kind, choice)
        except ValueError:
            return UNPARSED
    found = _stated_labels(t, choices)
    if len(found) != 1:
        return UNPARSED
    label = found.pop()
    if label is _CONFLICT:
        return UNPARSED
    if style == "choice" and label in ("toward", "away") and label not in choices:
        return UNPARSED
    if style == "binned" and label not in BINS:
        return UNPARSED
    return label


def canonical_choice(label: str, choices: Sequence[str]) -> str | None:
    """The one choice ``label`` names, as given in ``choices`` (the label itself, or a choice
    written alike up to case, spaces and brackets); None when it names none or several."""
    if label in choices:
        return label
    keys = set(choice_keys(label))
    hits = [c for c in choices if keys & set(choice_keys(c))]
    return hits[0] if len(hits) == 1 else None


def labels_from_delta(
    pairs: Sequence[Any], values: np.ndarray, style: str, threshold: float
) -> list[str]:
    """Labels in ``style`` from numeric Δ binned at ``threshold``; under ``"choice"`` toward is
    the target and away the other of exactly two choices. ``"precursor"`` labels name the
    answers themselves, which Δ does not give: refused."""
    from introspect.evaluation.metrics import bin_delta

    if style == "precursor":
        raise ValueError(
            "labels='precursor' needs the labels 'remain:<choice>' / 'change:<choice>', not "
            "numeric Δ: build them with precursor_labels(ex.greedy_answers(pairs, side='x'), "
            "ex.greedy_answers(pairs, side='mod'))"
        )

    bins = bin_delta(values.astype(np.float64), float(threshold))
    out = []
    for p, b in zip(pairs, bins, strict=True):
        if style == "binned" or b == UNCHANGED:
            out.append(str(b))
        elif b == "toward":
            out.append(p.target)
        else:
            others = [c for c in p.choices if c != p.target]
            if len(p.choices) != 2:
                raise ValueError(
                    f"pair {p.id!r}: Δ below -threshold means 'away from the target', "
                    f"which names no single choice among {len(p.choices)}; use "
                    "labels='binned' or give the answers without the feature as labels"
                )
            out.append(others[0])
    return out


def labels_from_names(pairs: Sequence[Any], values: Sequence[Any], style: str) -> list[str]:
    """Categorical labels checked against ``style``, a choice as the pair spells it (under
    ``"precursor"``: ``"<kind>:<choice stripped>"``)."""
    out = []
    for p, v in zip(pairs, values, strict=True):
        if not isinstance(v, str):
            raise ValueError(f"pair {p.id!r}: label {v!r} is neither a number nor a string")
        if style == "precursor":
            parts = split_precursor(v.strip())
            hit = None if parts is None else canonical_choice(parts[1].strip(), p.choices)
            if hit is None:
                allowed = [f"{k}:{c.strip()}" for k in ("remain", "change") for c in p.choices]
                raise ValueError(
                    f"pair {p.id!r}: label {v!r} is not one of {allowed} (labels='precursor')"
                )
            out.append(precursor_label(parts[0], hit))
            continue
        if v == UNCHANGED or (style == "binned" and v in BINS):
            out.append(v)
            continue
        hit = canonical_choice(v, p.choices) if style == "choice" else None
        if hit is None:
            allowed = BINS if style == "binned" else (UNCHANGED, *p.choices)
            raise ValueError(
                f"pair {p.id!r}: label {v!r} is not one of {list(allowed)} (labels={style!r})"
            )
        out.append(hit)
    return out
