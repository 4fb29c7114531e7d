"""Attention over packed token tries, driven by segment metadata (Triton, forward only).

A packed row is cut into segments (see :mod:`introspect.ops.paired_attention`): runs of
positions whose parent is the position before. Every query of a segment sees the segment's
ancestor key intervals in full and its own range causally (padding segments: the diagonal only).
Keys may start with ``prefix_len`` cached prefix positions: row position ``t`` is key
``prefix_len + t``, and the intervals are in key indices.

Grid: ``(query blocks, query heads)``. A query block is ``BLOCK_M`` consecutive queries of one
segment (``blk_seg``, ``blk_q0`` from ``SegmentMeta.query_blocks``), so a block never straddles
two segments and all its queries see the same ancestor intervals. Each program

1. loads its ``[BLOCK_M, BLOCK_D]`` queries once;
2. walks the segment's ancestor intervals ``[kv_start[i], kv_end[i])`` in ``BLOCK_N`` key tiles
   with no mask other than the interval's end;
3. walks its own segment from the segment start (the block's first query for a self-only
   segment) up to its last query, masking key > query (key != query when self-only);

keeping a flash-attention online softmax (running max ``m``, normaliser ``l`` and the fp32
accumulator) in base 2 (``qk_scale`` folds in log2(e)). Keys outside the visible intervals are
never loaded and no mask is read from memory. The kv head of query head ``h`` is
``h // GROUP`` (grouped-query attention).

Products run in the input dtype with fp32 accumulation (``input_precision="ieee"`` keeps fp32
inputs off TF32); the probabilities are cast to the value dtype for the ``p @ v`` product, as in
flash attention. Head dims that are not a power of two are padded to one (``BLOCK_D``, at
least 16 for ``tl.dot``) with masked loads.

The Triton interpreter multiplies the raw storage bits of bfloat16 operands in ``tl.dot`` and
truncates fp32 -> bfloat16 casts, so under ``TRITON_INTERPRET=1`` bfloat16 operands are widened
to fp32 first (exactly) and roundings to bfloat16 are done on the bits, to nearest even: the
results are those of bfloat16 products with fp32 accumulation.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import check_device, device_ctx, interpreting

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)
MAX_HEAD_DIM = 256
_LOG2E = 1.0 / math.log(2.0)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _to_bf16(x, INTERPRET_BF16: tl.constexpr):
    """fp32 -> bfloat16, rounding to nearest even (the interpreter's own cast truncates)."""
    if INTERPRET_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(tl.bfloat16)


@triton.jit
def _paired_attention_tile(
    q, k_base, v_base, k_stride_t, v_stride_t, offs_mk, offs_n, offs_d, d_mask, n_end,
    m_i, l_i, acc, qk_scale,
    CAUSAL: tl.constexpr, SELF_ONLY_CHECK: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, DOT_PRECISION: tl.constexpr, self_only,
):  # fmt: skip
    """One key tile of the online softmax: returns the updated (m, l, acc)."""
    n_in = offs_n < n_end
    offs_n64 = offs_n.to(tl.int64)
    kv_mask = n_in[:, None] & d_mask[None, :]
    k = tl.load(k_base + offs_n64[:, None] * k_stride_t + offs_d[None, :], mask=kv_mask, other=0.0)
    if INTERPRET_BF16:
        k = k.to(tl.float32)
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    visible = n_in[None, :]
    if CAUSAL:
        visible = visible & (offs_n[None, :] <= offs_mk[:, None])
    if SELF_ONLY_CHECK:
        visible = visible & ((offs_n[None, :] == offs_mk[:, None]) | (self_only == 0))
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    # A row with nothing visible yet keeps m = -inf: shift by 0 so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(qk - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + offs_n64[:, None] * v_stride_t + offs_d[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None]
    if INTERPRET_BF16:
        p = _to_bf16(p, INTERPRET_BF16).to(tl.float32)
        v = v.to(tl.float32)
    else:
        p = p.to(v.dtype)
    acc = tl.dot(p, v, acc=acc, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _paired_attention_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, O_ptr,
    BLK_SEG_ptr, BLK_Q0_ptr, SEG_ROW_ptr, SEG_QS_ptr, SEG_QE_ptr, SEG_SELF_ptr,
    KV_PTR_ptr, KV_START_ptr, KV_END_ptr,
    q_stride_b, q_stride_h, q_stride_t,
    k_stride_b, k_stride_h, k_stride_t,
    v_stride_b, v_stride_h, v_stride_t,
    o_stride_b, o_stride_h, o_stride_t,
    prefix_len, qk_scale, head_dim,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    INTERPRET_BF16: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    blk = tl.program_id(0)
    h = tl.program_id(1)
    seg = tl.load(BLK_SEG_ptr + blk)
    q0 = tl.load(BLK_Q0_ptr + blk)
    row = tl.load(SEG_ROW_ptr + seg).to(tl.int64)
    qs = tl.load(SEG_QS_ptr + seg)
    qe = tl.load(SEG_QE_ptr + seg)
    self_only = tl.load(SEG_SELF_ptr + seg)
    h64 = h.to(tl.int64)
    kvh = h64 // GROUP

    offs_m = q0 + tl.arange(0, BLOCK_M)
    offs_mk = offs_m + prefix_len  # the queries' own key indices
    offs_d = tl.arange(0, BLOCK_D)
    m_in = offs_m < qe
    d_mask = offs_d < head_dim
    offs_m64 = offs_m.to(tl.int64)
    q_ptrs = Q_ptr + row * q_stride_b + h64 * q_stride_h + offs_m64[:, None] * q_stride_t
    q = tl.load(q_ptrs + offs_d[None, :], mask=m_in[:, None] & d_mask[None, :], other=0.0)
    if INTERPRET_BF16:
        q = q.to(tl.float32)
    k_base = K_ptr + row * k_stride_b + kvh * k_stride_h
    v_base = V_ptr + row * v_stride_b + kvh * v_stride_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Ancestor intervals: every query of the block sees every key.
    first = tl.load(KV_PTR_ptr + seg)
    last = tl.load(KV_PTR_ptr + seg + 1)
    for i in range(first, last):
        ks = tl.load(KV_START_ptr + i)
        ke = tl.load(KV_END_ptr + i)
        for n0 in range(ks, ke, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            m_i, l_i, acc = _paired_attention_tile(
                q, k_base, v_base, k_stride_t, v_stride_t, offs_mk, offs_n, offs_d, d_mask, ke,
                m_i, l_i, acc, qk_scale, False, False, INTERPRET_BF16, DOT_PRECISION,
                self_only,
            )  # fmt: skip

    # Own segment: causal (diagonal only for padding), up to the block's last query.
    own_lo = tl.where(self_only != 0, q0, qs) + prefix_len
    own_hi = tl.minimum(qe, q0 + BLOCK_M) + prefix_len
    for n0 in range(own_lo, own_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m_i, l_i, acc = _paired_attention_tile(
            q, k_base, v_base, k_stride_t, v_stride_t, offs_mk, offs_n, offs_d, d_mask, own_hi,
            m_i, l_i, acc, qk_scale, True, True, INTERPRET_BF16, DOT_PRECISION,
            self_only,
        )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    o_ptrs = O_ptr + row * o_stride_b + h64 * o_stride_h + offs_m64[:, None] * o_stride_t
    if INTERPRET_BF16:
        out = _to_bf16(out, INTERPRET_BF16)
    tl.store(
        o_ptrs + offs_d[None, :],
        out.to(O_ptr.dtype.element_ty),
        mask=m_in[:, None] & d_mask[None, :],
    )


# ----------------------------------------------------------------------------- host side


# GPU launch configurations per (operand kind, BLOCK_D >= 64): (largest BLOCK_M, BLOCK_N,
# num_warps, num_stages). float32 runs tl.dot on CUDA cores (input_precision="ieee"), whose
# operand layouts keep whole rows in registers; bfloat16/float16 run on tensor cores. Triton
# 3.9's ahead-of-time compile (triton.compile for GPUTarget("cuda", cc, 32), no GPU needed) gives
# registers per thread at the largest BLOCK_M on sm_80 / sm_86 / sm_90, and shared memory:
#   fp32  64: 110 / 94 / 94,   28 KiB    bf16  64: 180 / 179 / 122, 12 KiB
#   fp32 128: 175 / 128 / 117, 52 KiB    bf16 128: 180 / 184 / 182, 18 KiB
#   fp32 256: 126 / 128 / 118, 49 KiB    bf16 256: 186 / 194 / 233, 25 KiB
# (float16 as bfloat16), with no spills, within the 99 KiB of shared memory of sm_86/sm_89, the
# smallest limit (sm_80: 163 KiB, sm_90: 227 KiB). tests/kernels/triton_aot.py recompiles the
# table for sm_80, sm_86 and sm_90 (and the smallest BLOCK_M) and checks both. Larger tiles spill
# on sm_80 (16-bit 64 x 64 at head dim 64, 32 x 32 at 256) or, in fp32, everywhere; 64 x 64
# fp32 tiles need 112 KiB at head dim 128, over sm_86's limit.
GPU_CONFIGS: dict[tuple[str, int], tuple[int, int, int, int]] = {
    ("fp32", 64): (32, 32, 8, 2),
    ("fp32", 128): (32, 32, 8, 2),
    ("fp32", 256): (16, 16, 8, 2),
    ("16bit", 64): (64, 32, 8, 2),
    ("16bit", 128): (32, 32, 8, 2),
    ("16bit", 256): (16, 32, 8, 2),
}
#: Shared memory one program may use, per compute capability (bytes; sm_89 as sm_86).
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
_INTERPRETER_CONFIG = (64, 128, 4, 1)  # few, wide tiles: the interpreter's cost is per op


def block_d_for(head_dim: int) -> int:
    """Head dims are padded to a power of two, at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(head_dim))


def gpu_config(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int, int]:
    """(largest BLOCK_M, BLOCK_N, num_warps, num_stages) for this dtype and head dim."""
    kind = "fp32" if dtype == torch.float32 else "16bit"
    return GPU_CONFIGS[(kind, max(64, block_d_for(head_dim)))]


def _config(dtype: torch.dtype, head_dim: int) -> tuple[int, int, int, int]:
    return _INTERPRETER_CONFIG if interpreting() else gpu_config(dtype, head_dim)


def block_m_for(meta, dtype: torch.dtype, head_dim: int) -> int:
    """Queries per program: the longest segment rounded up to a power of two, at least 16 and
    at most what this dtype and head dim allow (a longer segment takes several blocks)."""
    return max(16, min(_config(dtype, head_dim)[0], triton.next_power_of_2(max(1, meta.longest))))


def _launch_config(dtype: torch.dtype, head_dim: int) -> dict[str, int]:
    _, block_n, warps, stages = _config(dtype, head_dim)
    return {"BLOCK_N": block_n, "num_warps": warps, "num_stages": stages}


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def paired_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    seg_row: torch.Tensor,
    seg_q_start: torch.Tensor,
    seg_q_end: torch.Tensor,
    seg_self_only: torch.Tensor,
    kv_ptr: torch.Tensor,
    kv_start: torch.Tensor,
    kv_end: torch.Tensor,
    blk_seg: torch.Tensor,
    blk_q0: torch.Tensor,
    prefix_len: int,
    scale: float,
    block_m: int,
) -> torch.Tensor:
    """Writes attention of q [B, Hq, T, D] over k, v [B, Hkv, P + T, D] (``prefix_len`` = P
    cached keys first) into ``out`` (q's shape, any strides with a unit last one). Metadata
    tensors are int32 on q's device; the query blocks must have been cut with ``block_m``
    queries."""
    if q.dtype not in SUPPORTED_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(
            f"q, k, v must share one of {SUPPORTED_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    check_device(q, "q")
    B, Hq, T, D = q.shape
    Hkv = k.shape[1]
    if Hq % Hkv or tuple(k.shape) != (B, Hkv, prefix_len + T, D) or k.shape != v.shape:
        raise ValueError(f"bad shapes: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"head dim {D} > {MAX_HEAD_DIM}")
    if out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError("out must have q's shape and a unit last stride")
    if block_m & (block_m - 1) or block_m < 16:
        raise ValueError(f"block_m must be a power of two >= 16, got {block_m}")
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    n_blocks = blk_seg.shape[0]
    if n_blocks == 0 or Hq == 0:
        return out
    block_d = block_d_for(D)
    cfg = _launch_config(q.dtype, D)
    interpret_bf16 = interpreting() and q.dtype == torch.bfloat16
    with device_ctx(q.device):
        _paired_attention_fwd_kernel[(n_blocks, Hq)](
            q, k, v, out,
            blk_seg, blk_q0, seg_row, seg_q_start, seg_q_end, seg_self_only,
            kv_ptr, kv_start, kv_end,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            prefix_len, scale * _LOG2E, D,
            GROUP=Hq // Hkv, BLOCK_M=block_m, BLOCK_D=block_d,
            INTERPRET_BF16=interpret_bf16,
            DOT_PRECISION="ieee" if q.dtype == torch.float32 or interpret_bf16 else "tf32",
            **cfg,
        )  # fmt: skip
    return out
