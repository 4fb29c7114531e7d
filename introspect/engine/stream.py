"""Pairs in, f(x), f(x'), Δ and hidden states out, batch by batch (see packing and forward).

Every speed-up is a switch of :class:`ExtractConfig`, so that each one's share can be measured
and any one can be turned off: the prefix trie (``layout="tree"``; ``"paths"`` runs every
sequence on its own), several pairs per row (``share_rows``), the shared-prefix KV cache
(``prefix_cache``) and the LM head on read positions only (``head="reads"``).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from introspect.behaviour import BEHAVIOURS, behaviour_value, encode
from introspect.data.pairs import Pair
from introspect.engine.forward import (
    ATTENTIONS,
    HEADS,
    PrefixCache,
    forward_packed,
    resolve_attention,
    uses_sliding_window,
)
from introspect.engine.packing import LAYOUTS, build_item, pack

log = logging.getLogger(__name__)

POSITIONS = ("last", "span")
PREFIX_WINDOW = 64  # pairs from the start of the stream that decide the shared prefix
PREFIX_MIN_TOKENS = 4
ROW_TOKENS = 256  # positions per packed row where attention sees the whole row (a dense mask)


@dataclass(frozen=True)
class ExtractConfig:
    layers: tuple[int, ...] = ()
    behaviour: str = "logodds"  # or "none": hidden states only, the forward stops early
    positions: tuple[str, ...] = ("last",)
    # Positions per packed row; None: the whole batch in one row where attention runs per trie
    # ("blocks", "paired": a long row costs nothing there and needs no padding), else 256.
    row_tokens: int | None = None
    batch_tokens: int = 2048  # positions per forward (rows x width)
    layout: str = "tree"
    share_rows: bool = True
    prefix_cache: bool = True
    head: str = "reads"
    attention: str = "auto"  # "mask", "paired" (segment kernel, no dense mask), "auto"
    fused: bool = True  # fused CPU kernels in a Llama-family forward (engine/fused.py)

    def __post_init__(self):
        if self.behaviour not in (*BEHAVIOURS, "none"):
            raise ValueError(f"behaviour must be one of {(*BEHAVIOURS, 'none')}")
        bad = [p for p in self.positions if p not in POSITIONS]
        if bad or not self.positions:
            raise ValueError(f"positions must be a non-empty subset of {POSITIONS}, got {bad}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {self.layout!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {self.head!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, not {self.attention!r}")
        if self.behaviour == "none" and not self.layers:
            raise ValueError("behaviour 'none' with no layers leaves nothing to extract")

    def to_json(self) -> dict:
        return {
            "layers": list(self.layers),
            "behaviour": self.behaviour,
            "positions": list(self.positions),
            "row_tokens": self.row_tokens,
            "batch_tokens": self.batch_tokens,
            "layout": self.layout,
            "share_rows": self.share_rows,
            "prefix_cache": self.prefix_cache,
            "head": self.head,
            "attention": self.attention,
        }


@dataclass
class BatchResult:
    ids: list[str]
    f_x: np.ndarray
    f_mod: np.ndarray
    hidden: dict[tuple[int, str, str], np.ndarray] = field(default_factory=dict)
    tokens_unique: int = 0  # positions computed (the cached prefix not counted)
    tokens_naive: int = 0  # positions two separate forwards per pair would compute


def shared_prefix(
    tokenizer,
    pairs: Iterable[Pair],
    *,
    limit: int = PREFIX_WINDOW,
    min_tokens: int = PREFIX_MIN_TOKENS,
) -> list[int]:
    """The longest token prefix common to every x and x' of the first ``limit`` pairs, cut so
    that it is shorter than each of them (empty if shorter than ``min_tokens``)."""
    common: list[int] | None = None
    shortest = math.inf
    for pair in itertools.islice(pairs, limit):
        for prompt in (pair.x, pair.x_mod):
            ids = encode(tokenizer, prompt, pair.choices).prompt_ids
            shortest = min(shortest, len(ids))
            if common is None:
                common = list(ids)
            else:
                n = 0
                while n < min(len(common), len(ids)) and common[n] == ids[n]:
                    n += 1
                del common[n:]
    if not common:
        return []
    common = common[: int(shortest) - 1]
    return common if len(common) >= min_tokens else []


class _Batcher:
    """Turns the pair stream into packed batches: consecutive pairs with the same x and choices
    form one group (one trie), groups fill a batch up to ``config.batch_tokens`` positions, and
    neither crosses a multiple of ``boundary_every`` in the stream index. :meth:`run` yields
    each batch's :class:`BatchResult` in input order."""

    def __init__(
        self,
        model,
        tokenizer,
        config: ExtractConfig,
        *,
        progress,
        boundary_every: int,
        first_index: int,
        cache: PrefixCache | None,
        autocast,
    ) -> None:
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.progress, self.boundary_every, self.first_index = progress, boundary_every, first_index
        self.cache, self.autocast = cache, autocast
        self.sliding = uses_sliding_window(model)
        text_config = getattr(model.config, "get_text_config", lambda: model.config)()
        self.window = getattr(text_config, "sliding_window", None)
        self.need_logits = config.behaviour != "none"
        self.want_span = "span" in config.positions
        self.batch: list[tuple[list[Pair], object]] = []
        self.batch_size = 0
        self.group: list[Pair] = []
        self.group_prompts: list = []
        self.group_choices = None

    def _layout(self, items) -> str:
        """The configured layout, or ``paths`` where a sliding window would cut a tree row."""
        layout = self.config.layout
        if self.sliding and layout == "tree" and self.window:
            if max(max(i.trie.depth) + 1 for i in items) > self.window:
                layout = "paths"
        return layout

    def _values(self, buf, res) -> tuple[list[str], list[float], list[float], list, list]:
        """Ids, f(x), f(x') and the hidden-state rows of x and x' of every pair of ``buf``."""
        ids, f_x, f_mod, rows_x, rows_mod = [], [], [], [], []
        offset = 0
        for k, (members, item) in enumerate(buf):
            for j, pair in enumerate(members, start=1):
                ids.append(pair.id)
                if self.need_logits:
                    t = pair.choices.index(pair.target)
                    logps = res.logps[k]
                    f_x.append(behaviour_value(logps[0], t, self.config.behaviour))
                    f_mod.append(behaviour_value(logps[j], t, self.config.behaviour))
                rows_x.append(offset)
                rows_mod.append(offset + j)
            offset += len(item.ends)
        if not self.need_logits:
            f_x = f_mod = [math.nan] * len(ids)
        return ids, f_x, f_mod, rows_x, rows_mod

    def _hidden(self, res, rows_x, rows_mod) -> dict[tuple[int, str, str], np.ndarray]:
        hidden = {}
        for layer, h in res.hidden.items():
            if "last" in self.config.positions:
                hidden[(layer, "last", "x")] = h[rows_x].numpy()
                hidden[(layer, "last", "mod")] = h[rows_mod].numpy()
            if self.want_span:
                sx, sm = res.span[layer]
                hidden[(layer, "span", "x")] = sx.numpy()
                hidden[(layer, "span", "mod")] = sm.numpy()
        return hidden

    def flush(self) -> BatchResult:
        """Runs the batch so far as one packed forward; returns its results and empties it."""
        buf, config, cache = self.batch, self.config, self.cache
        self.batch, self.batch_size = [], 0
        items = [item for _, item in buf]
        layout = self._layout(items)
        attention = resolve_attention(self.model, config.attention, layout, self.autocast)
        row_tokens = config.row_tokens
        if row_tokens is None:
            row_tokens = config.batch_tokens if attention in ("blocks", "paired") else ROW_TOKENS
        packed = pack(
            items,
            row_tokens=row_tokens,
            layout=layout,
            prefix=cache.tokens if cache is not None else (),
            share_rows=config.share_rows,
        )
        res = forward_packed(
            self.model,
            packed,
            config.layers,
            prefix=cache if packed.prefix_len else None,
            head=config.head,
            need_logits=self.need_logits,
            span=self.want_span,
            autocast=self.autocast,
            attention=attention,
            fused=config.fused,
        )
        ids, f_x, f_mod, rows_x, rows_mod = self._values(buf, res)
        skips = packed.skips or [0] * len(items)
        out = BatchResult(
            ids,
            np.array(f_x, dtype=np.float64),
            np.array(f_mod, dtype=np.float64),
            self._hidden(res, rows_x, rows_mod),
            sum(i.unique_tokens - s for i, s in zip(items, skips, strict=True)),
            sum(i.naive_tokens for i in items),
        )
        if self.progress is not None:
            self.progress(len(ids), out.tokens_unique)
        return out

    def close_group(self) -> BatchResult | None:
        """Adds the group so far to the batch (first running the batch if the group would not
        fit); returns the results of a batch that ran, if one did."""
        if not self.group:
            return None
        prompts, choices = self.group_prompts, self.group_choices
        item = build_item(0, prompts, choices)
        # What separate forwards would compute: x and x' for every pair of the group.
        extra = max(len(c) for c in choices) - 1
        item.naive_tokens = sum(len(prompts[0]) + len(p) + 2 * extra for p in prompts[1:])
        done = None
        if self.batch and self.batch_size + len(item.trie) > self.config.batch_tokens:
            done = self.flush()
        self.batch.append((self.group, item))
        self.batch_size += len(item.trie)
        self.group, self.group_prompts, self.group_choices = [], [], None
        return done

    def run(self, pairs: Iterable[Pair]) -> Iterator[BatchResult]:
        for k, pair in enumerate(pairs, start=self.first_index):
            at_boundary = self.boundary_every > 0 and k % self.boundary_every == 0
            ex = encode(self.tokenizer, pair.x, pair.choices)
            same_group = (
                self.group
                and not at_boundary
                and ex.prompt_ids == self.group_prompts[0]
                and ex.choice_ids == self.group_choices
            )
            if not same_group:
                done = self.close_group()
                if done is not None:
                    yield done
                if at_boundary and self.batch:
                    yield self.flush()
                self.group_prompts = [ex.prompt_ids]
                self.group_choices = ex.choice_ids
            em = encode(self.tokenizer, pair.x_mod, pair.choices)
            self.group.append(pair)
            self.group_prompts.append(em.prompt_ids)
        done = self.close_group()
        if done is not None:
            yield done
        if self.batch:
            yield self.flush()


