"""Packed-trie attention inside Hugging Face models, without a dense mask.

transformers looks attention functions up by name in its ``AttentionInterface``; this module
registers one, ``"introspect_paired"``, that computes each layer's attention with
:func:`introspect.ops.paired_attention` from the batch's :class:`~introspect.ops.SegmentMeta`
instead of a ``[B, 1, T, T]`` mask. Usage::

    from introspect.engine.attention import paired_attention_context, supports_paired_attention
    from introspect.ops.paired_attention import segment_meta

    batch = pack(items, row_tokens=...)
    if supports_paired_attention(model):
        with paired_attention_context(model, segment_meta(batch)):
            out = model(input_ids=batch.input_ids, position_ids=batch.position_ids)

Inside the context the model's attention implementation is ``"introspect_paired"`` and the
metadata is the current one for this thread/task (a context variable); the previous
implementation is restored on exit. Pass the packed ``position_ids`` and no ``attention_mask``:
the metadata is the mask (transformers builds none for an implementation it has no mask
function for, and a mask that is passed anyway is ignored). With a cached prefix
(``past_key_values`` holding P positions), keys arrive as ``[B, Hkv, P + T, Dh]`` and the
metadata must have ``prefix_len == P`` (``segment_meta`` of a batch packed with that prefix
does). Metadata passed as a model-call keyword ``segment_meta=`` (which Llama-, Qwen- and
Gemma-style models forward to their attention) takes precedence over the context's.

The implementation refuses, with a message, what it does not compute: attention-logit
softcapping (Gemma 2), dropout, non-causal attention, attention sinks, and a sliding window
narrower than the deepest query's context (a window at least that wide never binds). The
context changes the model's configuration, so a model must not run other batches in other
threads while inside it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from introspect.ops import _registry
from introspect.ops.paired_attention import (
    OP,
    SegmentMeta,
    _autocast,
    paired_attention,
    paired_attention_blocks,
    paired_attention_cpp,
)

ATTN_NAME = "introspect_paired"
BLOCKS = "blocks"
"""The context's ``backend`` that computes each trie alone (CPU): the op's C++ kernel where the
registry would take it for these inputs (float32, no backward needed), else SDPA on each trie
(:func:`~introspect.ops.paired_attention.paired_attention_blocks`)."""
KWARG = "segment_meta"

# Model types whose attention modules call the AttentionInterface with q, k, v after RoPE and
# whose masking is plain causal (plus an optional sliding window).
SUPPORTED_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "gemma", "gemma2",
        "gemma3", "gemma3_text", "smollm3",
    }
)  # fmt: skip


@dataclass(frozen=True)
class _Active:
    meta: SegmentMeta
    backend: str


_ACTIVE: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "introspect_paired_attention", default=None
)


def _paired_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: q [B, Hq, T, Dh], k/v [B, Hkv, P + T, Dh] -> output
    [B, T, Hq, Dh] and no attention weights."""
    active = _ACTIVE.get()
    meta = kwargs.get(KWARG)
    if meta is None:
        if active is None:
            raise RuntimeError(
                f"attention implementation {ATTN_NAME!r} needs the batch's segment metadata: "
                "run the model inside paired_attention_context(model, meta), or pass "
                f"{KWARG}=meta to the model call"
            )
        meta = active.meta
    backend = active.backend if active is not None else "auto"
    if softcap is not None:
        raise NotImplementedError(
            f"{ATTN_NAME}: attention-logit softcapping ({softcap}) is not supported"
        )
    if dropout:
        raise NotImplementedError(f"{ATTN_NAME}: attention dropout is not supported (eval only)")
    if is_causal is False:
        raise NotImplementedError(f"{ATTN_NAME}: non-causal attention is not supported")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError(f"{ATTN_NAME}: attention sinks are not supported")
    if sliding_window is not None and meta.max_keys > sliding_window:
        raise NotImplementedError(
            f"{ATTN_NAME}: a query sees {meta.max_keys} keys but layer "
            f"{getattr(module, 'layer_idx', '?')} has a sliding window of {sliding_window}; "
            "use shorter sequences or another attention implementation"
        )
    if backend == BLOCKS:
        q, k, v = _autocast(query, key, value)
        scale = float(scaling if scaling is not None else q.shape[-1] ** -0.5)
        if _native_kernel_runs(q, k, v):
            out = paired_attention_cpp(q, k, v, meta, scale)
        else:
            out = paired_attention_blocks(q, k, v, meta, scale)
    else:
        out = paired_attention(query, key, value, meta, scale=scaling, backend=backend)
    return out.transpose(1, 2).contiguous(), None


