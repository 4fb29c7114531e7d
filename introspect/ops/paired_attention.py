"""paired_attention: attention over packed token tries, without a dense mask.

A packed row holds one or more token tries (see :mod:`introspect.engine.packing`): every
position is a trie node, attends to itself and its ancestors, and its parent lies before it. The
row decomposes into *segments*: maximal runs of positions whose parent is the position just
before. Every query of a segment sees

- the ancestor key intervals of the segment — the chain of segments from the root down to the
  parent of the segment's first token, the last one cut after that parent — in full, and
- the segment's own range causally (key ≤ query).

Padding positions form segments of their own that see only the diagonal (each padding query
attends to itself, as in :func:`~introspect.engine.packing.pack`). Rows may also attend to a
cached prefix of P positions held before them in the keys (a system prompt computed once): a
trie hung under it sees all P prefix keys, and keys are numbered ``[0, P)`` for the prefix, then
``P + t`` for row position ``t``.

:class:`SegmentMeta` stores this as a handful of int32 tensors (per segment: row, query range,
a self-only flag, and a CSR list of ancestor key intervals), built by :func:`segment_meta` from a
``PackedBatch`` or from per-row parent arrays. :meth:`SegmentMeta.dense_mask` turns it back into
the ``[B, 1, T, P + T]`` boolean mask, equal to ``PackedBatch.mask`` for tree-layout batches made
by ``pack``.

``paired_attention(q, k, v, meta)`` computes softmax(q kᵀ · scale + mask) v for q ``[B, Hq, T,
Dh]`` and k, v ``[B, Hkv, P + T, Dh]`` (grouped-query attention when Hq is a multiple of Hkv;
RoPE is applied by the caller). Backends: ``reference`` (torch SDPA with the dense mask,
differentiable), ``cpp`` (float32 CPU tensors, forward only: tiles of a segment's queries over
the keys each sees, read in place; ``csrc/paired_attention.cpp``) and ``triton`` (forward only:
one program per segment query block and head, looping over the segment's key intervals only).
The forward-only backends are taken by ``auto`` only when autograd will not need a backward.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from introspect import _native
from introspect.ops import _checks, _registry

OP = "paired_attention"
PAD = -2
"""Parent value that marks a padding position (it attends to itself only)."""
ROOT = -1
"""Parent value of a trie root."""
PREFIX = -3
"""Parent value of a trie root hung under the cached prefix (it sees all prefix keys)."""

_REFERENCE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
_TRITON_DTYPES = {torch.float16, torch.bfloat16, torch.float32}
_TRITON_MAX_HEAD_DIM = 256


# --------------------------------------------------------------------------------------------
# Segment metadata
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class SegmentMeta:
    """Segments of a packed batch and the key intervals each one sees (int32 tensors).

    Segment ``s`` covers queries ``[seg_q_start[s], seg_q_end[s])`` of row ``seg_row[s]``; its
    ancestor key intervals are ``[kv_start[i], kv_end[i])`` for ``i`` in
    ``range(kv_ptr[s], kv_ptr[s + 1])`` (ascending, disjoint, all before the segment), seen by
    every query of the segment. The segment's own range (keys ``prefix_len + q``) is seen
    causally, or only on the diagonal where ``seg_self_only[s]`` is 1 (padding). Segments are
    ordered by row, then start. Key indices count the ``prefix_len`` cached keys first.
    """

    rows: int
    width: int
    """Queries per row (T); keys per row are ``prefix_len + width``."""
    prefix_len: int
    seg_row: torch.Tensor
    seg_q_start: torch.Tensor
    seg_q_end: torch.Tensor
    seg_self_only: torch.Tensor
    kv_ptr: torch.Tensor
    kv_start: torch.Tensor
    kv_end: torch.Tensor
    max_keys: int
    """The most keys any query sees (its depth + 1 for a trie node)."""
    longest: int
    """Length of the longest segment."""
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_segments(self) -> int:
        return int(self.seg_row.shape[0])

    @property
    def device(self) -> torch.device:
        return self.seg_row.device

    def to(self, device: torch.device | str) -> SegmentMeta:
        """The same metadata with its tensors on ``device`` (``self`` if already there)."""
        device = torch.device(device)
        if self.device == device or (device.index is None and self.device.type == device.type):
            return self
        cached = self._cache.get(("to", str(device)))
        if cached is not None:
            return cached
        moved = {
            name: getattr(self, name).to(device)
            for name in (
                "seg_row", "seg_q_start", "seg_q_end", "seg_self_only", "kv_ptr", "kv_start",
                "kv_end",
            )
        }  # fmt: skip
        out = SegmentMeta(
            self.rows, self.width, self.prefix_len, max_keys=self.max_keys,
            longest=self.longest, **moved,
        )  # fmt: skip
        self._cache[("to", str(device))] = out
        return out

    def intervals(self) -> list[list[tuple[int, int]]]:
        """Ancestor key intervals of every segment, as Python lists."""
        ptr = self.kv_ptr.tolist()
        ks, ke = self.kv_start.tolist(), self.kv_end.tolist()
        return [list(zip(ks[a:b], ke[a:b], strict=True)) for a, b in itertools.pairwise(ptr)]

    def dense_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The ``[B, 1, T, P + T]`` boolean mask (True = may attend) these segments describe."""
        device = self.device if device is None else torch.device(device)
        key = ("dense_mask", str(device))
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        T, P = self.width, self.prefix_len
        mask = torch.zeros(self.rows, T, P + T, dtype=torch.bool)
        tril = torch.ones(T, T, dtype=torch.bool).tril()
        rows = self.seg_row.tolist()
        starts, ends = self.seg_q_start.tolist(), self.seg_q_end.tolist()
        self_only = self.seg_self_only.tolist()
        for s, ivals in enumerate(self.intervals()):
            r, qs, qe = rows[s], starts[s], ends[s]
            for ks, ke in ivals:
                mask[r, qs:qe, ks:ke] = True
            n = qe - qs
            own = torch.eye(n, dtype=torch.bool) if self_only[s] else tril[:n, :n]
            mask[r, qs:qe, P + qs : P + qe] = own
        mask = mask[:, None].to(device)
        self._cache[key] = mask
        return mask

    def query_blocks(self, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(segment, first query) of every ``block_m``-query block of every segment, int32."""
        key = ("query_blocks", block_m)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        qs = self.seg_q_start.cpu().long()
        n = (self.seg_q_end.cpu().long() - qs + block_m - 1) // block_m
        seg = torch.repeat_interleave(torch.arange(len(n)), n)
        first = torch.cumsum(n, 0) - n
        q0 = qs[seg] + (torch.arange(len(seg)) - first[seg]) * block_m
        out = (seg.to(torch.int32).to(self.device), q0.to(torch.int32).to(self.device))
        self._cache[key] = out
        return out


def _parents_tensor(parents, width: int | None) -> torch.Tensor:
    if isinstance(parents, torch.Tensor):
        if parents.dim() != 2 or parents.is_floating_point() or parents.is_complex():
            raise ValueError(
                f"segment_meta: parents must be an integer [B, T] tensor, got {parents.dtype} "
                f"of shape {tuple(parents.shape)}"
            )
        par = parents.detach().to("cpu", torch.int64)
        if width is not None:
            if width < par.shape[1]:
                raise ValueError(f"segment_meta: width {width} < row length {par.shape[1]}")
            par = F.pad(par, (0, width - par.shape[1]), value=PAD)
        return par
    rows = [list(map(int, row)) for row in parents]
    longest = max((len(r) for r in rows), default=0)
    T = longest if width is None else width
    if T < longest:
        raise ValueError(f"segment_meta: width {width} < longest row {longest}")
    par = torch.full((len(rows), T), PAD, dtype=torch.int64)
    for b, row in enumerate(rows):
        par[b, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return par


def _validate(par: torch.Tensor, prefix_len: int) -> None:
    T = par.shape[1]
    idx = torch.arange(T)
    is_pad = par == PAD
    special = is_pad | (par == ROOT) | ((par == PREFIX) & (prefix_len > 0))
    bad = ~special & ((par < 0) | (par >= idx))
    bad |= (par >= 0) & torch.gather(is_pad, 1, par.clamp(min=0))
    if bool(bad.any()):
        b, i = (int(x) for x in bad.nonzero()[0])
        p = int(par[b, i])
        if p == PREFIX:
            why = "PREFIX, but there is no cached prefix (prefix_len = 0)"
        elif 0 <= p < i:
            why = "a padding position"
        else:
            why = "not an earlier position"
        raise ValueError(
            f"segment_meta: row {b}, position {i}: parent {p} is {why} (parents must be "
            f"{ROOT} for a root, {PREFIX} for a root under the cached prefix, {PAD} for padding, "
            f"or an earlier non-padding position)"
        )


def _packed_parents(batch, width: int | None) -> tuple[torch.Tensor, int]:
    """Parent array [B, T] and prefix length of a ``PackedBatch`` (tree or paths layout)."""
    B, T = batch.input_ids.shape
    if width is not None and width < T:
        raise ValueError(f"segment_meta: width {width} < batch width {T}")
    P = int(getattr(batch, "prefix_len", 0))
    par = torch.full((B, T if width is None else width), PAD, dtype=torch.int64)
    if getattr(batch, "layout", "tree") == "paths":
        # One root-to-leaf path per row; the [B, P + T] padding mask says how long each is and
        # whether it hangs under the prefix.
        lengths = batch.mask[:, P:].sum(1).tolist()
        under = batch.mask[:, :P].any(1).tolist() if P else [False] * B
        for r, n in enumerate(lengths):
            if n:
                par[r, :n] = torch.arange(-1, n - 1)
                par[r, 0] = PREFIX if under[r] else ROOT
        return par, P
    skips = list(getattr(batch, "skips", None) or [0] * len(batch.items))
    for item, (r, off), skip in zip(batch.items, batch.where, skips, strict=True):
        p = torch.tensor(item.trie.parent[skip:], dtype=torch.int64)
        local = torch.where(p >= skip, p - skip + off, PREFIX if skip else ROOT)
        par[r, off : off + len(p)] = local
    return par, P


def segment_meta(
    source, *, width: int | None = None, prefix_len: int = 0, device=None
) -> SegmentMeta:
    """Segment metadata of a packed batch.

    Args:
        source: a ``PackedBatch`` (from :func:`introspect.engine.packing.pack`, either
            layout, with or without a cached prefix), an integer ``[B, T]`` tensor of parent
            positions, or a sequence of per-row parent sequences. A parent is an earlier
            position of the same row, ``ROOT`` (-1) for a trie root, ``PREFIX`` (-3) for a root
            under the cached prefix, or ``PAD`` (-2) for a padding position; rows shorter than
            the longest are padded.
        width: row length T (default: the batch's / longest row's).
        prefix_len: cached prefix length P for parent arrays (a ``PackedBatch`` carries its own).
        device: where the tensors go (default CPU).
    """
    if hasattr(source, "items") and hasattr(source, "where") and hasattr(source, "input_ids"):
        par, prefix_len = _packed_parents(source, width)
    else:
        par = _parents_tensor(source, width)
    if prefix_len < 0:
        raise ValueError(f"segment_meta: prefix_len must be >= 0, got {prefix_len}")
    P = int(prefix_len)
    _validate(par, P)
    B, T = par.shape

    idx = torch.arange(T)
    is_pad = par == PAD
    prev_pad = F.pad(is_pad[:, :-1], (1, 0), value=False)
    start = torch.where(is_pad, ~prev_pad, par != idx - 1)
    if T:
        start[:, 0] = True
    seg_of = torch.cumsum(start.to(torch.int64).flatten(), 0).view(B, T) - 1

    seg_row, seg_qs, seg_qe, seg_self, kv_ptr = [], [], [], [], [0]
    kv_s: list[int] = []
    kv_e: list[int] = []
    ancestors: list[list[tuple[int, int]]] = []
    max_keys = longest = 0
    par_l = par.tolist()
    seg_of_l = seg_of.tolist()
    for b in range(B):
        starts = start[b].nonzero().flatten().tolist()
        for j, qs in enumerate(starts):
            qe = starts[j + 1] if j + 1 < len(starts) else T
            p = par_l[b][qs]
            if p >= 0:
                ps = seg_of_l[b][p]
                anc = [*ancestors[ps], (P + seg_qs[ps], P + p + 1)]
            elif p == PREFIX:
                anc = [(0, P)]
            else:
                anc = []
            ancestors.append(anc)
            seg_row.append(b)
            seg_qs.append(qs)
            seg_qe.append(qe)
            seg_self.append(int(p == PAD))
            kv_s.extend(a for a, _ in anc)
            kv_e.extend(e for _, e in anc)
            kv_ptr.append(len(kv_s))
            keys = 1 if p == PAD else qe - qs + sum(e - a for a, e in anc)
            max_keys = max(max_keys, keys)
            longest = max(longest, qe - qs)

    def i32(xs):
        return torch.tensor(xs, dtype=torch.int32, device=device)

    return SegmentMeta(
        B, T, P, i32(seg_row), i32(seg_qs), i32(seg_qe), i32(seg_self), i32(kv_ptr), i32(kv_s),
        i32(kv_e), max_keys, longest,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Reference: torch SDPA with the dense mask built from the metadata.
# --------------------------------------------------------------------------------------------


@_registry.register(OP, "reference", devices={"cpu", "cuda"}, dtypes=_REFERENCE_DTYPES)
def paired_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: SegmentMeta, scale: float
) -> torch.Tensor:
    """SDPA with ``meta.dense_mask()``; returns [B, Hq, T, Dh] in q's dtype."""
    mask = meta.dense_mask(q.device)
    gqa = q.shape[1] != k.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


# --------------------------------------------------------------------------------------------
# Blocks: SDPA on each row's independent tries only (what the CPU engine runs).
# --------------------------------------------------------------------------------------------


def independent_blocks(meta: SegmentMeta) -> list[tuple[int, int, int, bool]] | None:
    """``(row, start, end, padding)`` of each row's independent query ranges: a trie (from its
    root's segment to the segment before the next root) or a run of padding. No query of a
    block sees a key of the row outside it (the cached prefix aside), so attention can run on
    each block alone. ``None`` if a segment sees keys before its block (no such blocks)."""
    if "blocks" in meta._cache:
        return meta._cache["blocks"]
    P = meta.prefix_len
    rows, qs, qe = meta.seg_row.tolist(), meta.seg_q_start.tolist(), meta.seg_q_end.tolist()
    pad = meta.seg_self_only.tolist()
    blocks: list[list] = []
    for s, ivals in enumerate(meta.intervals()):
        is_root = all(e <= P for _, e in ivals)  # sees no key of its own row before it
        prev = blocks[-1] if blocks else None
        if not is_root and not pad[s]:
            first = min(a for a, e in ivals if e > P)
            if prev is None or prev[0] != rows[s] or prev[3] or first < P + prev[1]:
                meta._cache["blocks"] = None
                return None
        if (
            prev is not None and prev[0] == rows[s] and prev[2] == qs[s]
            and ((pad[s] and prev[3]) or (not pad[s] and not prev[3] and not is_root))
        ):  # fmt: skip
            prev[2] = qe[s]
        else:
            blocks.append([rows[s], qs[s], qe[s], bool(pad[s])])
    out = [(r, a, b, p) for r, a, b, p in blocks]
    meta._cache["blocks"] = out
    return out


@dataclass
class _BlockGroup:
    """Tries of similar length gathered into one padded SDPA call: query positions ``idx``
    [n, L] (into the flattened [B * T] row positions; past a trie's end they repeat its last
    one), their rows ``rows`` [n], which are real ``valid`` [n, L], and the mask [n, 1, L, P + L]
    (the prefix's keys, then the trie's own; a padded query sees only itself)."""

    idx: torch.Tensor
    rows: torch.Tensor
    valid: torch.Tensor
    mask: torch.Tensor


def _block_groups(meta: SegmentMeta, blocks, device) -> tuple[list[_BlockGroup], list]:
    """The tries of ``blocks`` in groups of lengths within a power of two of each other, and the
    padding blocks (cached on the metadata for this list of blocks)."""
    cached = meta._cache.get("block_groups")
    if cached is not None and cached[0] is blocks and cached[1] == str(device):
        return cached[2], cached[3]
    T, P = meta.width, meta.prefix_len
    dense = meta.dense_mask("cpu")
    tries = [(r, a, b) for r, a, b, pad in blocks if not pad]
    padding = [(r, a, b) for r, a, b, pad in blocks if pad]
    by_size: dict[int, list] = {}
    for r, a, b in tries:
        by_size.setdefault((b - a - 1).bit_length(), []).append((r, a, b))
    groups = []
    for members in by_size.values():
        n, L = len(members), max(b - a for _, a, b in members)
        idx = torch.empty(n, L, dtype=torch.long)
        valid = torch.zeros(n, L, dtype=torch.bool)
        mask = torch.zeros(n, 1, L, P + L, dtype=torch.bool)
        mask[:, 0, :, P:] = torch.eye(L, dtype=torch.bool)  # padded queries see themselves
        for i, (r, a, b) in enumerate(members):
            m = b - a
            idx[i, :m] = r * T + torch.arange(a, b)
            idx[i, m:] = r * T + b - 1
            valid[i, :m] = True
            mask[i, 0, :m, :P] = dense[r, 0, a:b, :P]
            mask[i, 0, :m, P : P + m] = dense[r, 0, a:b, P + a : P + b]
        rows = torch.tensor([r for r, _, _ in members], dtype=torch.long)
        groups.append(
            _BlockGroup(idx.to(device), rows.to(device), valid.to(device), mask.to(device))
        )
    meta._cache["block_groups"] = (blocks, str(device), groups, padding)
    return groups, padding


def paired_attention_blocks(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: SegmentMeta, scale: float
) -> torch.Tensor:
    """The reference's result, computing only the blocks of :func:`independent_blocks`: the
    tries, in groups of similar length, as one padded SDPA call per group (each trie's queries
    over the prefix's keys and its own, with the dense mask cut to them), and a padding query's
    own value (it attends to itself only). Same shapes as the reference; the keys of the row's
    other tries are left out instead of masked, so no work is spent on them."""
    blocks = independent_blocks(meta)
    if blocks is None:
        return paired_attention_reference(q, k, v, meta, scale)
    B, Hq, T, D = q.shape
    Hkv, P = k.shape[1], meta.prefix_len
    gqa = Hq != Hkv
    groups, padding = _block_groups(meta, blocks, q.device)
    flat_q = q.transpose(1, 2).reshape(B * T, Hq, D)
    flat_k = k[:, :, P:].transpose(1, 2).reshape(B * T, Hkv, D)
    flat_v = v[:, :, P:].transpose(1, 2).reshape(B * T, Hkv, D)
    out = q.new_empty(B * T, Hq, D)
    for g in groups:
        qs = flat_q[g.idx].transpose(1, 2)  # [n, Hq, L, D]
        ks, vs = flat_k[g.idx].transpose(1, 2), flat_v[g.idx].transpose(1, 2)
        if P:
            ks = torch.cat((k[g.rows, :, :P], ks), dim=2)
            vs = torch.cat((v[g.rows, :, :P], vs), dim=2)
        res = F.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=g.mask, scale=scale, enable_gqa=gqa
        ).transpose(1, 2)  # [n, L, Hq, D]
        out[g.idx[g.valid]] = res[g.valid]
    for r, a, b in padding:
        own = flat_v[r * T + a : r * T + b]
        out[r * T + a : r * T + b] = own.repeat_interleave(Hq // Hkv, dim=1) if gqa else own
    return out.view(B, T, Hq, D).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Triton: a torch custom op (forward only) around the kernel.
# --------------------------------------------------------------------------------------------

_TRITON_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor seg_row, Tensor seg_q_start, Tensor seg_q_end, "
    "Tensor seg_self_only, Tensor kv_ptr, Tensor kv_start, Tensor kv_end, Tensor blk_seg, "
    "Tensor blk_q0, int prefix_len, float scale, int block_m) -> Tensor"
)


