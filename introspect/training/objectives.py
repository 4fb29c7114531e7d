"""Behaviour-shifting objectives and the differentiable forwards they need.

An objective names, for each pair, the choice the model is fine-tuned to give on x (teacher-forced
cross-entropy on that choice's tokens after the prompt):

- ``anti-sycophancy``: the correct option regardless of the cue (``meta["correct"]``; for data
  without a correct answer, such as opinion questions, the single choice that is not the
  sycophantic ``target``);
- ``pro-sycophancy``: the option the cue favours (``meta["cued"]``, else the pair's ``target``,
  which the sycophancy and hint generators and the Anthropic importer set to the cued answer);
- ``refusal-shift``: compliance instead of refusal (``meta["compliance"]``, else the single
  choice that is not the refusal ``target``);
- ``none``: no behaviour objective.

The forwards here run the model on right-padded batches, compute the LM head only at the
positions that are read, and capture one decoder layer's output (the residual stream, the same
definition as :mod:`introspect.engine`) at the last prompt token, with gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from introspect.behaviour import Encoded, encode
from introspect.data.pairs import Pair
from introspect.errors import IntrospectError

__all__ = [
    "OBJECTIVES",
    "TrainError",
    "choice_logps",
    "encode_pairs",
    "kl_to_reference",
    "objective_logprob",
    "sft_targets",
    "target_forward",
]

OBJECTIVES = ("anti-sycophancy", "pro-sycophancy", "refusal-shift", "none")
_SHOW = 5


class TrainError(IntrospectError, ValueError):
    """Training inputs that do not fit together (messages name the pairs or files)."""


def _other(pair: Pair) -> str | None:
    others = [c for c in pair.choices if c != pair.target]
    return others[0] if len(others) == 1 else None


def _wanted(pair: Pair, objective: str) -> tuple[str | None, str]:
    meta = pair.meta or {}
    if objective == "anti-sycophancy":
        if "correct" in meta:
            return meta["correct"], "meta.correct"
        return _other(pair), "the one choice other than the target"
    if objective == "pro-sycophancy":
        if "cued" in meta:
            return meta["cued"], "meta.cued"
        return pair.target, "the target"
    if objective == "refusal-shift":
        if "compliance" in meta:
            return meta["compliance"], "meta.compliance"
        return _other(pair), "the one choice other than the refusal target"
    raise TrainError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")


def sft_targets(pairs: Sequence[Pair], objective: str) -> list[int]:
    """Index (into ``pair.choices``) of the choice each pair is trained towards; a
    :class:`TrainError` lists the pairs that give none."""
    if objective not in OBJECTIVES:
        raise TrainError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    if objective == "none":
        return [pair.choices.index(pair.target) for pair in pairs]
    out, bad = [], []
    for pair in pairs:
        want, source = _wanted(pair, objective)
        if want is None or want not in pair.choices:
            bad.append(f"{pair.id!r} ({source} = {want!r}, choices {list(pair.choices)})")
            continue
        out.append(pair.choices.index(want))
    if bad:
        more = f", ... ({len(bad)} in all)" if len(bad) > _SHOW else ""
        raise TrainError(
            f"objective {objective}: {len(bad)} pair(s) name no trainable choice: "
            + "; ".join(bad[:_SHOW])
            + more
        )
    return out


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], side: str = "x") -> list[Encoded]:
    """Token ids of each pair's x (``side="x"``) or x' (``"mod"``) and of its choices."""
    return [encode(tokenizer, p.x if side == "x" else p.x_mod, p.choices) for p in pairs]


def _forward_reads(
    model: Any,
    sequences: Sequence[Sequence[int]],
    reads: Sequence[Sequence[tuple[int, int]]],
    *,
    layer: int | None = None,
    hidden_at: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of ``reads`` ((position, token): the logits at ``position`` predict
    ``token``) per sequence, flattened in order, and the output of decoder ``layer`` at
    ``hidden_at[i]`` of each sequence ([B, D]) when asked."""
    from introspect.engine.forward import _base, decoder_layers

    device = next(model.parameters()).device
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for r, seq in enumerate(sequences):
        ids[r, : len(seq)] = torch.tensor(list(seq))
        mask[r, : len(seq)] = 1
    captured: dict[str, torch.Tensor] = {}
    handle = None
    if layer is not None:

        def hook(_module, _args, output):
            captured["h"] = output[0] if isinstance(output, tuple) else output

        handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        out = _base(model)(
            input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
        )
    finally:
        if handle is not None:
            handle.remove()
    final = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    rows = torch.tensor([r for r, rr in enumerate(reads) for _ in rr], device=device)
    cols = torch.tensor([p for rr in reads for p, _ in rr], device=device)
    toks = torch.tensor([t for rr in reads for _, t in rr], device=device)
    logits = model.get_output_embeddings()(final[rows, cols]).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    logp = torch.log_softmax(logits, dim=-1).gather(1, toks[:, None])[:, 0]
    hidden = None
    if layer is not None:
        at = torch.tensor(list(hidden_at), device=device)
        hidden = captured["h"][torch.arange(len(sequences), device=device), at].float()
    return logp, hidden


