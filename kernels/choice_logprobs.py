"""Log-probabilities of chosen tokens under an LM head, without the [M, V] logits (Triton).

Notation: ``H`` hidden states [M, D], ``W`` head weight [V, D], optional bias ``b`` [V],
choice ids ``ids`` [M, C] (``-1`` = padding), optional soft-cap ``cap``::

    logit[m, v] = H[m] · W[v] + b[v]              (then cap * tanh(logit / cap) if capped)
    lse[m]      = log Σ_v exp(logit[m, v])
    logp[m, c]  = logit[m, ids[m, c]] - lse[m]     (-inf where ids[m, c] == -1)

Pass 1: ``_choice_logprobs_lse_kernel``
---------------------------------------
A 2-D grid of (row block, vocabulary split). Program (i, s) owns rows
``i*BLOCK_M .. i*BLOCK_M + BLOCK_M - 1`` and the vocabulary tiles ``s, s + S, s + 2S, ...``
(``S`` splits). For each tile it accumulates ``acc[BLOCK_M, BLOCK_V] = H_blk @ W_tileᵀ`` over
``D`` in ``BLOCK_D`` chunks with ``tl.dot`` (float32 accumulation), adds the bias, applies the
soft-cap, masks columns past ``V`` with ``-inf``, and folds the tile into a running pair per row,
as fused linear-cross-entropy kernels do::

    m  = running maximum,   s = Σ exp(logit - shift(m)),   shift(m) = m if finite else 0

The shift keeps ``inf - inf`` out of every exponent; rescaling factors are clamped to ``<= 1``,
so an empty running sum is never multiplied by ``inf``. Each program writes its pair to the
``[S, M]`` partial buffers.

Pass 2: ``_choice_logprobs_pick_kernel``
----------------------------------------
One program per row block merges the ``S`` partial pairs into ``lse``, then, for each choice
column, gathers the chosen rows of ``W`` and takes their dot products with the hidden row in
float32 (``Σ_d H[m, d] * W[ids[m, c], d]``), adds bias and soft-cap, and writes ``logp``.

Precision: 16-bit inputs of one dtype go to ``tl.dot`` as they are (products of 16-bit
floats are exact in float32, accumulation is float32); float32 or mixed inputs are converted to
float32 and multiplied with ``input_precision="ieee"``, so GPUs do not silently use TF32.
NaN in any logit of a row makes that row's ``lse`` (and ``logp``) NaN; a ``+inf`` logit makes
``lse = inf``, as a dense ``logsumexp`` does.

Tiles: on GPUs from ``_GPU_TILES`` (per input kind); under the interpreter
(``TRITON_INTERPRET=1``) large tiles keep the number of interpreted steps low.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_2d, clamp_pow2, device_ctx, device_programs, interpreting, load_tile

# Hidden-state / weight dtypes the kernels accept.
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _choice_logprobs_tanh(x):
    """tanh in float32 from exp of a non-positive argument (no overflow); a short series near
    zero, where 1 - exp(-2|x|) would cancel."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    a2 = a * a
    small = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0)))
    t = tl.where(a < 0.05, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _choice_logprobs_shift(m):
    """m where finite, else 0."""
    finite = (m == m) & (tl.abs(m) < float("inf"))
    return tl.where(finite, m, 0.0)


@triton.jit
def _choice_logprobs_lse_kernel(
    H_ptr, W_ptr, B_ptr, PART_M_ptr, PART_S_ptr,
    M, V, D,
    H_row_stride, W_row_stride, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    num_tiles = tl.cdiv(V, BLOCK_V)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    offs_v = tl.arange(0, BLOCK_V)
    offs_d = tl.arange(0, BLOCK_D)

    m_run = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    s_run = tl.zeros([BLOCK_M], dtype=tl.float32)
    for tile in range(split, num_tiles, num_splits):
        cols = tile * BLOCK_V + offs_v
        col_mask = cols < V
        cols64 = cols.to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_V], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + offs_d
            d_mask = ds < D
            h = load_tile(H_ptr, rows64, H_row_stride, ds, row_mask, d_mask)
            w = load_tile(W_ptr, cols64, W_row_stride, ds, col_mask, d_mask)
            if DOT_FP32:
                acc = tl.dot(
                    h.to(tl.float32), tl.trans(w.to(tl.float32)), acc=acc, input_precision="ieee"
                )
            else:
                acc = tl.dot(h, tl.trans(w), acc=acc)
        if HAS_BIAS:
            acc += tl.load(B_ptr + cols, mask=col_mask, other=0.0)[None, :]
        if SOFTCAP:
            acc = softcap * _choice_logprobs_tanh(acc / softcap)
        acc = tl.where(col_mask[None, :], acc, float("-inf"))

        m_new = tl.maximum(m_run, tl.max(acc, axis=1))
        sh_new = _choice_logprobs_shift(m_new)
        rescale = tl.exp(tl.minimum(_choice_logprobs_shift(m_run) - sh_new, 0.0))
        s_run = s_run * rescale + tl.sum(tl.exp(acc - sh_new[:, None]), axis=1)
        m_run = m_new

    out = split.to(tl.int64) * M + rows64
    tl.store(PART_M_ptr + out, m_run, mask=row_mask)
    tl.store(PART_S_ptr + out, s_run, mask=row_mask)


@triton.jit
def _choice_logprobs_pick_kernel(
    H_ptr, W_ptr, B_ptr, IDS_ptr, PART_M_ptr, PART_S_ptr, LOGP_ptr, LSE_ptr,
    M, V, D, C, S,
    H_row_stride, W_row_stride, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)

    # Merge the per-split (max, sum) pairs.
    m_run = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    s_run = tl.zeros([BLOCK_M], dtype=tl.float32)
    for sp in range(0, S):
        at = sp * M + rows64
        pm = tl.load(PART_M_ptr + at, mask=row_mask, other=float("-inf"))
        ps = tl.load(PART_S_ptr + at, mask=row_mask, other=0.0)
        m_new = tl.maximum(m_run, pm)
        sh_new = _choice_logprobs_shift(m_new)
        keep = tl.exp(tl.minimum(_choice_logprobs_shift(m_run) - sh_new, 0.0))
        take = tl.exp(tl.minimum(_choice_logprobs_shift(pm) - sh_new, 0.0))
        s_run = s_run * keep + ps * take
        m_run = m_new
    # Rows past M have no sum; keep log(0) to the rows that really have one.
    lse = _choice_logprobs_shift(m_run) + tl.log(tl.where(row_mask, s_run, 1.0))
    tl.store(LSE_ptr + rows64, lse, mask=row_mask)

    for c in range(0, C):
        ids = tl.load(IDS_ptr + rows64 * C + c, mask=row_mask, other=-1)
        valid = row_mask & (ids >= 0) & (ids < V)
        safe = tl.where(valid, ids, 0).to(tl.int64)
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + offs_d
            d_mask = ds < D
            h = load_tile(H_ptr, rows64, H_row_stride, ds, row_mask, d_mask).to(tl.float32)
            w = load_tile(W_ptr, safe, W_row_stride, ds, valid, d_mask).to(tl.float32)
            acc += tl.sum(h * w, axis=1)
        if HAS_BIAS:
            acc += tl.load(B_ptr + safe, mask=valid, other=0.0)
        if SOFTCAP:
            acc = softcap * _choice_logprobs_tanh(acc / softcap)
        # Padding (-1) has probability zero; an id past V (rejected by the caller) gives NaN.
        logp = tl.where(ids < 0, float("-inf"), tl.where(valid, acc - lse, float("nan")))
        tl.store(LOGP_ptr + rows64 * C + c, logp, mask=row_mask)


# ----------------------------------------------------------------------------- host side


def _target_programs(device: torch.device) -> int:
    """Programs of pass 1 that keep the device busy (few when interpreting)."""
    return device_programs(device, 4)


# GPU tiles of pass 1, keyed by whether tl.dot runs in float32 ("ieee", evaluated with FMAs,
# so operands stay small) or on 16-bit inputs (tensor cores):
# (BLOCK_M, BLOCK_V, BLOCK_D, num_warps, num_stages).
_GPU_TILES = {True: (64, 64, 32, 4, 2), False: (64, 128, 64, 8, 3)}


def _lse_config(M: int, D: int, dot_fp32: bool) -> dict[str, int]:
    if interpreting():
        bm, bv, bd, warps, stages = 64, 256, 128, 4, 1
    else:
        bm, bv, bd, warps, stages = _GPU_TILES[dot_fp32]
    return {
        "BLOCK_M": clamp_pow2(M, 16, bm),
        "BLOCK_V": bv,
        "BLOCK_D": clamp_pow2(D, 16, bd),
        "num_warps": warps,
        "num_stages": stages,
    }


def _pick_config(M: int, D: int) -> dict[str, int]:
    bm, bd = (64, 256) if interpreting() else (16, 128)
    return {"BLOCK_M": clamp_pow2(M, 16, bm), "BLOCK_D": clamp_pow2(D, 16, bd), "num_warps": 4}


def choice_logprobs_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    choices: torch.Tensor,
    softcap: float | None,
    *,
    splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(logp [M, C], lse [M])``, both float32.

    ``hidden`` [M, D] and ``weight`` [V, D] may differ in dtype (then both are multiplied in
    float32); ``choices`` [M, C] holds int64 ids in ``[0, V)`` or ``-1`` for padding.
    ``splits`` overrides the number of vocabulary splits of pass 1 (default: enough programs
    to fill the device).
    """
    hidden = check_2d(hidden, "hidden", SUPPORTED_DTYPES)
    weight = check_2d(weight, "weight", SUPPORTED_DTYPES)
    M, D = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != D:
        raise ValueError(f"weight must be [V, {D}], got {tuple(weight.shape)}")
    if V < 1 or D < 1:
        raise ValueError(f"need V >= 1 and D >= 1, got V = {V}, D = {D}")
    if choices.dim() != 2 or choices.shape[0] != M:
        raise ValueError(f"choices must be [{M}, C], got {tuple(choices.shape)}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    dev = hidden.device
    f32 = torch.float32
    C = choices.shape[1]
    ids = choices.to(torch.int64).contiguous()
    if bias is not None:
        if tuple(bias.shape) != (V,):
            raise ValueError(f"bias must be [{V}], got {tuple(bias.shape)}")
        bias = bias.to(f32).contiguous()

    logp = torch.empty((M, C), dtype=f32, device=dev)
    lse = torch.empty((M,), dtype=f32, device=dev)
    if M == 0:
        return logp, lse

    dot_fp32 = not (hidden.dtype == weight.dtype and hidden.dtype != f32)
    if interpreting() and hidden.dtype == torch.bfloat16:
        # The interpreter mis-evaluates tl.dot on bfloat16 operands; float32 gives the same
        # products (bfloat16 products are exact in float32).
        dot_fp32 = True
    cfg = _lse_config(M, D, dot_fp32)
    row_blocks = triton.cdiv(M, cfg["BLOCK_M"])
    num_tiles = triton.cdiv(V, cfg["BLOCK_V"])
    if splits is None:
        splits = triton.cdiv(_target_programs(dev), row_blocks)
    splits = max(1, min(splits, num_tiles, 65535))
    part_m = torch.empty((splits, M), dtype=f32, device=dev)
    part_s = torch.empty((splits, M), dtype=f32, device=dev)
    cap = float(softcap) if softcap is not None else 1.0
    b_arg = bias if bias is not None else part_m  # unused placeholder

    with device_ctx(dev):
        _choice_logprobs_lse_kernel[(row_blocks, splits)](
            hidden, weight, b_arg, part_m, part_s,
            M, V, D, hidden.stride(0), weight.stride(0), cap,
            HAS_BIAS=bias is not None, SOFTCAP=softcap is not None, DOT_FP32=dot_fp32, **cfg,
        )  # fmt: skip
        pcfg = _pick_config(M, D)
        _choice_logprobs_pick_kernel[(triton.cdiv(M, pcfg["BLOCK_M"]),)](
            hidden, weight, b_arg, ids, part_m, part_s, logp, lse,
            M, V, D, C, splits, hidden.stride(0), weight.stride(0), cap,
            HAS_BIAS=bias is not None, SOFTCAP=softcap is not None, **pcfg,
        )  # fmt: skip
    return logp, lse