def _empty_out(q: torch.Tensor) -> torch.Tensor:
    B, H, T, D = q.shape
    # [B, T, H, D] storage seen as [B, H, T, D]: transposing back (as HF does) is free.
    return q.new_empty(B, T, H, D).transpose(1, 2)


def _triton_kernel(q, k, v, seg_row, seg_q_start, seg_q_end, seg_self_only, kv_ptr, kv_start,
                   kv_end, blk_seg, blk_q0, prefix_len, scale, block_m):  # fmt: skip
    from introspect.kernels import paired_attention as kpa

    out = _empty_out(q)
    kpa.paired_attention_fwd(
        q, k, v, out, seg_row, seg_q_start, seg_q_end, seg_self_only, kv_ptr, kv_start, kv_end,
        blk_seg, blk_q0, prefix_len, scale, block_m,
    )  # fmt: skip
    return out


_triton_op = torch.library.custom_op(
    "introspect::paired_attention_fwd_triton", _triton_kernel, mutates_args=(),
    device_types=("cpu", "cuda"), schema=_TRITON_SCHEMA,
)  # fmt: skip


@_triton_op.register_fake
def _(q, k, v, *args):
    return _empty_out(q)


def _triton_accepts(sizes: dict) -> str | None:
    if sizes.get("grad"):
        return "it has no backward, and an input requires grad with grad enabled"
    if sizes["D"] > _TRITON_MAX_HEAD_DIM:
        return f"the Triton kernel takes head dims up to {_TRITON_MAX_HEAD_DIM}, got {sizes['D']}"
    return None


