"""Packing pairs into rows that share their common prefixes.

All token sequences a pair needs — x, each x', and each of those followed by the first tokens of
every multi-token choice — are inserted into one token trie. Every trie node is one position of
the packed row; a node attends to itself and its ancestors only, and its position id is its
depth. Shared prefixes are therefore computed once, and each sequence sees exactly the tokens it
would see alone, at the positions it would have alone: the logits at a node equal those of a
separate forward of the sequence ending there.

Several pairs (several tries) are concatenated into one row with a block-diagonal mask, up to a
token budget; rows of a batch are padded to the same length with masked positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Trie:
    """Token trie in pre-order: ``tokens[i]`` at depth ``depth[i]`` under ``parent[i]``."""

    tokens: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    _children: list[dict[int, int]] = field(default_factory=list)
    _roots: dict[int, int] = field(default_factory=dict)

    def insert(self, seq: Sequence[int]) -> list[int]:
        """Adds a sequence; returns the node of each of its tokens."""
        nodes = []
        level = self._roots
        parent = -1
        for depth, tok in enumerate(seq):
            node = level.get(tok)
            if node is None:
                node = len(self.tokens)
                self.tokens.append(tok)
                self.parent.append(parent)
                self.depth.append(depth)
                self._children.append({})
                level[tok] = node
            nodes.append(node)
            parent = node
            level = self._children[node]
        return nodes

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class PackedItem:
    """One pair's trie and where to read what it needs."""

    index: int  # the pair's position in the input stream
    trie: Trie
    ends: list[int]  # trie node of the last prompt token: [x, x'_1, ...]
    # reads[s][c] = [(node, token), ...]: log p(choice c | prompt s) = Σ logp[node, token]
    reads: list[list[list[tuple[int, int]]]]
    unique_tokens: int = 0
    naive_tokens: int = 0
    prompt_nodes: list[list[int]] = field(default_factory=list)  # every prompt token's node

    def needed_from(self) -> int:
        """The first node any read, prompt end or span position needs (see ``span_nodes``)."""
        lo = min(self.ends)
        for per_prompt in self.reads:
            for per_choice in per_prompt:
                lo = min(lo, *(node for node, _ in per_choice))
        for j in range(1, len(self.prompt_nodes)):
            span_x, span_mod = self.span_nodes(j)
            lo = min(lo, *span_x, *span_mod)
        return lo

    def span_nodes(self, j: int) -> tuple[list[int], list[int]]:
        """Where x and x'_j differ: the nodes of x's tokens that x'_j removed (or replaced), and
        those of x'_j's replacing tokens; for a pure deletion the latter is the first token of
        x'_j after the deletion point (the first whose context changed), or its last token when
        the deletion is at the end."""
        x, m = self.prompt_nodes[0], self.prompt_nodes[j]
        tx, tm = [self.trie.tokens[n] for n in x], [self.trie.tokens[n] for n in m]
        lcp = 0
        while lcp < min(len(tx), len(tm)) and tx[lcp] == tm[lcp]:
            lcp += 1
        lcs = 0
        while lcs < min(len(tx), len(tm)) - lcp and tx[-1 - lcs] == tm[-1 - lcs]:
            lcs += 1
        span_x = x[lcp : len(x) - lcs] or [x[min(lcp, len(x) - 1)]]
        span_mod = m[lcp : len(m) - lcs] or [m[min(lcp, len(m) - 1)]]
        return span_x, span_mod


def build_item(
    index: int, prompts: Sequence[Sequence[int]], choices: Sequence[Sequence[int]]
) -> PackedItem:
    """The trie of one pair: ``prompts`` = [x, x'...] token ids, ``choices`` token ids."""
    trie = Trie()
    ends = []
    reads = []
    prompt_nodes = []
    for prompt in prompts:
        nodes = trie.insert(prompt)
        prompt_nodes.append(nodes)
        ends.append(nodes[-1])
        per_choice = []
        for choice in choices:
            # Feed all but the last choice token; read token j at the node before it.
            fed = trie.insert(list(prompt) + list(choice[:-1]))[len(prompt) - 1 :]
            per_choice.append([(fed[j], tok) for j, tok in enumerate(choice)])
        reads.append(per_choice)
    naive = sum(len(p) + max(len(c) for c in choices) - 1 for p in prompts)
    return PackedItem(index, trie, ends, reads, len(trie), naive, prompt_nodes)


LAYOUTS = ("tree", "paths")


