"""Prompts: the text a model is fed for a plain string or a list of chat messages, and the plain
transcript template that lets base models (which have no chat template) read messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from introspect.models.errors import NoChatTemplateError


def format_prompt(tokenizer: Any, prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The text to feed the model: a string is returned as is; a list of ``{"role", "content"}``
    messages goes through the tokenizer's chat template, ending with the assistant's turn
    (``add_generation_prompt=True``). The template writes the special tokens itself, so tokenize
    the result with ``add_special_tokens=False``.

    Raises :class:`NoChatTemplateError` if messages are given and the tokenizer has no template.
    """
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (bytes, Mapping)) or not isinstance(prompt, Sequence):
        raise TypeError(
            "prompt must be a string or a list of {'role': ..., 'content': ...} messages, "
            f"not {type(prompt).__name__}"
        )
    messages = list(prompt)
    if not messages:
        raise ValueError("the prompt is an empty list of messages")
    for i, m in enumerate(messages):
        if (
            not isinstance(m, Mapping)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            raise ValueError(f"message {i} must be a mapping with string 'role' and 'content'")
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(
            "this model's tokenizer has no chat template, and a list of chat messages needs one; "
            "pass the prompt as plain text instead, use a chat model (e.g. smollm2-135m), or read "
            "the messages as a plain transcript (--chat-template plain, or "
            "introspect.models.use_plain_chat_template)"
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], add_generation_prompt=True, tokenize=False
    )
    if not isinstance(text, str):
        raise TypeError(f"the chat template returned {type(text).__name__}, not text")
    return text


# A transcript for base models, which have no chat template: the system text, then
# ``User: ...`` and ``Assistant: ...`` turns, ending with ``Assistant:`` for the generation
# prompt. It starts with the tokenizer's BOS token, as the tokenizer would add it to plain text.
PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
    "{% else %}Assistant: {{ m['content'] }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


CHAT_TEMPLATE_CHOICES = ("model", "plain", "auto")


def _plain_wanted(tokenizer: Any, mode: str) -> tuple[bool, bool]:
    """Whether ``mode`` asks for the plain transcript on this tokenizer, and whether the
    tokenizer has a template of its own; raises ValueError for an unknown mode."""
    if mode not in CHAT_TEMPLATE_CHOICES:
        raise ValueError(f"chat template mode must be one of {CHAT_TEMPLATE_CHOICES}, not {mode!r}")
    has_own = bool(getattr(tokenizer, "chat_template", None))
    return mode == "plain" or (mode == "auto" and not has_own), has_own


def with_chat_template(tokenizer: Any, mode: str = "auto") -> tuple[Any, str]:
    """The tokenizer to render chat-message prompts with under ``mode``, and the template in use
    (``"model"``, ``"plain"`` or ``"none"``). The caller's tokenizer is never changed: where the
    plain transcript (:data:`PLAIN_CHAT_TEMPLATE`) is needed, a shallow copy carries it.

    ``mode``: ``"model"`` keeps the tokenizer's own template (a tokenizer without one then
    raises :class:`NoChatTemplateError` on messages); ``"plain"`` uses the transcript in any
    case; ``"auto"`` uses it only where the tokenizer has no template."""
    import copy

    plain, has_own = _plain_wanted(tokenizer, mode)
    if plain:
        if getattr(tokenizer, "chat_template", None) == PLAIN_CHAT_TEMPLATE:
            return tokenizer, "plain"
        view = copy.copy(tokenizer)
        view.chat_template = PLAIN_CHAT_TEMPLATE
        return view, "plain"
    return tokenizer, ("model" if has_own else "none")


def use_plain_chat_template(tokenizer: Any, mode: str = "auto") -> str:
    """Choose how chat-message prompts are rendered, for base models that have no template.

    ``mode``: ``"model"`` keeps the tokenizer's own template (a tokenizer without one then
    raises :class:`NoChatTemplateError` on messages); ``"plain"`` sets
    :data:`PLAIN_CHAT_TEMPLATE` in any case; ``"auto"`` sets it only where the tokenizer has no
    template. Returns the template in use: ``"model"``, ``"plain"`` or ``"none"``."""
    plain, has_own = _plain_wanted(tokenizer, mode)
    if plain:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        return "plain"
    return "model" if has_own else "none"