def target_forward(
    model: Any, encoded: Sequence[Encoded], targets: Sequence[int], *, layer: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log p(target choice | x) per pair ([B], summed over the choice's tokens) and the output
    of decoder ``layer`` at x's last prompt token ([B, D]), from one forward of prompt + choice."""
    seqs, reads, last = [], [], []
    for enc, t in zip(encoded, targets, strict=True):
        n = len(enc.prompt_ids)
        choice = enc.choice_ids[t]
        seqs.append(enc.prompt_ids + choice)
        reads.append([(n - 1 + j, tok) for j, tok in enumerate(choice)])
        last.append(n - 1)
    logp, hidden = _forward_reads(model, seqs, reads, layer=layer, hidden_at=last)
    sizes = [len(enc.choice_ids[t]) for enc, t in zip(encoded, targets, strict=True)]
    per_pair = torch.stack([part.sum() for part in torch.split(logp, sizes)])
    return per_pair, hidden


def choice_logps(model: Any, encoded: Sequence[Encoded]) -> list[torch.Tensor]:
    """log p(choice | prompt) of every choice of every prompt (a [C] tensor per prompt); one
    sequence per prompt when all its choices are single tokens, else one per choice."""
    seqs, reads, shape = [], [], []
    for enc in encoded:
        n = len(enc.prompt_ids)
        if all(len(c) == 1 for c in enc.choice_ids):
            seqs.append(enc.prompt_ids)
            reads.append([(n - 1, c[0]) for c in enc.choice_ids])
            shape.append([1] * len(enc.choice_ids))
        else:
            for c in enc.choice_ids:
                seqs.append(enc.prompt_ids + c)
                reads.append([(n - 1 + j, tok) for j, tok in enumerate(c)])
            shape.append([len(c) for c in enc.choice_ids])
    logp, _ = _forward_reads(model, seqs, reads)
    flat = [part.sum() for part in torch.split(logp, [k for s in shape for k in s])]
    out, at = [], 0
    for s in shape:
        out.append(torch.stack(flat[at : at + len(s)]))
        at += len(s)
    return out


def kl_to_reference(current: Sequence[torch.Tensor], reference: Sequence[torch.Tensor]):
    """Mean over prompts of KL(p_ref ‖ p_current), both renormalised over the choices."""
    terms = []
    for cur, ref in zip(current, reference, strict=True):
        ref = ref.to(cur.device, cur.dtype)
        p_ref = torch.softmax(ref, 0)
        terms.append((p_ref * (torch.log_softmax(ref, 0) - torch.log_softmax(cur, 0))).sum())
    return torch.stack(terms).mean()


@torch.no_grad()
def objective_logprob(
    model: Any, tokenizer: Any, pairs: Sequence[Pair], objective: str, *, batch_size: int = 16
) -> float:
    """Mean log p(objective's choice | x) over ``pairs``: how far the model has moved towards
    the objective. Each x and its choice run as one packed trie with the engine
    (:func:`~introspect.engine.continuations.continuation_logprobs`); ``batch_size`` is
    ignored (kept for callers that pass it)."""
    from introspect.engine.continuations import continuation_logprobs

    targets = sft_targets(pairs, objective)
    enc = encode_pairs(tokenizer, pairs)
    if not enc:
        return 0.0
    chosen = [[e.choice_ids[t]] for e, t in zip(enc, targets, strict=True)]
    logps = continuation_logprobs(model, [e.prompt_ids for e in enc], chosen)
    return float(sum(float(lp[0]) for lp in logps)) / len(pairs)