@dataclass
class PackedBatch:
    """Rows for one forward and where every needed trie node landed.

    ``tree`` layout: ``mask`` is [B, 1, T, P + T] bool (True = may attend), the first P columns
    being the shared prefix held in the KV cache (P = 0 without one); it is built on first use
    only, since the paired attention reads the trie through its segment metadata instead
    (:meth:`segment_meta`, also built once per batch and device). ``paths`` layout: every
    root-to-leaf path of every trie is a plain sequence of its own, and ``mask`` is the usual
    [B, P + T] padding mask, for attention implementations that accept no 4D mask.
    """

    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]
    items: list[PackedItem]
    where: list[tuple[int, int]]  # tree layout: (row, offset) of each item's node `skip`
    layout: str = "tree"
    prefix_len: int = 0
    skips: list[int] = field(default_factory=list)  # nodes of each item held in the prefix
    locs: list[dict[int, tuple[int, int]]] | None = None  # paths layout: node -> (row, col)
    lengths: list[int] = field(default_factory=list)  # tree layout: used positions per row
    _mask: torch.Tensor | None = field(default=None, repr=False)
    _meta: dict = field(default_factory=dict, repr=False)

    @property
    def mask(self) -> torch.Tensor:
        if self._mask is None:
            self._mask = _tree_mask(self)
        return self._mask

    def segment_meta(self, device=None):
        """The batch's :class:`~introspect.ops.SegmentMeta` on ``device``, built once: a later
        call (another forward of the same batch) reuses it, and a copy to another device is
        made from it once."""
        from introspect.ops.paired_attention import segment_meta

        key = str(torch.device(device) if device is not None else torch.device("cpu"))
        meta = self._meta.get(key)
        if meta is None:
            cpu = self._meta.get("cpu")
            if cpu is None:
                cpu = self._meta["cpu"] = segment_meta(self)
            meta = self._meta[key] = cpu.to(key)
        return meta

    def position(self, k: int, node: int) -> tuple[int, int]:
        if self.locs is not None:
            return self.locs[k][node]
        skip = self.skips[k] if self.skips else 0
        if node < skip:
            raise IndexError(f"node {node} of item {k} is in the cached prefix")
        row, offset = self.where[k]
        return row, offset + node - skip


def prefix_skip(item: PackedItem, prefix: Sequence[int]) -> int:
    """How many leading nodes of ``item`` the cached ``prefix`` can stand for: all of it if every
    prompt starts with it and nothing the item reads lies inside it, else 0."""
    n = len(prefix)
    if n == 0 or len(item.trie) <= n:
        return 0
    t = item.trie
    # Node i < n is the i-th token of the first prompt; every prompt starting with the prefix
    # shares exactly these nodes.
    if t.tokens[:n] != list(prefix) or t.depth[n - 1] != n - 1:
        return 0
    if any(nodes[n - 1] != n - 1 for nodes in item.prompt_nodes):
        return 0
    if item.needed_from() < n:
        return 0
    return n


def _tree_block(t: Trie, lo: int) -> np.ndarray:
    """[n, n] ancestor-or-self matrix of nodes ``lo..`` (pre-order: a parent precedes its
    children), walked up one level per step for all nodes at once."""
    parent = np.asarray(t.parent[lo:], dtype=np.int64) - lo  # < 0: above the block
    n = parent.shape[0]
    block = np.eye(n, dtype=bool)
    rows, up = np.arange(n), parent.copy()
    while (live := up >= 0).any():
        rows, up = rows[live], up[live]
        block[rows, up] = True
        up = parent[up]
    return block


def _tree_mask(batch: PackedBatch) -> torch.Tensor:
    """The dense [B, 1, T, P + T] mask of a tree-layout batch (see :class:`PackedBatch`)."""
    B, width = batch.input_ids.shape
    P = batch.prefix_len
    mask = np.zeros((B, 1, width, P + width), dtype=bool)
    skips = batch.skips or [0] * len(batch.items)
    for item, (r, off), s in zip(batch.items, batch.where, skips, strict=True):
        n = len(item.trie) - s
        mask[r, 0, off : off + n, P + off : P + off + n] = _tree_block(item.trie, s)
        if s:
            mask[r, 0, off : off + n, :P] = True
    # Padding positions attend to themselves only, so no attention row is empty.
    for r, used in enumerate(batch.lengths):
        pad = np.arange(used, width)
        mask[r, 0, pad, P + pad] = True
    return torch.from_numpy(mask)


