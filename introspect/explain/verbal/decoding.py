"""Batched passes of a causal language model over token ids, as the verbal explainer runs them:
right-padded teacher forcing for training, and left-padded prompts (explicit position ids, one
key/value cache) continued by candidate sentences for scoring or by greedy decoding.

Every function takes the model, the token ids as lists and the id used for padding; tensors go to
the device of the model's parameters.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch

from introspect.engine.cache import cache_kwargs, output_cache

__all__ = ["greedy", "prompt_forward", "right_padded", "score_candidates"]

Example = tuple[list[int], list[int]]
"""Token ids of a prompt and of the sentence that follows it."""


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def right_padded(
    batch: Sequence[Example], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and the mask of label-sentence tokens."""
    width = max(len(a) + len(b) for a, b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    tmask = torch.zeros(len(batch), width, dtype=torch.bool)
    for r, (a, b) in enumerate(batch):
        seq = a + b
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        tmask[r, len(a) : len(seq)] = True
    return ids.to(device), mask.to(device), tmask.to(device)


def prompt_forward(
    model: Any, prompts: list[list[int]], pad_id: int
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """One forward over the left-padded ``prompts`` with explicit position ids, keeping the
    key/value cache: the model's output, the attention mask and the position ids."""
    device = _device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p)
        mask[r, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    return out, mask, pos


def _round_inputs(
    sents: list[list[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and mask of one round of candidate sentences: every sentence token but the last
    (output k predicts token k + 1), right-padded."""
    b = len(sents)
    w = max(1, max(len(t) - 1 for t in sents))
    inp = torch.full((b, w), pad_id, dtype=torch.long)
    smask = torch.zeros(b, w, dtype=torch.long)
    for r, t in enumerate(sents):
        if len(t) > 1:
            inp[r, : len(t) - 1] = torch.tensor(t[:-1])
            smask[r, : len(t) - 1] = 1
    return inp.to(device), smask.to(device)


def score_candidates(
    model: Any, prompts: list[list[int]], cands: list[list[tuple[str, list[int]]]], pad_id: int
) -> list[dict[str, float]]:
    """Summed log-probabilities of every candidate sentence (``(label, ids)``) of a batch of
    prompts: one forward over the left-padded prompts (explicit position ids) keeps their
    key/value cache, and each round of candidates continues from a copy of it."""
    device = _device(model)
    first, mask, _ = prompt_forward(model, prompts, pad_id)
    past = output_cache(first)
    head = torch.log_softmax(first.logits[:, -1].double(), dim=-1)  # the first sentence token
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    out: list[dict[str, float]] = [{} for _ in prompts]
    rounds = max(len(c) for c in cands)
    for j in range(rounds):
        sents = [c[j][1] if j < len(c) else [pad_id] for c in cands]
        inp, smask = _round_inputs(sents, pad_id, device)
        spos = lengths[:, None] + torch.arange(inp.shape[1], device=device)[None]
        # A round appends to the cache it is given: the last round may use the prompts'.
        cache = past if j == rounds - 1 else copy.deepcopy(past)
        res = model(
            input_ids=inp,
            attention_mask=torch.cat([mask, smask], 1),
            position_ids=spos,
            use_cache=True,
            **cache_kwargs(model, cache),
        )
        logp = torch.log_softmax(res.logits.double(), dim=-1)
        for r, t in enumerate(sents):
            if j >= len(cands[r]):
                continue
            total = head[r, t[0]]
            if len(t) > 1:
                nxt = torch.tensor(t[1:], device=device)
                total = total + logp[r, : len(t) - 1].gather(1, nxt[:, None]).sum()
            out[r][cands[r][j][0]] = float(total)
    return out


def greedy(
    model: Any, prompts: list[list[int]], pad_id: int, eos: Sequence[int], max_new_tokens: int
) -> list[list[int]]:
    """Greedy decoding of a left-padded batch with explicit position ids and a KV cache: the new
    tokens of each prompt (at most ``max_new_tokens``, stopping before an ``eos`` token)."""
    device = _device(model)
    eos = set(eos)
    b = len(prompts)
    out, mask, pos = prompt_forward(model, prompts, pad_id)
    past = output_cache(out)
    last_pos = pos[:, -1:]
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * b
    for step in range(max_new_tokens):
        nxt = out.logits[:, -1].argmax(-1)
        for r in range(b):
            if not done[r]:
                t = int(nxt[r])
                if t in eos:
                    done[r] = True
                else:
                    new[r].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], 1)
        last_pos = last_pos + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last_pos,
            use_cache=True,
            **cache_kwargs(model, past),
        )
        past = output_cache(out)
    return new