def extract_pairs(
    model,
    tokenizer,
    pairs: Iterable[Pair],
    config: ExtractConfig = ExtractConfig(),
    *,
    progress: Callable[[int, int], None] | None = None,
    boundary_every: int = 0,
    first_index: int = 0,
    prefix: Sequence[int] | None = None,
    autocast: torch.dtype | None = None,
) -> Iterator[BatchResult]:
    """Yields results batch by batch, in input order (streams: holds one batch at a time).

    Consecutive pairs with the same x and the same choices (several features of one x, see
    :func:`introspect.data.ablate_each`) share one trie: x is computed once for all of them.

    With ``config.prefix_cache``, ``prefix`` (token ids) is computed once and reused as keys and
    values by every pair that starts with it; without it, the prefix common to the first
    :data:`PREFIX_WINDOW` pairs is used (pass it explicitly when the stream does not start at
    the beginning of the data, as a resumed run does, so that every part uses the same one).
    Models with sliding-window attention run without the cache, and a batch holding a sequence
    longer than the window runs in the ``paths`` layout, where the model applies its own window.

    With ``boundary_every = S`` neither a batch nor such a group spans a multiple of S in the
    stream index (the first pair having index ``first_index``): a run resumed at such a boundary
    then forms exactly the same batches as an uninterrupted one, so its values are bitwise
    identical.

    ``progress(pairs, tokens)`` is called after each batch. When every batch runs the paired
    attention, the model's attention implementation is switched for the whole stream: consume
    the iterator to the end or ``close()`` it before running the model otherwise.
    """
    pairs = iter(pairs)
    cache = None
    if config.prefix_cache and not uses_sliding_window(model):
        if prefix is None:
            head = list(itertools.islice(pairs, PREFIX_WINDOW))
            prefix = shared_prefix(tokenizer, head)
            pairs = itertools.chain(head, pairs)
        if prefix:
            cache = PrefixCache(model, prefix)
    batcher = _Batcher(
        model,
        tokenizer,
        config,
        progress=progress,
        boundary_every=boundary_every,
        first_index=first_index,
        cache=cache,
        autocast=autocast,
    )
    from introspect.engine.fused import packing_scope

    with packing_scope(model), _attention_for_stream(model, config, autocast, batcher.sliding):
        yield from batcher.run(pairs)


