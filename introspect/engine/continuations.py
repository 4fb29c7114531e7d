"""Log-probabilities of several continuations of each prompt, in packed forwards.

A prompt and its continuations form one token trie (:func:`~introspect.engine.packing.build_item`):
the prompt is computed once, each continuation is a branch of it, and only the positions read go
through the LM head (``head="rows"``: log-softmax in float64). Tries fill rows up to a token
budget, exactly as the extraction engine packs pairs, so every value equals a separate forward
of the prompt followed by that continuation. This is how the verbal explainer scores its
candidate sentences and how the model's answer among a pair's choices is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from introspect.engine.forward import forward_packed, resolve_attention, uses_sliding_window
from introspect.engine.layout import tree_layout_problem
from introspect.engine.packing import PackedItem, build_item, pack

__all__ = ["continuation_logprobs"]


def _window(model) -> int | None:
    if not uses_sliding_window(model):
        return None
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    return getattr(cfg, "sliding_window", None)


def _run(
    model, items: list[PackedItem], layout: str, row_tokens: int, attention: str = "mask"
) -> list[torch.Tensor]:
    attention = resolve_attention(model, attention, layout)
    if attention in ("blocks", "paired"):  # each trie attends alone: one row, no padding
        row_tokens = sum(len(i.trie) for i in items)
    packed = pack(items, row_tokens=row_tokens, layout=layout)
    res = forward_packed(model, packed, head="rows", attention=attention)
    return [per_item[0] for per_item in res.logps]


def _layout(model, items: list[PackedItem], row_tokens: int, atol: float = 1e-4) -> str:
    """``tree`` where the model honours the packed mask and no sliding window cuts a row, else
    ``paths`` (every prompt + continuation a plain sequence of its own). The first time a
    model is seen (:mod:`introspect.engine.layout`), one item is run both ways to decide."""
    window = _window(model)
    if window and max(max(i.trie.depth) + 1 for i in items) > window:
        return "paths"

    def check() -> str | None:
        probe = [items[0]]
        tree, paths = _run(model, probe, "tree", row_tokens), _run(model, probe, "paths", 0)
        err = float((tree[0] - paths[0]).abs().max())
        return None if err <= atol else f"the packed forward differs by {err:.3g}"

    return "tree" if tree_layout_problem(model, check) is None else "paths"


def continuation_logprobs(
    model,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]],
    *,
    batch_tokens: int = 2048,
    row_tokens: int = 256,
    attention: str = "auto",
) -> list[torch.Tensor]:
    """``out[k][c]`` = log p(continuation c | prompt k), summed over its tokens (float64, on
    the CPU), from packed forwards of at most about ``batch_tokens`` positions each (a trie
    longer than that runs alone). Prompts and continuations are token ids; every continuation
    has at least one token. ``attention`` as in the extraction engine
    (:func:`~introspect.engine.forward.resolve_attention`): ``auto`` computes each trie alone
    (one row per forward, no padding) where the model supports it, else the model's attention
    with the packed mask in rows of ``row_tokens``."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(continuations)} continuation lists for {len(prompts)} prompts")
    for k, (p, conts) in enumerate(zip(prompts, continuations, strict=True)):
        if not p:
            raise ValueError(f"prompt {k} has no tokens")
        if not conts or any(len(c) == 0 for c in conts):
            raise ValueError(f"prompt {k}: every continuation needs at least one token")
    items = [
        build_item(k, [list(p)], [list(c) for c in conts])
        for k, (p, conts) in enumerate(zip(prompts, continuations, strict=True))
    ]
    from introspect.engine.fused import packing_scope

    out: list[torch.Tensor] = []
    start = 0
    with packing_scope(model):
        while start < len(items):
            end, size = start, 0
            while end < len(items) and (
                end == start or size + len(items[end].trie) <= batch_tokens
            ):
                size += len(items[end].trie)
                end += 1
            chunk = items[start:end]
            layout = _layout(model, chunk, row_tokens)
            out.extend(_run(model, chunk, layout, row_tokens, attention))
            start = end
    return out
