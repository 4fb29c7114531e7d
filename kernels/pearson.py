"""Per-chunk statistics for a column-wise Pearson correlation (Triton).

For ``x, y`` of shape ``[N, K]`` the rows are cut into ``C`` consecutive chunks of
``CHUNK_N`` rows (the last one may be shorter). One program handles one
(column block, row chunk) pair and computes, for every column ``k`` of its block, the
chunk statistics in fp32 with a two-pass scheme:

1. pass 1 -- the chunk means ``mean_x``, ``mean_y`` (element-wise fp32 tile
   accumulators, reduced over rows at the end);
2. pass 2 -- the centred sums ``M2_x = sum (x - mean_x)^2``, ``M2_y``,
   ``C_xy = sum (x - mean_x)(y - mean_y)`` over the same rows (re-read from cache/HBM).

Centering inside a chunk keeps fp32 accurate even when the columns have a large offset.
The caller combines the chunks with Chan et al.'s parallel update (in float64):
for two sets ``a``, ``b`` with ``n = n_a + n_b`` and ``delta_x = mean_x_b - mean_x_a``::

    mean_x = mean_x_a + delta_x * n_b / n
    M2_x   = M2_x_a + M2_x_b + delta_x^2 * n_a * n_b / n
    C_xy   = C_xy_a + C_xy_b + delta_x * delta_y * n_a * n_b / n

and ``r = C_xy / sqrt(M2_x * M2_y)``.

Supported input dtypes are listed in ``SUPPORTED_DTYPES`` (float32, bfloat16, float16;
loads are converted to fp32). float64 is not supported: the statistics are produced in
fp32, which would throw away the extra precision, so float64 inputs should take a
float64 path on the caller's side. NaN/inf values propagate into their column's stats.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_2d, device_ctx, interpreting

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)

# Index of each statistic along dim 1 of the returned ``stats`` tensor.
MEAN_X, MEAN_Y, M2_X, M2_Y, C_XY = range(5)

_MAX_GRID_Y = 65535


@triton.jit
def _pearson_partials_kernel(
    X_ptr, Y_ptr, STATS_ptr,
    N, K, X_row_stride, Y_row_stride, CHUNK_N,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_k = tl.program_id(0)
    chunk = tl.program_id(1)

    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    col_mask = cols < K
    offs_n = tl.arange(0, BLOCK_N)
    row_start = chunk * CHUNK_N
    row_end = tl.minimum(row_start + CHUNK_N, N)
    count = (row_end - row_start).to(tl.float32)

    # Pass 1: chunk means.
    sx = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    sy = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_N):
        rows = (r0 + offs_n).to(tl.int64)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        x = tl.load(X_ptr + rows[:, None] * X_row_stride + cols[None, :], mask=mask, other=0.0)
        y = tl.load(Y_ptr + rows[:, None] * Y_row_stride + cols[None, :], mask=mask, other=0.0)
        sx += x.to(tl.float32)
        sy += y.to(tl.float32)
    mean_x = tl.sum(sx, axis=0) / count
    mean_y = tl.sum(sy, axis=0) / count

    # Pass 2: centred second moments.
    m2x = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    m2y = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    cxy = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_N):
        rows = (r0 + offs_n).to(tl.int64)
        mask = (rows < row_end)[:, None] & col_mask[None, :]
        x = tl.load(X_ptr + rows[:, None] * X_row_stride + cols[None, :], mask=mask, other=0.0)
        y = tl.load(Y_ptr + rows[:, None] * Y_row_stride + cols[None, :], mask=mask, other=0.0)
        dx = tl.where(mask, x.to(tl.float32) - mean_x[None, :], 0.0)
        dy = tl.where(mask, y.to(tl.float32) - mean_y[None, :], 0.0)
        m2x += dx * dx
        m2y += dy * dy
        cxy += dx * dy

    out = STATS_ptr + chunk.to(tl.int64) * 5 * K + cols
    tl.store(out + 0 * K, mean_x, mask=col_mask)
    tl.store(out + 1 * K, mean_y, mask=col_mask)
    tl.store(out + 2 * K, tl.sum(m2x, axis=0), mask=col_mask)
    tl.store(out + 3 * K, tl.sum(m2y, axis=0), mask=col_mask)
    tl.store(out + 4 * K, tl.sum(cxy, axis=0), mask=col_mask)


def _config(N: int, K: int) -> tuple[int, int, int, int]:
    """(CHUNK_N, BLOCK_N, BLOCK_K, num_warps)."""
    k_pow2 = triton.next_power_of_2(max(1, K))
    if interpreting():
        # Large tiles and chunks keep the interpreted loop count low.
        chunk_n, block_n, block_k, num_warps = 512, 256, max(16, min(256, k_pow2)), 4
    else:
        # ~2048-element tiles (3 fp32 accumulators of 16 values per thread at 4 warps);
        # narrow inputs get taller tiles. Compiles without spills on sm_80/sm_90.
        block_k = max(16, min(64, k_pow2))
        chunk_n, block_n, num_warps = 4096, max(32, 2048 // block_k), 4
    # Respect the grid's y-dimension limit on very tall inputs.
    min_chunk = triton.cdiv(N, _MAX_GRID_Y)
    if min_chunk > chunk_n:
        chunk_n = triton.cdiv(min_chunk, block_n) * block_n
    return chunk_n, block_n, block_k, num_warps


def pearson_partials(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row-chunk Pearson statistics of the columns of ``x`` and ``y`` ([N, K]).

    Returns ``(counts [C] int64, stats [C, 5, K] float32)`` on the inputs' device, where
    ``stats[c]`` holds ``mean_x, mean_y, M2_x, M2_y, C_xy`` of chunk ``c`` (see the
    ``MEAN_X``... index constants). ``C = 0`` when ``N == 0``.
    """
    x = check_2d(x, "x", SUPPORTED_DTYPES, " [N, K]")
    y = check_2d(y, "y", SUPPORTED_DTYPES, " [N, K]")
    if x.shape != y.shape:
        raise ValueError(f"x shape {tuple(x.shape)} != y shape {tuple(y.shape)}")
    N, K = x.shape
    dev = x.device
    chunk_n, block_n, block_k, num_warps = _config(N, K)
    C = triton.cdiv(N, chunk_n) if N > 0 else 0

    stats = torch.empty((C, 5, K), dtype=torch.float32, device=dev)
    counts = torch.full((C,), chunk_n, dtype=torch.int64, device=dev)
    if C == 0:
        return counts, stats
    counts[-1] = N - (C - 1) * chunk_n
    if K == 0:
        return counts, stats

    grid = (triton.cdiv(K, block_k), C)
    with device_ctx(dev):
        _pearson_partials_kernel[grid](
            x, y, stats, N, K, x.stride(0), y.stride(0), chunk_n,
            BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps,
        )  # fmt: skip
    return counts, stats