@contextlib.contextmanager
def _attention_for_stream(model, config: ExtractConfig, autocast, sliding: bool):
    """When every batch of the stream runs the paired attention (the tree layout, no sliding
    window to fall back from), the model's attention implementation is switched once for the
    stream instead of once per batch (each batch then only sets its segment metadata)."""
    if sliding or resolve_attention(model, config.attention, config.layout, autocast) != "paired":
        yield
        return
    from introspect.engine.attention import ATTN_NAME, register_paired_attention

    register_paired_attention()
    previous = model.config._attn_implementation
    if previous != ATTN_NAME:
        model.set_attn_implementation(ATTN_NAME)
    try:
        yield
    finally:
        if previous != ATTN_NAME:
            model.set_attn_implementation(previous)


def check_tree_layout(
    model, tokenizer, pair: Pair, *, atol: float = 1e-4, fused: bool = True
) -> str | None:
    """``None`` if ``model`` honours the packed 4D mask (the ``tree`` layout gives the same
    log-probabilities as running each sequence on its own on ``pair``), else why not."""
    # logprob: any number of choices
    from introspect.errors import IntrospectError

    config = ExtractConfig(behaviour="logprob", prefix_cache=False, fused=fused)
    try:
        tree = next(iter(extract_pairs(model, tokenizer, [pair], config)))
    except (
        IntrospectError
    ):  # the input's fault (a prompt the tokenizer cannot render), not the mask's
        raise
    except Exception as exc:  # an attention implementation that rejects the mask
        return f"the packed forward failed: {type(exc).__name__}: {exc}"
    paths = next(iter(extract_pairs(model, tokenizer, [pair], replace(config, layout="paths"))))
    err = max(abs(tree.f_x[0] - paths.f_x[0]), abs(tree.f_mod[0] - paths.f_mod[0]))
    if not err <= atol:
        return f"the packed forward differs from separate forwards by {err:.3g}"
    return None
