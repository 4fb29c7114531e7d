"""Counterfactual pairs: the record, x' construction, and validation.

A pair is one line of a pair file (JSONL)::

    {"id": "syc-0001",
     "prompt": "...text..."  |  [{"role": "user", "content": "..."}, ...],
     "remove": ["exact substring of the prompt", ...]   # or
     "prompt_mod": "...explicit x'..."  |  [messages],
     "choices": [" (A)", " (B)"], "target": " (B)",
     "meta": {...}}

x' deletes every ``remove`` span from x (in message contents for chat prompts) and tidies the
whitespace the deletion leaves, or is ``prompt_mod`` as given. Several features of one x are
several pairs, each with its own id and ``meta["x_id"]`` naming the shared x, so the extraction
engine can compute x once for all of them (:func:`ablate_each`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from introspect.errors import IntrospectError

Message = dict[str, str]
Prompt = Union[str, list[Message]]  # noqa: UP007 - a runtime alias

ROLES = ("system", "user", "assistant")


class PairError(IntrospectError, ValueError):
    """A pair that is not valid. ``where`` names the file and line when known."""

    def __init__(self, reason: str, *, pair_id: str | None = None, where: str | None = None):
        self.reason = reason
        self.pair_id = pair_id
        self.where = where
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [p for p in (self.where, f"id {self.pair_id!r}" if self.pair_id else None) if p]
        return f"{': '.join(parts)}: {self.reason}" if parts else self.reason


# --------------------------------------------------------------------------------------------
# x' construction
# --------------------------------------------------------------------------------------------

_SPACE = re.compile(r"[ \t]+")


def _join(left: str, right: str) -> str:
    """Joins the text on both sides of a deleted span, leaving one sensible separator."""
    left_ws = len(left) - len(left.rstrip())
    right_ws = len(right) - len(right.lstrip())
    gap = left[len(left) - left_ws :] + right[:right_ws]
    left, right = left[: len(left) - left_ws], right[right_ws:]
    if not left:
        return right
    if not right:
        return left
    newlines = min(gap.count("\n"), 2)
    if newlines:
        return left + "\n" * newlines + right
    if gap == "" or right[0] in ",.;:!?)]}":
        return left + right
    return left + " " + right


def remove_spans(text: str, spans: Sequence[str]) -> str:
    """Deletes every occurrence of each span (in order) and tidies the whitespace around it.

    Raises KeyError naming the first span that does not occur in the text.
    """
    for span in spans:
        if span not in text:
            raise KeyError(span)
        pieces = text.split(span)
        out = pieces[0]
        for piece in pieces[1:]:
            out = _join(out, piece)
        text = out
    return text


def _apply_to_prompt(prompt: Prompt, spans: Sequence[str]) -> Prompt:
    if isinstance(prompt, str):
        return remove_spans(prompt, spans)
    # Chat prompt: each span must occur in some message's content; delete it wherever it does.
    contents = [m["content"] for m in prompt]
    for span in spans:
        if not any(span in c for c in contents):
            raise KeyError(span)
        contents = [remove_spans(c, [span]) if span in c else c for c in contents]
    return [{**m, "content": c} for m, c in zip(prompt, contents, strict=True)]


def prompt_text(prompt: Prompt) -> str:
    """A canonical text form of a prompt (for hashing and comparison, not for the model)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"<{m['role']}>{m['content']}" for m in prompt)


