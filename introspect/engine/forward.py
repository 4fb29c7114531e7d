"""One forward over a packed batch: choice log-probabilities and chosen hidden states.

Only the logits that are needed are computed: the final hidden states at the read positions go
through the LM head ([reads, vocab], never [tokens, vocab]). Hidden states of the requested
decoder layers are captured with forward hooks; when no behaviour is needed, the forward stops
after the last requested layer. Layer l means the output of decoder layer l (the residual stream,
before the final norm).

Positions: ``last`` is the last prompt token of x and of each x'. ``span`` is, in x, the mean
over the tokens that x' removed, and in x', the mean over the tokens that replaced them (for a
pure deletion, the first token after the deletion point); see ``PackedItem.span_nodes``.

A prefix shared by many pairs (a system prompt, a few-shot block) can be computed once and held
as keys and values (:class:`PrefixCache`); packed rows then attend to it through the first
columns of their mask.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from introspect.engine.cache import cache_kwargs, output_cache
from introspect.engine.packing import PackedBatch

HEADS = ("reads", "rows", "full")
ATTENTIONS = ("auto", "mask", "paired", "blocks")


def resolve_attention(
    model, attention: str, layout: str, autocast: torch.dtype | None = None
) -> str:
    """``mask`` (the model's own attention with the packed mask), ``paired`` (the segment
    kernel registered with transformers, :mod:`introspect.engine.attention`) or ``blocks`` (the
    same registration running SDPA on each packed trie alone, so no work goes to the keys of
    the row's other tries: :func:`~introspect.ops.paired_attention.paired_attention_blocks`).
    ``auto`` takes, for a model the registration supports in the tree layout, ``paired`` on
    CUDA and ``blocks`` on CPU, and ``mask`` elsewhere. Under ``autocast`` the segment kernel
    casts queries, keys and values to the autocast dtype, as SDPA does (RoPE leaves queries and
    keys in float32)."""
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {ATTENTIONS}, not {attention!r}")
    if layout != "tree":
        return "mask"
    if attention == "auto":
        from introspect.engine.attention import supports_paired_attention

        if not supports_paired_attention(model):
            return "mask"
        return "paired" if next(model.parameters()).device.type == "cuda" else "blocks"
    if attention in ("paired", "blocks"):
        from introspect.engine.attention import paired_attention_unsupported

        why = paired_attention_unsupported(model)
        if why is not None:
            raise ValueError(f"attention={attention!r} cannot run this model: {why}")
    return attention


def decoder_layers(model) -> torch.nn.ModuleList:
    base = _base(model)
    for name in ("layers", "h", "blocks"):
        layers = getattr(base, name, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def _base(model):
    """The decoder stack under the LM head (``get_decoder()``, which some transformers releases
    answer with the LM model itself or None, then ``.model`` or ``.transformer``)."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    if dec is not None and dec is not model:
        return dec
    for name in ("model", "transformer"):
        inner = getattr(model, name, None)
        if isinstance(inner, torch.nn.Module):
            return inner
    raise ValueError(f"cannot find the base model of {type(model).__name__}")


def _attention_mask(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if mask.dim() != 4:
        return mask
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return mask
    # eager and others add the mask to the scores
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return out.masked_fill(~mask, torch.finfo(dtype).min)


def uses_sliding_window(model) -> bool:
    """Whether some layer attends through a sliding window (Gemma 2/3, Mistral-style)."""
    cfg = getattr(model.config, "get_text_config", lambda: model.config)()
    if not getattr(cfg, "sliding_window", None):
        return False
    types = getattr(cfg, "layer_types", None)
    return types is None or any("sliding" in str(t) for t in types)


class PrefixCache:
    """Keys and values of a token prefix, computed once and expanded to each batch."""

    def __init__(self, model, tokens: Sequence[int]):
        from transformers import DynamicCache

        self.tokens = list(tokens)
        device = next(model.parameters()).device
        ids = torch.tensor([self.tokens], device=device)
        base = _base(model)
        with torch.inference_mode():
            out = base(input_ids=ids, use_cache=True, **cache_kwargs(base, DynamicCache()))
        cache = output_cache(out)
        if hasattr(cache, "layers"):
            self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        else:  # transformers before the per-layer cache objects
            self.kv = list(zip(cache.key_cache, cache.value_cache, strict=True))
        self._cache_cls = DynamicCache

    def __len__(self) -> int:
        return len(self.tokens)

    def expand(self, batch: int):
        cache = self._cache_cls()
        for i, (k, v) in enumerate(self.kv):
            cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache


class _Stop(Exception):
    pass


@dataclass
class ForwardResult:
    logps: list[list[torch.Tensor]]  # [item][prompt] -> [C] float64 (empty without a head)
    # layer -> [sum of prompts over items, D] at each prompt's last token, item by item
    hidden: dict[int, torch.Tensor]
    # layer -> (x side, x' side), each [sum over items of their x' count, D], item by item
    span: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _span_index(batch: PackedBatch, device):
    """The span means of every (item, x'_j) pair as gathers: the number of spans and, for the x
    and the x' side, (rows, cols, segment ids) on ``device`` (built once per batch, used by
    every captured layer)."""
    rows, cols, seg_x, rows_m, cols_m, seg_m = [], [], [], [], [], []
    s = 0
    for k, item in enumerate(batch.items):
        for j in range(1, len(item.prompt_nodes)):
            span_x, span_mod = item.span_nodes(j)
            for node in span_x:
                r, c = batch.position(k, node)
                rows.append(r), cols.append(c), seg_x.append(s)
            for node in span_mod:
                r, c = batch.position(k, node)
                rows_m.append(r), cols_m.append(c), seg_m.append(s)
            s += 1

    def on_device(*lists):
        return tuple(torch.tensor(v, dtype=torch.long).to(device) for v in lists)

    return s, on_device(rows, cols, seg_x), on_device(rows_m, cols_m, seg_m)


def _segment_mean(h: torch.Tensor, index, n: int) -> torch.Tensor:
    rows, cols, seg = index
    vals = h[rows, cols].float()
    out = torch.zeros(n, h.shape[-1], dtype=torch.float32, device=h.device)
    out.index_add_(0, seg, vals)
    counts = torch.bincount(seg, minlength=n).clamp_min(1).unsqueeze(1)
    return out / counts


@torch.inference_mode()
def forward_packed(
    model,
    batch: PackedBatch,
    layers: Sequence[int] = (),
    *,
    prefix: PrefixCache | None = None,
    head: str = "reads",
    need_logits: bool = True,
    span: bool = False,
    autocast: torch.dtype | None = None,
    attention: str = "mask",
    attention_backend: str = "auto",
    fused: bool = True,
) -> ForwardResult:
    """One forward of a packed batch: each item's choice log-probabilities (unless
    ``need_logits`` is False, when the forward stops after the last captured layer) and the
    hidden states of ``layers`` at every item's read positions (and span means with ``span``).
    With ``fused``, a Llama-family model on the CPU runs its norms, MLP activations and rotary
    embedding through the fused kernels (:mod:`introspect.engine.fused`)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    if (len(prefix) if prefix is not None else 0) != batch.prefix_len:
        raise ValueError("the batch was packed for a different prefix than the one given")
    device = next(model.parameters()).device
    captured: dict[int, torch.Tensor] = {}
    handles = _capture(model, layers, captured, stop=not need_logits)
    base = _base(model)
    kwargs = cache_kwargs(base, prefix.expand(batch.input_ids.shape[0])) if batch.prefix_len else {}
    final = None
    try:
        if need_logits or layers:
            ctx = _forward_context(
                model, batch, device, autocast, attention, attention_backend, fused
            )
            with ctx as mask_kwargs:
                out = base(
                    input_ids=batch.input_ids.to(device),
                    position_ids=batch.position_ids.to(device),
                    use_cache=False,
                    **kwargs,
                    **mask_kwargs,
                )
            final = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    logps = _choice_logps(model, batch, final, head) if need_logits else []
    hidden, span_out = _gather_hidden(batch, captured, layers, span, device)
    return ForwardResult(logps, hidden, span_out)


def _capture(model, layers: Sequence[int], captured: dict, stop: bool) -> list:
    """Forward hooks storing each decoder layer's output in ``captured``; with ``stop`` the
    forward is cut short by :class:`_Stop` once the last of them ran."""
    blocks = decoder_layers(model)
    last_needed = max(layers) if layers and stop else -1
    handles = []
    for layer in layers:
        if not 0 <= layer < len(blocks):
            for h in handles:
                h.remove()
            raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} layers")

        def hook(_module, _args, output, layer=layer):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == last_needed:
                raise _Stop

        handles.append(blocks[layer].register_forward_hook(hook))
    return handles


@contextlib.contextmanager
def _forward_context(model, batch: PackedBatch, device, autocast, attention, backend, fused):
    """Autocast (or explicitly none), the fused CPU kernels (with ``fused``) and the attention
    of the batch's layout: the paired attention op (or its per-trie SDPA) patched in for
    ``attention="paired"`` (``"blocks"``), else a dense additive mask, which it yields as the
    forward's keyword arguments."""
    dtype = next(model.parameters()).dtype
    with contextlib.ExitStack() as ctx:
        ctx.enter_context(
            torch.autocast(device.type, dtype=autocast)
            if autocast is not None
            else torch.autocast(device.type, enabled=False)
        )
        if fused and device.type == "cpu":
            from introspect.engine.fused import fused_kernels

            ctx.enter_context(fused_kernels(model))
        if attention in ("paired", "blocks"):
            if batch.layout != "tree":
                raise ValueError(f"{attention} attention needs the tree layout")
            from introspect.engine.attention import BLOCKS, paired_attention_context

            meta = batch.segment_meta(device)
            which = BLOCKS if attention == "blocks" else backend
            ctx.enter_context(paired_attention_context(model, meta, backend=which))
            yield {}
        else:
            yield {"attention_mask": _attention_mask(model, batch.mask.to(device), dtype)}


def _gather_hidden(batch: PackedBatch, captured: dict, layers, span: bool, device):
    """The captured layers' hidden states at every item's read positions (fp32, on the CPU),
    and with ``span`` the (x span, x' span) means per item."""
    hidden, span_out = {}, {}
    if not layers:
        return hidden, span_out
    idx_r, idx_c = [], []
    for k, item in enumerate(batch.items):
        for end in item.ends:
            r, c = batch.position(k, end)
            idx_r.append(r)
            idx_c.append(c)
    idx_r = torch.tensor(idx_r, dtype=torch.long).to(device)
    idx_c = torch.tensor(idx_c, dtype=torch.long).to(device)
    span_index = _span_index(batch, device) if span else None
    for layer in layers:
        h = captured[layer]
        hidden[layer] = h[idx_r, idx_c].float().cpu()
        if span_index is not None:
            n, ix, im = span_index
            span_out[layer] = (_segment_mean(h, ix, n).cpu(), _segment_mean(h, im, n).cpu())
    return hidden, span_out


def _choice_logps(model, batch: PackedBatch, final: torch.Tensor, head: str):
    device = final.device
    # Gather every read position once, then the head on those rows only.
    coords: dict[tuple[int, int], int] = {}
    for k, item in enumerate(batch.items):
        for per_prompt in item.reads:
            for per_choice in per_prompt:
                for node, _ in per_choice:
                    coords.setdefault(batch.position(k, node), len(coords))
    rows = torch.tensor([r for r, _ in coords], device=device)
    cols = torch.tensor([c for _, c in coords], device=device)
    lm_head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    # ``rows``: the head module on the read rows, log-softmax in float64. A head that is not a
    # plain linear layer (one carrying adapters, say) always runs so: its ``.weight`` alone
    # would not be what it computes.
    if head == "reads" and type(lm_head) is not torch.nn.Linear:
        head = "rows"
    if head in ("full", "rows"):
        if head == "full":  # every position through the head: the cost a plain forward pays
            logits = lm_head(final).float()[rows, cols]
        else:
            logits = lm_head(final[rows, cols]).double()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        full = torch.log_softmax(logits, dim=-1).to(torch.float64).cpu()

        def value(i: int, tok: int) -> float:
            return float(full[i, tok])

    else:
        # The choice_logprobs op: log-sum-exp over the vocabulary in tiles, never [reads, V].
        from introspect.ops import choice_logprobs

        wanted: list[dict[int, int]] = [{} for _ in coords]
        for k, item in enumerate(batch.items):
            for per_prompt in item.reads:
                for per_choice in per_prompt:
                    for node, tok in per_choice:
                        slots = wanted[coords[batch.position(k, node)]]
                        slots.setdefault(tok, len(slots))
        width = max(len(w) for w in wanted)
        ids = torch.full((len(wanted), width), -1, dtype=torch.long)
        for i, w in enumerate(wanted):
            for tok, j in w.items():
                ids[i, j] = tok
        res = choice_logprobs(
            final[rows, cols],
            lm_head.weight,
            ids.to(device),
            getattr(lm_head, "bias", None),
            softcap=float(cap) if cap else None,
        )
        picked = res.logp.to(torch.float64).cpu()

        def value(i: int, tok: int) -> float:
            return float(picked[i, wanted[i][tok]])

    logps = []
    for k, item in enumerate(batch.items):
        per_item = []
        for per_prompt in item.reads:
            vals = [
                sum(value(coords[batch.position(k, node)], tok) for node, tok in per_choice)
                for per_choice in per_prompt
            ]
            per_item.append(torch.tensor(vals, dtype=torch.float64))
        logps.append(per_item)
    return logps