def _native_kernel_runs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``auto`` would run the op's ``cpp`` backend on these inputs (so that
    ``INTROSPECT_BACKEND=reference`` turns it off here too)."""
    if q.device.type != "cpu" or not (q.dtype == k.dtype == v.dtype):
        return False
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    try:
        name, _ = _registry.select(OP, "auto", q.device, q.dtype, {"grad": grad})
    except _registry.BackendUnavailableError:
        return False
    return name == "cpp"


def register_paired_attention(name: str = ATTN_NAME) -> str:
    """Registers the attention function with transformers under ``name`` (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, _paired_attention_forward)
    return name


def _text_config(model):
    cfg = model.config
    get = getattr(cfg, "get_text_config", None)
    return get() if callable(get) else cfg


def paired_attention_unsupported(model) -> str | None:
    """``None`` if the model's attention can run as ``"introspect_paired"``, else why not."""
    try:
        from transformers import PreTrainedModel
    except ImportError as exc:  # pragma: no cover - transformers is a dependency
        return f"transformers failed to import: {exc}"
    if not isinstance(model, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers PreTrainedModel"
    cfg = _text_config(model)
    model_type = getattr(cfg, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return (
            f"model type {model_type!r} is not one whose attention is known to work with "
            f"{ATTN_NAME} ({', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    can_set = getattr(type(model), "_can_set_attn_implementation", None)
    if callable(can_set) and not can_set():
        return f"{type(model).__name__} does not dispatch attention through AttentionInterface"
    if getattr(cfg, "attn_logit_softcapping", None):
        return f"attention-logit softcapping ({cfg.attn_logit_softcapping}) is not supported"
    if getattr(cfg, "is_causal", True) is False:
        return "the model is configured for non-causal attention"
    return None


def supports_paired_attention(model) -> bool:
    """Whether the model's attention can run as ``"introspect_paired"``."""
    return paired_attention_unsupported(model) is None


@contextlib.contextmanager
def paired_attention_context(
    model, meta: SegmentMeta, *, backend: str = "auto"
) -> Iterator[SegmentMeta]:
    """Runs ``model``'s attention with :func:`~introspect.ops.paired_attention` over ``meta``.

    The metadata is moved to the model's device once; ``backend`` is the op's backend
    (``"auto"``, ``"reference"``, ``"triton"``), or ``"blocks"`` for SDPA on each trie alone.
    Raises ``ValueError`` for a model whose attention cannot run this way (see
    :func:`paired_attention_unsupported`).
    """
    reason = paired_attention_unsupported(model)
    if reason is not None:
        raise ValueError(f"{ATTN_NAME} cannot run on this model: {reason}")
    if not isinstance(meta, SegmentMeta):
        raise TypeError(f"meta must be a SegmentMeta (see segment_meta), got {type(meta)}")
    register_paired_attention()
    device = next(model.parameters()).device
    meta = meta.to(device)
    previous = model.config._attn_implementation
    token = _ACTIVE.set(_Active(meta, backend))
    try:
        if previous != ATTN_NAME:
            model.set_attn_implementation(ATTN_NAME)
        yield meta
    finally:
        _ACTIVE.reset(token)
        if previous != ATTN_NAME and model.config._attn_implementation != previous:
            model.set_attn_implementation(previous)