# --------------------------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One (x, x') pair with the candidate continuations that define the behaviour f."""

    id: str
    prompt: Prompt
    choices: tuple[str, ...]
    target: str
    remove: tuple[str, ...] | None = None
    prompt_mod: Prompt | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def x(self) -> Prompt:
        return self.prompt

    @property
    def x_mod(self) -> Prompt:
        """x': ``prompt_mod`` if given, else the prompt with every ``remove`` span deleted."""
        if self.prompt_mod is not None:
            return self.prompt_mod
        return _apply_to_prompt(self.prompt, self.remove or ())

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def x_key(self) -> str:
        """Stable key of x: pairs with the same key share x (and its forward pass)."""
        return hashlib.sha256(prompt_text(self.prompt).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": self.id, "prompt": self.prompt}
        if self.remove is not None:
            obj["remove"] = list(self.remove)
        if self.prompt_mod is not None:
            obj["prompt_mod"] = self.prompt_mod
        obj["choices"] = list(self.choices)
        obj["target"] = self.target
        if self.meta:
            obj["meta"] = dict(self.meta)
        return obj

    @classmethod
    def from_json(cls, obj: Any, *, where: str | None = None) -> Pair:
        """Builds and validates a pair from a decoded JSON object."""
        return _parse(obj, where)

    def validate(self, *, where: str | None = None) -> Pair:
        """Checks the pair; returns it unchanged or raises :class:`PairError`."""
        return _parse(self.to_json(), where)


def ablate_each(
    x_id: str,
    prompt: Prompt,
    features: Mapping[str, Sequence[str]],
    choices: Sequence[str],
    target: str,
    meta: Mapping[str, Any] | None = None,
) -> list[Pair]:
    """One pair per feature of one x: id ``f"{x_id}/{name}"``, ``meta`` gains ``x_id`` and
    ``feature``. Each pair is validated."""
    out = []
    for name, spans in features.items():
        pair = Pair(
            id=f"{x_id}/{name}",
            prompt=prompt,
            choices=tuple(choices),
            target=target,
            remove=tuple(spans),
            meta={**(meta or {}), "x_id": x_id, "feature": name},
        )
        out.append(pair.validate())
    return out


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------

_FIELDS = {"id", "prompt", "remove", "prompt_mod", "choices", "target", "meta"}


def _check_prompt(value: Any, name: str, pid: str | None, where: str | None) -> Prompt:
    def fail(reason: str):
        raise PairError(reason, pair_id=pid, where=where)

    if isinstance(value, str):
        if not value.strip():
            fail(f"'{name}' is empty")
        return value
    if isinstance(value, list):
        if not value:
            fail(f"'{name}' is an empty list of messages")
        messages = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m:
                fail(f"'{name}[{i}]' must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                fail(f"'{name}[{i}].role' must be one of {', '.join(ROLES)}, got {m['role']!r}")
            if not isinstance(m.get("content"), str):
                fail(f"'{name}[{i}].content' must be a string")
            messages.append({"role": m["role"], "content": m["content"]})
        if not any(m["content"].strip() for m in messages):
            fail(f"'{name}' has no non-empty message")
        return messages
    fail(f"'{name}' must be a string or a list of chat messages, got {type(value).__name__}")
    raise AssertionError  # unreachable


def _parse(obj: Any, where: str | None) -> Pair:
    if not isinstance(obj, dict):
        raise PairError(f"a pair must be a JSON object, got {type(obj).__name__}", where=where)
    raw_id = obj.get("id")
    pid = raw_id if isinstance(raw_id, str) else None

    def fail(reason: str):
        raise PairError(reason, pair_id=pid, where=where)

    unknown = set(obj) - _FIELDS
    if unknown:
        fail(
            f"unknown field(s) {', '.join(sorted(map(str, unknown)))} "
            f"(allowed: {', '.join(sorted(_FIELDS))})"
        )
    for name in ("id", "prompt", "choices", "target"):
        if name not in obj:
            fail(f"missing field '{name}'")
    if not isinstance(raw_id, str) or not raw_id.strip():
        fail(f"'id' must be a non-empty string, got {raw_id!r}")
    prompt = _check_prompt(obj["prompt"], "prompt", pid, where)

    choices = obj["choices"]
    if not isinstance(choices, list) or not choices:
        fail("'choices' must be a non-empty list of strings")
    if not all(isinstance(c, str) and c for c in choices):
        fail("'choices' must contain only non-empty strings")
    if len(set(choices)) != len(choices):
        fail("'choices' contains duplicates")
    target = obj["target"]
    if not isinstance(target, str):
        fail(f"'target' must be a string, got {type(target).__name__}")
    if target not in choices:
        fail(f"'target' {target!r} is not one of the choices {choices!r}")

    has_remove, has_mod = obj.get("remove") is not None, obj.get("prompt_mod") is not None
    if has_remove == has_mod:
        fail("give exactly one of 'remove' (spans to delete from the prompt) or 'prompt_mod' (x')")
    remove = prompt_mod = None
    if has_remove:
        spans = obj["remove"]
        if isinstance(spans, str):
            spans = [spans]
        if (
            not isinstance(spans, list)
            or not spans
            or not all(isinstance(s, str) and s for s in spans)
        ):
            fail("'remove' must be a non-empty list of non-empty strings")
        remove = tuple(spans)
        try:
            x_mod = _apply_to_prompt(prompt, remove)
        except KeyError as exc:
            fail(f"'remove' span {exc.args[0]!r} is not in the prompt")
    else:
        if isinstance(prompt, str) != isinstance(obj["prompt_mod"], str):
            fail("'prompt_mod' must be of the same kind as 'prompt' (text or messages)")
        prompt_mod = _check_prompt(obj["prompt_mod"], "prompt_mod", pid, where)
        x_mod = prompt_mod
    if prompt_text(x_mod) == prompt_text(prompt):
        fail("x' is identical to x (nothing was removed)")
    if isinstance(x_mod, str) and not x_mod.strip():
        fail("x' is empty after removing the spans")

    meta = obj.get("meta", {})
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        fail(f"'meta' must be an object, got {type(meta).__name__}")
    return Pair(raw_id, prompt, tuple(choices), target, remove, prompt_mod, meta)


def check_unique(pairs: Iterable[Pair]) -> None:
    """Raises PairError on the first repeated id."""
    seen: set[str] = set()
    for p in pairs:
        if p.id in seen:
            raise PairError("duplicate id", pair_id=p.id)
        seen.add(p.id)


def dumps(pair: Pair) -> str:
    return json.dumps(pair.to_json(), ensure_ascii=False)