def _fit_rows(sizes: Sequence[int], row_tokens: int, share_rows: bool) -> tuple[list, list]:
    """Greedy first-fit of pieces into rows; returns (row, offset) per piece and row lengths."""
    lengths: list[int] = []
    where = []
    for n in sizes:
        for r, used in enumerate(lengths):
            if share_rows and used + n <= row_tokens:
                where.append((r, used))
                lengths[r] += n
                break
        else:
            where.append((len(lengths), 0))
            lengths.append(n)
    return where, lengths


def pack(
    items: Sequence[PackedItem],
    *,
    row_tokens: int,
    layout: str = "tree",
    prefix: Sequence[int] = (),
    share_rows: bool = True,
) -> PackedBatch:
    """Lays ``items`` out in rows.

    ``tree``: greedy first-fit of whole tries into rows of at most ``row_tokens`` positions (an
    item longer than that gets a row of its own; ``share_rows=False`` gives every item its own
    row), padded to the longest row. ``paths``: one row per root-to-leaf path. With a
    ``prefix`` (token ids whose keys and values the caller holds in a cache), an item whose
    prompts all start with it leaves those nodes out and attends to the cache instead.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    P = len(prefix)
    skips = [prefix_skip(item, prefix) for item in items]
    if layout == "paths":
        return _pack_paths(items, prefix_len=P, skips=skips)
    where, lengths = _fit_rows(
        [len(item.trie) - s for item, s in zip(items, skips, strict=True)], row_tokens, share_rows
    )
    width = max(lengths) if lengths else 0
    B = len(lengths)
    ids = torch.zeros(B, width, dtype=torch.long)
    pos = torch.zeros(B, width, dtype=torch.long)
    for k, item in enumerate(items):
        r, off = where[k]
        t, s = item.trie, skips[k]
        n = len(t) - s
        ids[r, off : off + n] = torch.tensor(t.tokens[s:])
        pos[r, off : off + n] = torch.tensor(t.depth[s:])
    return PackedBatch(ids, pos, list(items), where, "tree", P, skips, lengths=lengths)


def _pack_paths(items: Sequence[PackedItem], *, prefix_len: int, skips: list[int]) -> PackedBatch:
    rows: list[list[int]] = []  # node lists
    owner: list[int] = []
    locs: list[dict[int, tuple[int, int]]] = []
    for k, item in enumerate(items):
        t, s = item.trie, skips[k]
        has_child = [False] * len(t)
        for p in t.parent:
            if p >= 0:
                has_child[p] = True
        loc: dict[int, tuple[int, int]] = {}
        for leaf in range(len(t)):
            if has_child[leaf]:
                continue
            path = []
            node = leaf
            while node >= s:
                path.append(node)
                node = t.parent[node]
            path.reverse()
            r = len(rows)
            rows.append(path)
            owner.append(k)
            for col, node in enumerate(path):
                loc.setdefault(node, (r, col))
        locs.append(loc)
    width = max((len(p) for p in rows), default=0)
    B = len(rows)
    P = prefix_len
    ids = torch.zeros(B, width, dtype=torch.long)
    pos = torch.zeros(B, width, dtype=torch.long)
    mask = torch.zeros(B, P + width, dtype=torch.long)
    for r, path in enumerate(rows):
        t = items[owner[r]].trie
        n = len(path)
        ids[r, :n] = torch.tensor([t.tokens[i] for i in path])
        pos[r, :n] = torch.tensor([t.depth[i] for i in path])
        mask[r, P : P + n] = 1
        if skips[owner[r]]:
            mask[r, :P] = 1
    return PackedBatch(ids, pos, list(items), [], "paths", P, skips, locs, _mask=mask)


def sliding_window_mask(batch: PackedBatch, window: int) -> torch.Tensor:
    """The tree layout's mask cut to a sliding window of ``window`` positions: a node attends
    to an ancestor only when their position ids (depths) differ by less than ``window``, which is
    what the window does to each sequence run on its own (the cached prefix, at depths below the
    batch's, is cut the same way)."""
    if batch.layout != "tree":
        raise ValueError("a sliding-window mask is built for the tree layout")
    pos = batch.position_ids
    P = batch.prefix_len
    keys = torch.cat([torch.arange(P).expand(pos.shape[0], P), pos], dim=1) if P else pos
    near = (pos[:, None, :, None] - keys[:, None, None, :]) < window
    return batch.mask & near
