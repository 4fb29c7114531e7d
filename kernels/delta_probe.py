"""Fused linear probe on hidden-state deltas (Triton).

Notation: ``hx``, ``hm`` are hidden states ``[N, D]``; the probe input is

* ``z = hm - hx`` in *difference* mode (``hm`` given), or
* ``z = hx`` in *direct* mode (``hm is None``).

With weights ``w [P, D]``, optional bias ``b [P]`` and optional target ``t [N, P]``::

    pred[n, p]  = sum_d z[n, d] * w[p, d] + b[p]
    resid       = pred - t
    sse[p]      = sum_n resid[n, p]^2
    G[p, d]     = sum_n resid[n, p] * z[n, d]
    gb[p]       = sum_n resid[n, p]

Forward algorithm
-----------------
A 1-D grid of programs; program ``i`` owns row blocks ``i, i + nprog, i + 2*nprog, ...``.
For each of its row blocks it

1. walks the ``D`` axis in ``BLOCK_D`` chunks and accumulates
   ``acc[BLOCK_N, BLOCK_P] += z_chunk @ w_chunk^T`` with ``tl.dot`` in fp32
   (``P`` is padded to ``BLOCK_P = max(16, next_pow2(P))`` with masked loads, since
   ``tl.dot`` needs every dimension >= 16);
2. writes ``pred`` (and, with a target, ``resid``), and adds the block's contribution to
   register accumulators for ``sse`` and ``gb``, stored once per program at the end.

With a target, ``G = resid^T z`` follows as the weight-gradient kernel of the backward pass
with ``g = resid``: each program keeps its ``[BLOCK_P, BLOCK_D]`` tile of ``G`` in registers
across all of its rows and stores it once. ``G`` needs a row's full residual, hence its full
dot product over ``D``, so the hidden states are read twice (once per kernel); the partial
``G`` is written once per program, never re-read and re-written per row block.

No atomics are used: every program writes its own slice of the partial buffers
(``G``, ``sse``, ``gb``), and the host reduces them with ``torch.sum(0)``, so results are
deterministic run to run.

Backward
--------
``gh = g @ w`` (``[N, P] @ [P, D]``) is a plain tiled product over a 2-D grid of
(row block, D block); it is written as ``-gh`` into ``ghx`` in difference mode (``+gh``
in direct mode) and ``+gh`` into ``ghm``, cast to the hidden-state dtype.
``gw = g^T z`` uses a 2-D grid of (D block, row split): each program keeps its
``[BLOCK_P, BLOCK_D]`` tile in registers while looping over its rows and stores it once
into a partial buffer ``[splits, P, D]`` that the host sums.

Tiles: on GPUs the tile shapes come from the per-kernel tables ``_GPU_FWD``,
``_GPU_BWD_H``, ``_GPU_BWD_W`` (8 warps, one pipeline stage); under the interpreter
(``TRITON_INTERPRET=1``) large 256-wide tiles keep the number of interpreted steps low.
``P`` is limited to ``MAX_P = 64``.

All products run with ``input_precision="ieee"`` and fp32 accumulation: inputs are
converted to fp32 before ``tl.dot``, so GPUs do not silently fall back to TF32.
Out-of-range lanes are loaded as zeros and masked on store; real values (NaN/inf
included) are never replaced, so non-finite inputs propagate like in a dense reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_2d, clamp_pow2, device_ctx, device_programs, interpreting, load_tile

# Hidden-state dtypes the kernels accept (loads are converted to fp32 in-register).
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

# Largest number of probe outputs P the kernels handle (P is padded to a power of two >= 16).
MAX_P = 64

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _delta_probe_load_z(
    HX_ptr, HM_ptr, HX_row_stride, HM_row_stride, rows, cols, mask, HAS_HM: tl.constexpr
):
    """Load a [len(rows), len(cols)] tile of z in fp32 (zeros outside ``mask``)."""
    r = rows.to(tl.int64)
    z = tl.load(HX_ptr + r[:, None] * HX_row_stride + cols[None, :], mask=mask, other=0.0)
    z = z.to(tl.float32)
    if HAS_HM:
        m = tl.load(HM_ptr + r[:, None] * HM_row_stride + cols[None, :], mask=mask, other=0.0)
        z = m.to(tl.float32) - z
    return z


@triton.jit
def _delta_probe_fwd_kernel(
    HX_ptr, HM_ptr, W_ptr, B_ptr, T_ptr,
    PRED_ptr, RESID_ptr, SSE_part_ptr, GB_part_ptr,
    N, D, P,
    HX_row_stride, HM_row_stride, W_row_stride,
    HAS_HM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_TARGET: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    num_row_blocks = tl.cdiv(N, BLOCK_N)

    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    p_mask = offs_p < P
    if HAS_BIAS:
        bias = tl.load(B_ptr + offs_p, mask=p_mask, other=0.0).to(tl.float32)

    sse_acc = tl.zeros([BLOCK_P], dtype=tl.float32)
    gb_acc = tl.zeros([BLOCK_P], dtype=tl.float32)

    for rb in range(pid, num_row_blocks, nprog):
        rows = rb * BLOCK_N + offs_n
        row_mask = rows < N

        # pred = z @ w^T (+ b)
        acc = tl.zeros([BLOCK_N, BLOCK_P], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + offs_d
            col_mask = cols < D
            z = _delta_probe_load_z(
                HX_ptr, HM_ptr, HX_row_stride, HM_row_stride, rows, cols,
                row_mask[:, None] & col_mask[None, :], HAS_HM,
            )  # fmt: skip
            w = load_tile(W_ptr, offs_p, W_row_stride, cols, p_mask, col_mask)
            acc = tl.dot(z, tl.trans(w), acc=acc, input_precision="ieee")
        pred = acc
        if HAS_BIAS:
            pred = pred + bias[None, :]

        out_mask = row_mask[:, None] & p_mask[None, :]
        out_offs = rows.to(tl.int64)[:, None] * P + offs_p[None, :]
        tl.store(PRED_ptr + out_offs, pred, mask=out_mask)

        if HAS_TARGET:
            t = tl.load(T_ptr + out_offs, mask=out_mask, other=0.0)
            # Padding lanes (rows >= N, p >= P) hold bias/garbage: zero them so they do
            # not leak into the reductions.
            resid = tl.where(out_mask, pred - t, 0.0)
            tl.store(RESID_ptr + out_offs, resid, mask=out_mask)
            sse_acc += tl.sum(resid * resid, axis=0)
            gb_acc += tl.sum(resid, axis=0)

    if HAS_TARGET:
        tl.store(SSE_part_ptr + pid * P + offs_p, sse_acc, mask=p_mask)
        tl.store(GB_part_ptr + pid * P + offs_p, gb_acc, mask=p_mask)


@triton.jit
def _delta_probe_bwd_h_kernel(
    G_ptr, W_ptr, GHX_ptr, GHM_ptr,
    N, D, P, W_row_stride,
    HAS_GHX: tl.constexpr, HAS_GHM: tl.constexpr, NEGATE_HX: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_P)
    row_mask = rows < N
    col_mask = cols < D
    p_mask = offs_p < P
    rows64 = rows.to(tl.int64)

    g = load_tile(G_ptr, rows64, P, offs_p, row_mask, p_mask)
    w = load_tile(W_ptr, offs_p, W_row_stride, cols, p_mask, col_mask)
    gh = tl.dot(g, w, input_precision="ieee")

    out_offs = rows64[:, None] * D + cols[None, :]
    out_mask = row_mask[:, None] & col_mask[None, :]
    if HAS_GHX:
        ghx = gh
        if NEGATE_HX:
            ghx = -gh
        tl.store(GHX_ptr + out_offs, ghx.to(GHX_ptr.dtype.element_ty), mask=out_mask)
    if HAS_GHM:
        tl.store(GHM_ptr + out_offs, gh.to(GHM_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _delta_probe_bwd_w_kernel(
    HX_ptr, HM_ptr, G_ptr, GW_part_ptr,
    N, D, P, HX_row_stride, HM_row_stride,
    HAS_HM: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    num_row_blocks = tl.cdiv(N, BLOCK_N)

    offs_n = tl.arange(0, BLOCK_N)
    offs_p = tl.arange(0, BLOCK_P)
    cols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < D
    p_mask = offs_p < P

    acc = tl.zeros([BLOCK_P, BLOCK_D], dtype=tl.float32)
    for rb in range(split, num_row_blocks, nsplit):
        rows = rb * BLOCK_N + offs_n
        row_mask = rows < N
        g = load_tile(G_ptr, rows.to(tl.int64), P, offs_p, row_mask, p_mask)
        z = _delta_probe_load_z(
            HX_ptr, HM_ptr, HX_row_stride, HM_row_stride, rows, cols,
            row_mask[:, None] & col_mask[None, :], HAS_HM,
        )  # fmt: skip
        acc = tl.dot(tl.trans(g), z, acc=acc, input_precision="ieee")

    out_ptrs = GW_part_ptr + split.to(tl.int64) * P * D + offs_p[:, None] * D + cols[None, :]
    tl.store(out_ptrs, acc, mask=p_mask[:, None] & col_mask[None, :])


# ----------------------------------------------------------------------------- host side


def _max_programs(device: torch.device) -> int:
    """Rough number of programs that keeps the device busy (small when interpreting)."""
    return device_programs(device, 2)


# GPU tile shapes per kernel, keyed by BLOCK_P: (BLOCK_N, BLOCK_D, num_warps). The fp32
# ("ieee") tl.dot is evaluated with FMAs, which keeps whole operand rows/columns in
# registers; these shapes compile without register spills on sm_80/sm_90 (num_stages=1).
_GPU_FWD = {16: (32, 64, 8), 32: (32, 32, 8), 64: (32, 32, 8)}
_GPU_BWD_H = {16: (64, 64, 8), 32: (64, 64, 8), 64: (32, 64, 8)}
_GPU_BWD_W = {16: (64, 64, 8), 32: (64, 64, 8), 64: (64, 64, 8)}


def _config(table: dict[int, tuple[int, int, int]], N: int, D: int, P: int) -> dict[str, int]:
    """Launch meta-parameters (BLOCK_N, BLOCK_D, BLOCK_P, num_warps, num_stages)."""
    BLOCK_P = max(16, triton.next_power_of_2(P))
    if interpreting():
        # Few, big programs: interpreter cost is per executed op, not per element.
        bn, bd, warps = 256, 256, 4
    else:
        bn, bd, warps = table[BLOCK_P]
    return {
        "BLOCK_N": clamp_pow2(N, 16, bn),
        "BLOCK_D": clamp_pow2(D, 16, bd),
        "BLOCK_P": BLOCK_P,
        "num_warps": warps,
        "num_stages": 1,
    }


def _prepare(hx: torch.Tensor, hm: torch.Tensor | None, w: torch.Tensor):
    hx = check_2d(hx, "hx", SUPPORTED_DTYPES, " [N, D]")
    if hm is not None:
        hm = check_2d(hm, "hm", SUPPORTED_DTYPES, " [N, D]")
        if hm.shape != hx.shape:
            raise ValueError(f"hm shape {tuple(hm.shape)} != hx shape {tuple(hx.shape)}")
    if w.dim() != 2 or w.shape[1] != hx.shape[1] or not 1 <= w.shape[0] <= MAX_P:
        raise ValueError(
            f"w must be [P, {hx.shape[1]}] with 1 <= P <= {MAX_P}, got {tuple(w.shape)}"
        )
    w = w.to(torch.float32).contiguous()
    return hx, hm, w


def delta_probe_fwd(
    hx: torch.Tensor,
    hm: torch.Tensor | None,
    w: torch.Tensor,
    b: torch.Tensor | None,
    t: torch.Tensor | None,
) -> tuple[
    torch.Tensor,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
]:
    """Fused probe forward.

    Returns ``(pred [N,P], resid [N,P], sse [P], G [P,D], gb [P])``, all float32; the
    last four are ``None`` when ``t`` is ``None``. ``z = hm - hx`` if ``hm`` is given,
    else ``z = hx``.
    """
    hx, hm, w = _prepare(hx, hm, w)
    N, D = hx.shape
    P = w.shape[0]
    dev = hx.device
    f32 = torch.float32
    if b is not None:
        b = b.to(f32).contiguous()
    if t is not None:
        if tuple(t.shape) != (N, P):
            raise ValueError(f"t must be [{N}, {P}], got {tuple(t.shape)}")
        t = t.to(f32).contiguous()

    pred = torch.empty((N, P), dtype=f32, device=dev)
    if N == 0 or D == 0:
        pred.copy_((b if b is not None else torch.zeros(P, dtype=f32, device=dev)).expand(N, P))
        if t is None:
            return pred, None, None, None, None
        resid = pred - t
        return (pred, resid, (resid * resid).sum(0), torch.zeros((P, D), dtype=f32, device=dev),
                resid.sum(0))  # fmt: skip

    cfg = _config(_GPU_FWD, N, D, P)
    num_row_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    if t is None:
        nprog = num_row_blocks
        resid = sse_part = gb_part = pred  # unused placeholders
    else:
        nprog = max(1, min(num_row_blocks, _max_programs(dev)))
        resid = torch.empty((N, P), dtype=f32, device=dev)
        sse_part = torch.empty((nprog, P), dtype=f32, device=dev)
        gb_part = torch.empty((nprog, P), dtype=f32, device=dev)

    with device_ctx(dev):
        _delta_probe_fwd_kernel[(nprog,)](
            hx, hm if hm is not None else hx, w, b if b is not None else w,
            t if t is not None else pred,
            pred, resid, sse_part, gb_part,
            N, D, P,
            hx.stride(0), hm.stride(0) if hm is not None else 0, w.stride(0),
            HAS_HM=hm is not None, HAS_BIAS=b is not None, HAS_TARGET=t is not None, **cfg,
        )  # fmt: skip

    if t is None:
        return pred, None, None, None, None
    G = _grad_w(hx, hm, resid)
    if nprog == 1:
        return pred, resid, sse_part[0], G, gb_part[0]
    return pred, resid, sse_part.sum(0), G, gb_part.sum(0)


def _grad_w(hx: torch.Tensor, hm: torch.Tensor | None, g: torch.Tensor) -> torch.Tensor:
    """``g^T z`` ([P, D] float32) for ``g`` [N, P] float32 contiguous, N, D > 0: each program
    keeps its tile in registers over its rows and stores it once; the host sums the splits."""
    N, D = hx.shape
    P = g.shape[1]
    dev = hx.device
    cfg = _config(_GPU_BWD_W, N, D, P)
    num_d_blocks = triton.cdiv(D, cfg["BLOCK_D"])
    num_row_blocks = triton.cdiv(N, cfg["BLOCK_N"])
    target = 2 * _max_programs(dev)
    splits = max(1, min(num_row_blocks, 65535, triton.cdiv(target, num_d_blocks)))
    part = torch.empty((splits, P, D), dtype=torch.float32, device=dev)
    with device_ctx(dev):
        _delta_probe_bwd_w_kernel[(num_d_blocks, splits)](
            hx, hm if hm is not None else hx, g, part,
            N, D, P, hx.stride(0), hm.stride(0) if hm is not None else 0,
            HAS_HM=hm is not None, **cfg,
        )  # fmt: skip
    return part[0] if splits == 1 else part.sum(0)


def delta_probe_bwd(
    hx: torch.Tensor,
    hm: torch.Tensor | None,
    w: torch.Tensor,
    g: torch.Tensor,
    need_gw: bool,
    need_gh: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Backward of ``pred = z @ w^T + b`` given ``g = dLoss/dpred`` ([N, P] float32).

    Returns ``(gw, ghx, ghm)``: ``gw = g^T z`` ([P, D] float32) if ``need_gw``;
    ``ghx`` (hx's dtype) ``= -g @ w`` in difference mode / ``+g @ w`` in direct mode and
    ``ghm`` (hm's dtype) ``= +g @ w`` if ``need_gh``. Entries not requested (and ``ghm``
    in direct mode) are ``None``.
    """
    hx, hm, w = _prepare(hx, hm, w)
    N, D = hx.shape
    P = w.shape[0]
    dev = hx.device
    if tuple(g.shape) != (N, P):
        raise ValueError(f"g must be [{N}, {P}], got {tuple(g.shape)}")
    g = g.to(torch.float32).contiguous()

    gw = ghx = ghm = None
    empty = N == 0 or D == 0

    if need_gh:
        ghx = torch.empty((N, D), dtype=hx.dtype, device=dev)
        ghm = torch.empty((N, D), dtype=hm.dtype, device=dev) if hm is not None else None
        if not empty:
            cfg = _config(_GPU_BWD_H, N, D, P)
            grid = (triton.cdiv(N, cfg["BLOCK_N"]), triton.cdiv(D, cfg["BLOCK_D"]))
            with device_ctx(dev):
                _delta_probe_bwd_h_kernel[grid](
                    g, w, ghx, ghm if ghm is not None else ghx,
                    N, D, P, w.stride(0),
                    HAS_GHX=True, HAS_GHM=ghm is not None, NEGATE_HX=hm is not None, **cfg,
                )  # fmt: skip

    if need_gw:
        gw = torch.zeros((P, D), dtype=torch.float32, device=dev) if empty else _grad_w(hx, hm, g)

    return gw, ghx, ghm
