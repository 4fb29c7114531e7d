"""The prefix-shared training step: every sequence a step reads for one pair, in one token trie,
run as one forward (and one backward) for the whole minibatch.

A step reads, per pair, the objective's choice after x (``L_behaviour``), the hidden state at
x's last token (``L_explain``) and at x''s (the difference probe), every choice after x and after
x' (the regulariser) and the verbal explainer's conversation, which begins with x, followed by
its label sentence (``L_verbal``). Separately these are five to eight forwards over x again and
again. Here they are the branches of one trie per pair, built with the extraction engine's
:func:`~introspect.engine.packing.build_item` (x and x' with every choice after each) plus the
verbal sequence inserted into the same trie, and laid out by
:func:`~introspect.engine.packing.pack`: each node attends to its ancestors only (a 4D mask) at
its own depth (explicit position ids), so every sequence sees what it would see alone, and the
loss and every gradient equal those of the separate forwards (a test checks them to 1e-5).

Only the logits that are read are computed: the final hidden states at the read nodes (the
choices' tokens and the label sentence's) go through the LM head, never [tokens × vocab].

Models with sliding-window attention get the mask cut to the window by depth
(:func:`~introspect.engine.packing.sliding_window_mask`), per layer type where full and sliding
layers mix. A model that cannot take the packed mask (an attention implementation that ignores
a 4D mask, a layer type other than full or sliding attention) is found at setup by
:func:`packed_problem`, and the run falls back to the separate forwards, saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from introspect.behaviour import Encoded
from introspect.engine.forward import (
    _attention_mask,
    _base,
    decoder_layers,
    forward_packed,
    uses_sliding_window,
)
from introspect.engine.packing import (
    PackedBatch,
    PackedItem,
    build_item,
    pack,
    sliding_window_mask,
)

__all__ = [
    "StepForward",
    "StepItem",
    "initial_pass_packed",
    "packed_problem",
    "step_attention_mask",
    "step_forward",
    "step_item",
]

_LAYER_TYPES = ("full_attention", "sliding_attention")
_ATTENTIONS = ("sdpa", "eager")


@dataclass
class StepItem:
    """One pair's trie: x (and x') with every choice after each, and the verbal sequence."""

    item: PackedItem
    sentence: list[tuple[int, int]] = field(default_factory=list)  # (node, token) to read


def step_item(
    index: int, enc_x: Encoded, enc_mod: Encoded | None, example: Sequence | None = None
) -> StepItem:
    """The trie of pair ``index``: x (and x' when given) followed by each choice, and the verbal
    ``example`` (prompt ids, sentence ids), whose sentence tokens are read."""
    prompts = [enc_x.prompt_ids] + ([enc_mod.prompt_ids] if enc_mod is not None else [])
    if enc_mod is not None and enc_mod.choice_ids != enc_x.choice_ids:
        raise ValueError(f"pair {index}: the choices encode differently after x and x'")
    item = build_item(index, prompts, enc_x.choice_ids)
    sentence = []
    if example is not None:
        prompt, sent = list(example[0]), list(example[1])
        nodes = item.trie.insert(prompt + sent[:-1])
        sentence = [(nodes[len(prompt) - 1 + j], tok) for j, tok in enumerate(sent)]
    item.unique_tokens = len(item.trie)
    return StepItem(item, sentence)


def _text_config(model):
    return getattr(model.config, "get_text_config", lambda: model.config)()


def step_attention_mask(model, batch: PackedBatch, *, force_window: bool = False):
    """The attention mask of ``batch`` as the model's forward takes it: the tree mask, or for a
    sliding-window model whose rows are deeper than its window (or with ``force_window``) the
    mask cut to the window, as one mask (every layer slides) or one per layer type."""
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    tree = batch.mask.to(device)
    if not uses_sliding_window(model):
        return _attention_mask(model, tree, dtype)
    cfg = _text_config(model)
    window = int(cfg.sliding_window)
    if not force_window and int(batch.position_ids.max()) < window:
        return _attention_mask(model, tree, dtype)
    cut = sliding_window_mask(batch, window).to(device)
    types = getattr(cfg, "layer_types", None)
    if types is None:
        return _attention_mask(model, cut, dtype)
    return {t: _attention_mask(model, cut if "sliding" in t else tree, dtype) for t in set(types)}


@dataclass
class StepForward:
    """What one packed forward gives for a minibatch, item by item."""

    logps: list[list[torch.Tensor]]  # [item][prompt] -> [C] log p(choice | prompt)
    hidden: torch.Tensor  # [items, prompts, D]: decoder layer output at each prompt's end
    sentence: torch.Tensor  # flat log p of every label-sentence token, item by item


def _head_logp(model, final: torch.Tensor, batch: PackedBatch, items: Sequence[StepItem]):
    """log p of every (node, token) the items read, flat in reading order (choices item by item,
    prompt by prompt, choice by choice, token by token; then the sentences): the LM head runs
    on each read row once, never on every position."""
    coords: dict[tuple[int, int], int] = {}
    slot, toks = [], []

    def add(k: int, node: int, tok: int) -> None:
        slot.append(coords.setdefault(batch.position(k, node), len(coords)))
        toks.append(tok)

    for k, s in enumerate(items):
        for per_prompt in s.item.reads:
            for per_choice in per_prompt:
                for node, tok in per_choice:
                    add(k, node, tok)
    n_choice = len(slot)
    for k, s in enumerate(items):
        for node, tok in s.sentence:
            add(k, node, tok)
    device = final.device
    rows = torch.tensor([r for r, _ in coords], device=device)
    cols = torch.tensor([c for _, c in coords], device=device)
    logits = model.get_output_embeddings()(final[rows, cols]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = torch.log_softmax(logits, dim=-1)
    flat = logp[torch.tensor(slot, device=device), torch.tensor(toks, device=device)]
    return flat[:n_choice], flat[n_choice:]


def _choice_sums(flat: torch.Tensor, items: Sequence[StepItem]) -> list[list[torch.Tensor]]:
    """Per item and prompt, the [C] sums of ``flat`` (from :func:`_head_logp`) over each
    choice's tokens."""
    sizes = [len(c) for s in items for p in s.item.reads for c in p]
    seg = torch.repeat_interleave(
        torch.arange(len(sizes), device=flat.device), torch.tensor(sizes, device=flat.device)
    )
    sums = torch.zeros(len(sizes), dtype=flat.dtype, device=flat.device).index_add(0, seg, flat)
    out, at = [], 0
    for s in items:
        per_item = []
        for p in s.item.reads:
            per_item.append(sums[at : at + len(p)])
            at += len(p)
        out.append(per_item)
    return out


def step_forward(
    model, items: Sequence[StepItem], layer: int, *, force_window: bool = False
) -> StepForward:
    """One forward of the minibatch's tries (in autograd's current mode): every choice's
    log-probability after every prompt, decoder ``layer``'s output at each prompt's last token
    and the log-probability of every label-sentence token (``force_window``: see
    :func:`step_attention_mask`)."""
    batch = pack(
        [s.item for s in items], row_tokens=max(len(s.item.trie) for s in items), layout="tree"
    )
    device = next(model.parameters()).device
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        out = _base(model)(
            input_ids=batch.input_ids.to(device),
            position_ids=batch.position_ids.to(device),
            attention_mask=step_attention_mask(model, batch, force_window=force_window),
            use_cache=False,
        )
    finally:
        handle.remove()
    final = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    choice_flat, sentence = _head_logp(model, final, batch, items)
    ends = [batch.position(k, e) for k, s in enumerate(items) for e in s.item.ends]
    r = torch.tensor([a for a, _ in ends], device=device)
    c = torch.tensor([b for _, b in ends], device=device)
    hidden = captured["h"][r, c].float().reshape(len(items), -1, captured["h"].shape[-1])
    return StepForward(_choice_sums(choice_flat, items), hidden, sentence)


@torch.no_grad()
def initial_pass_packed(model, enc_x, enc_mod, layer: int, batch: int):
    """The starting model's pass over the training pairs with the extraction engine's packed
    forward (:func:`~introspect.engine.forward.forward_packed`; x and x' of a pair in one trie,
    the head on read positions only): hidden states of x and x' at ``layer`` ([N, D] float64
    each) and the choice log-probabilities after x and after x' (lists of [C] float64)."""
    window = getattr(_text_config(model), "sliding_window", None)
    sliding = uses_sliding_window(model)
    from introspect.engine.fused import packing_scope

    hs, hms, lx, lm = [], [], [], []
    with packing_scope(model):
        for lo in range(0, len(enc_x), batch):
            items = [
                build_item(i, [enc_x[i].prompt_ids, enc_mod[i].prompt_ids], enc_x[i].choice_ids)
                for i in range(lo, min(lo + batch, len(enc_x)))
            ]
            longest = max(len(it.trie) for it in items)
            # A window shorter than a row: each sequence on its own row, the model's own window.
            deep = sliding and window and max(max(it.trie.depth) + 1 for it in items) > window
            packed = pack(items, row_tokens=longest, layout="paths" if deep else "tree")
            res = forward_packed(model, packed, [layer])
            h = res.hidden[layer].double()
            hs.append(h[0::2])
            hms.append(h[1::2])
            lx.extend(lp[0] for lp in res.logps)
            lm.extend(lp[1] for lp in res.logps)
    return torch.cat(hs).numpy(), torch.cat(hms).numpy(), lx, lm


def packed_problem(model, enc_x: Encoded, enc_mod: Encoded, layer: int) -> str | None:
    """None when the packed step gives the separate forwards' values on this pair (choice
    log-probabilities after x and x' within 1e-4, hidden states within 1e-4 relative), else
    why it cannot be used. Sliding-window models are checked with the window-cut mask forced,
    so that a forward refusing it is found here rather than at the first deep row."""
    from introspect.training.objectives import choice_logps, target_forward

    impl = getattr(model.config, "_attn_implementation", None) or "eager"
    if impl not in _ATTENTIONS:
        return f"attention implementation {impl!r} (the packed step needs sdpa or eager)"
    types = getattr(_text_config(model), "layer_types", None) or ()
    other = sorted({str(t) for t in types} - set(_LAYER_TYPES))
    if other:
        return f"layer types {other} (the packed step knows {list(_LAYER_TYPES)})"
    item = step_item(0, enc_x, enc_mod)
    try:
        with torch.no_grad():
            got = step_forward(model, [item], layer, force_window=True)
            want = choice_logps(model, [enc_x, enc_mod])
            hidden = [target_forward(model, [e], [0], layer=layer)[1][0] for e in (enc_x, enc_mod)]
    except Exception as exc:  # an attention implementation that rejects the mask
        return f"the packed forward failed: {type(exc).__name__}: {exc}"
    err = max(float((g - w).abs().max()) for g, w in zip(got.logps[0], want, strict=True))
    rel = max(
        float((got.hidden[0, j] - h).norm() / h.norm().clamp_min(1e-30))
        for j, h in enumerate(hidden)
    )
    if not (err <= 1e-4 and rel <= 1e-4):
        return (
            f"the packed forward differs from separate forwards (log-probabilities by "
            f"{err:.3g}, hidden states by {rel:.3g} relative)"
        )
    return None
