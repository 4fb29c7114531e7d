"""What the verbal explainer says and is asked: the label sentences, the labels scored per pair,
the feature description and the question template.

The sentences are the exact text the model is trained on and scored with (each followed by the
tokenizer's EOS token); see :mod:`introspect.explain.verbal` for the table of labels.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from introspect.explain.verbal.explainer import VerbalConfig

__all__ = [
    "AWAY_SENTENCE",
    "BINS",
    "CHANGE_SENTENCE",
    "DEFAULT_TEMPLATE",
    "PRECURSOR_CHANGE_SENTENCE",
    "PRECURSOR_KINDS",
    "PRECURSOR_REMAIN_SENTENCE",
    "PROMPTS",
    "STYLES",
    "TOWARD_SENTENCE",
    "UNCHANGED",
    "UNCHANGED_SENTENCE",
    "UNPARSED",
    "candidate_labels",
    "feature_description",
    "label_sentence",
    "precursor_label",
    "precursor_labels",
    "split_precursor",
    "template_problems",
]

UNCHANGED = "unchanged"
UNPARSED = "unparsed"
BINS = ("unchanged", "toward", "away")
STYLES = ("choice", "binned", "precursor")
"""Label vocabularies: a change to a named choice, the three bins of Δ, or the answer that
remains or that it changes to (``"remain:<choice>"`` / ``"change:<choice>"``)."""
PROMPTS = ("followup", "same-turn")
"""Conversation formats: the answer shown and the question asked in a follow-up turn, or the
question appended to x's own (last user) turn with no answer shown."""
PRECURSOR_KINDS = ("remain", "change")

UNCHANGED_SENTENCE = "My answer would stay the same."
CHANGE_SENTENCE = "My answer would change to {choice}."
TOWARD_SENTENCE = "I would be more likely to answer {target}."
AWAY_SENTENCE = "I would be less likely to answer {target}."
PRECURSOR_REMAIN_SENTENCE = "My answer would remain {choice}."
PRECURSOR_CHANGE_SENTENCE = "My answer would change to {choice}."

DEFAULT_TEMPLATE = "If the {feature} were removed, how would your answer change?"


def precursor_label(kind: str, choice: str) -> str:
    """The ``"precursor"`` label ``"<kind>:<choice stripped>"`` (kind ``"remain"``/``"change"``)."""
    if kind not in PRECURSOR_KINDS:
        raise ValueError(f"a precursor label's kind is one of {PRECURSOR_KINDS}, got {kind!r}")
    if not isinstance(choice, str) or not choice.strip():
        raise ValueError(f"a precursor label names a non-empty choice, got {choice!r}")
    return f"{kind}:{choice.strip()}"


def split_precursor(label: Any) -> tuple[str, str] | None:
    """``(kind, choice)`` of a ``"precursor"`` label (the text before the first ``":"`` is
    ``"remain"`` or ``"change"``, the text after it a non-empty choice); None for any other."""
    if not isinstance(label, str):
        return None
    kind, sep, choice = label.partition(":")
    if not sep or kind not in PRECURSOR_KINDS or not choice:
        return None
    return kind, choice


def precursor_labels(answers_x: Sequence[str], answers_mod: Sequence[str]) -> list[str]:
    """The precursor's labels from the answers on x and on x′ (e.g. from
    :meth:`~introspect.explain.verbal.VerbalExplainer.greedy_answers`): ``"remain:X"`` where the
    two answers agree (X the answer on x), ``"change:Y"`` where they differ (Y the answer on x′);
    answers are compared, and written, with surrounding spaces stripped."""
    if len(answers_x) != len(answers_mod):
        raise ValueError(f"{len(answers_x)} answers on x but {len(answers_mod)} on x'")
    out = []
    for a, b in zip(answers_x, answers_mod, strict=True):
        if not (isinstance(a, str) and isinstance(b, str)):
            raise ValueError(f"answers must be strings, got {a!r} and {b!r}")
        if a.strip() == b.strip():
            out.append(precursor_label("remain", a))
        else:
            out.append(precursor_label("change", b))
    return out


def _stripped_choices(choices: Sequence[str]) -> list[str]:
    """The choices stripped, refused when two become one (their labels would be one label)."""
    names = [c.strip() for c in choices]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(
            f"precursor labels name each choice stripped of spaces; the choices {list(choices)} "
            "are empty or coincide once stripped"
        )
    return names


def label_sentence(label: str, choices: Sequence[str], target: str, style: str = "choice") -> str:
    """The sentence the model is trained on for ``label`` (see the package docstring)."""
    if style == "precursor":
        parts = split_precursor(label)
        if parts is None or parts[1] not in _stripped_choices(choices):
            raise ValueError(
                f"precursor labels are 'remain:<choice>' or 'change:<choice>' with a choice of "
                f"{[c.strip() for c in choices]}, got {label!r}"
            )
        kind, choice = parts
        sentence = PRECURSOR_REMAIN_SENTENCE if kind == "remain" else PRECURSOR_CHANGE_SENTENCE
        return sentence.format(choice=choice)
    if label == UNCHANGED:
        return UNCHANGED_SENTENCE
    if style == "binned":
        if label == "toward":
            return TOWARD_SENTENCE.format(target=target.strip())
        if label == "away":
            return AWAY_SENTENCE.format(target=target.strip())
        raise ValueError(f"binned labels are {BINS}, got {label!r}")
    if style != "choice":
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if label not in choices:
        raise ValueError(f"label {label!r} is neither 'unchanged' nor one of the choices {choices}")
    return CHANGE_SENTENCE.format(choice=label.strip())


def candidate_labels(choices: Sequence[str], style: str) -> tuple[str, ...]:
    """The labels scored for a pair, in tie-breaking order: ``"unchanged"`` then the choices
    (``"choice"``); the bins (``"binned"``); ``"remain:<c>"`` for every choice c in order, then
    ``"change:<c>"`` for every choice in order (``"precursor"``)."""
    if style == "binned":
        return BINS
    if style == "precursor":
        names = _stripped_choices(choices)
        return tuple(f"{k}:{c}" for k in PRECURSOR_KINDS for c in names)
    return (UNCHANGED, *choices)


def feature_description(pair: Any, config: VerbalConfig) -> str:
    """What the question calls the removed feature: ``pair.meta[config.feature_key]``
    when that holds text, else the removed spans quoted, else ``config.default_feature``."""
    if config.feature_key is not None:
        value = (pair.meta or {}).get(config.feature_key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if pair.remove:
        return "text " + " and ".join(f'"{s.strip()}"' for s in pair.remove)
    return config.default_feature


def template_problems(template: Any, prompt: str = "followup") -> list[str]:
    """What is wrong with a question template (empty when nothing): it must be a string holding
    ``{feature}`` and no placeholder other than ``{feature}`` and ``{answer}``, and ``{answer}``
    only where the conversation shows the answer (``prompt="followup"``)."""
    if not isinstance(template, str):
        return ["template must be a string"]
    problems = []
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if "feature" not in fields:
        problems.append("template must contain the placeholder {feature}")
    if fields - {"feature", "answer"}:
        problems.append(f"template may use only {{feature}} and {{answer}}, got {sorted(fields)}")
    elif "answer" in fields and prompt != "followup":
        problems.append(
            f"template uses {{answer}}, but prompt={prompt!r} shows no answer (only "
            "prompt='followup' does)"
        )
    return problems
