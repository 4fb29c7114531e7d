"""What the verbal explainer says and is asked: the label sentences, the labels scored per pair,
the feature description and the follow-up question template.

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
    "STYLES",
    "TOWARD_SENTENCE",
    "UNCHANGED",
    "UNCHANGED_SENTENCE",
    "UNPARSED",
    "candidate_labels",
    "feature_description",
    "label_sentence",
    "template_problems",
]

UNCHANGED = "unchanged"
UNPARSED = "unparsed"
BINS = ("unchanged", "toward", "away")
STYLES = ("choice", "binned")
"""Label vocabularies: a change to a named choice, or the three bins of Δ."""

UNCHANGED_SENTENCE = "My answer would stay the same."
CHANGE_SENTENCE = "My answer would change to {choice}."
TOWARD_SENTENCE = "I would be more likely to answer {target}."
AWAY_SENTENCE = "I would be less likely to answer {target}."

DEFAULT_TEMPLATE = "If the {feature} were removed, how would your answer change?"


def label_sentence(label: str, choices: Sequence[str], target: str, style: str = "choice") -> str:
    """The sentence the model is trained on for ``label`` (see the package docstring)."""
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
    """The labels scored for a pair, in tie-breaking order."""
    return BINS if style == "binned" else (UNCHANGED, *choices)


def feature_description(pair: Any, config: VerbalConfig) -> str:
    """What the follow-up question calls the removed feature: ``pair.meta[config.feature_key]``
    when that holds text, else the removed spans quoted, else ``config.default_feature``."""
    if config.feature_key is not None:
        value = (pair.meta or {}).get(config.feature_key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    if pair.remove:
        return "text " + " and ".join(f'"{s.strip()}"' for s in pair.remove)
    return config.default_feature


def template_problems(template: Any) -> list[str]:
    """What is wrong with a follow-up question template (empty when nothing): it must be a string
    holding ``{feature}`` and no placeholder other than ``{feature}`` and ``{answer}``."""
    if not isinstance(template, str):
        return ["template must be a string"]
    problems = []
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if "feature" not in fields:
        problems.append("template must contain the placeholder {feature}")
    if fields - {"feature", "answer"}:
        problems.append(f"template may use only {{feature}} and {{answer}}, got {sorted(fields)}")
    return problems