@_registry.register(
    OP, "triton", devices={"cpu", "cuda"}, dtypes=_TRITON_DTYPES, accepts=_triton_accepts
)
def paired_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: SegmentMeta, scale: float
) -> torch.Tensor:
    from introspect.kernels import paired_attention as kpa

    block_m = kpa.block_m_for(meta, q.dtype, q.shape[-1])
    blk_seg, blk_q0 = meta.query_blocks(block_m)
    return _triton_op(
        q, k, v, meta.seg_row, meta.seg_q_start, meta.seg_q_end, meta.seg_self_only, meta.kv_ptr,
        meta.kv_start, meta.kv_end, blk_seg, blk_q0, meta.prefix_len, float(scale), block_m,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# cpp: introspect._C on float32 CPU tensors (forward only)
# --------------------------------------------------------------------------------------------


def _cpp_accepts(sizes: dict) -> str | None:
    C = _native.load()
    if C is not None and not hasattr(C, "paired_attention_cpu"):
        return "introspect._C has no paired_attention_cpu (built before it was added): rebuild it"
    if sizes.get("grad"):
        return "it has no backward, and an input requires grad with grad enabled"
    return None


def _view(t: torch.Tensor) -> tuple[int, int, int, int]:
    return (t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _cpp_kernel(q, k, v, seg_row, seg_q_start, seg_q_end, seg_self_only, kv_ptr, kv_start,
                kv_end, prefix_len, scale):  # fmt: skip
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    segs = [
        t.contiguous()
        for t in (seg_row, seg_q_start, seg_q_end, seg_self_only, kv_ptr, kv_start, kv_end)
    ]
    out = _empty_out(q)
    _native.load().paired_attention_cpu(
        _view(q), _view(k), _view(v), _view(out), q.shape[1], k.shape[1], q.shape[3],
        prefix_len, scale, (*(t.data_ptr() for t in segs), segs[0].shape[0]),
        torch.get_num_threads(),
    )  # fmt: skip
    return out


# A custom op (forward only), so that profiles name it and autograd sees it as opaque.
_cpp_op = torch.library.custom_op(
    "introspect::paired_attention_cpp", _cpp_kernel, mutates_args=(), device_types=("cpu",),
    schema=(
        "(Tensor q, Tensor k, Tensor v, Tensor seg_row, Tensor seg_q_start, Tensor seg_q_end, "
        "Tensor seg_self_only, Tensor kv_ptr, Tensor kv_start, Tensor kv_end, int prefix_len, "
        "float scale) -> Tensor"
    ),
)  # fmt: skip


@_cpp_op.register_fake
def _(q, k, v, *args):
    return _empty_out(q)


@_registry.register(OP, "cpp", devices={"cpu"}, dtypes={torch.float32}, accepts=_cpp_accepts)
def paired_attention_cpp(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: SegmentMeta, scale: float
) -> torch.Tensor:
    """The C++ kernel: [B, Hq, T, Dh] (a transposed view of [B, T, Hq, Dh] storage)."""
    return _cpp_op(
        q, k, v, meta.seg_row, meta.seg_q_start, meta.seg_q_end, meta.seg_self_only,
        meta.kv_ptr, meta.kv_start, meta.kv_end, meta.prefix_len, float(scale),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _autocast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """q, k, v as SDPA sees them under autocast: inside an autocast region for their device
    type, every float16/bfloat16/float32 input is cast to the autocast dtype (float64 is left
    as it is), so the attention and its output are in that dtype. Under autocast a Llama-style
    model hands over q, k in float32 (RoPE's float32 cos/sin promote them) and v in the autocast
    dtype, and a cached prefix can promote v too. Outside autocast nothing changes."""
    device_type = q.device.type
    if not torch.is_autocast_enabled(device_type):
        return q, k, v
    low = torch.get_autocast_dtype(device_type)
    return tuple(t if t.dtype in (low, torch.float64) else t.to(low) for t in (q, k, v))


def paired_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: SegmentMeta,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of every packed trie node over itself and its ancestors.

    Args:
        q: [B, Hq, T, Dh] queries (RoPE already applied).
        k, v: [B, Hkv, P + T, Dh] keys and values (P = ``meta.prefix_len`` cached prefix keys
            first, then the row's own); Hq must be a multiple of Hkv.
        meta: :class:`SegmentMeta` of the batch (from :func:`segment_meta`), B rows of width T.
        scale: softmax scale (default ``Dh ** -0.5``).
        backend: ``"auto"``, ``"reference"``, ``"cpp"`` or ``"triton"`` (the last two forward
            only).

    Returns:
        [B, Hq, T, Dh] in q's dtype. Padding positions attend to themselves only.

    Under autocast (``torch.autocast`` for the inputs' device type) the op does what
    ``scaled_dot_product_attention`` does there: q, k and v are cast to the autocast dtype
    (float64 inputs excepted), the attention runs in it and the output is in it. Outside
    autocast q, k and v must share a dtype.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.floating(OP, name, t, 4)
    _checks.same_device(OP, q=q, k=k, v=v)
    q, k, v = _autocast(q, k, v)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"{OP}: q, k, v must share a dtype (outside autocast), got {q.dtype}, {k.dtype}, "
            f"{v.dtype}"
        )
    if not isinstance(meta, SegmentMeta):
        raise TypeError(f"{OP}: meta must be a SegmentMeta (see segment_meta), got {type(meta)}")
    B, Hq, T, D = q.shape
    if (meta.rows, meta.width) != (B, T):
        raise ValueError(
            f"{OP}: meta describes {meta.rows} rows of width {meta.width}, but q has B = {B}, "
            f"T = {T}"
        )
    Tk = meta.prefix_len + T
    if k.shape != v.shape or k.shape[0] != B or k.shape[2:] != (Tk, D):
        raise ValueError(
            f"{OP}: k and v must be [B, Hkv, P + T, Dh] = [{B}, Hkv, {Tk}, {D}] (P = "
            f"{meta.prefix_len} cached prefix keys), got k {list(k.shape)} and v {list(v.shape)}"
        )
    Hkv = k.shape[1]
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"{OP}: query heads ({Hq}) must be a multiple of key/value heads ({Hkv})")
    if scale is None:
        scale = D**-0.5
    meta = meta.to(q.device)
    if B * T == 0 or Hq == 0 or D == 0:
        return q.new_zeros(q.shape)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    sizes = {"B": B, "Hq": Hq, "Hkv": Hkv, "T": T, "P": meta.prefix_len, "D": D, "grad": grad}
    _, impl = _registry.select(OP, backend, q.device, q.dtype, sizes)
    return impl.fn(q, k, v, meta, float(scale))
