"""What the Triton kernel modules share: the interpreter switch, device queries, launch helpers,
input checks, and a masked 2-D tile load for the kernels themselves."""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when kernels run under the Triton interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def sm_count(index: int) -> int:
    """Multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count


def device_programs(device: torch.device, per_sm: int) -> int:
    """``per_sm`` programs per multiprocessor of a CUDA device; 2 anywhere else (the
    interpreter runs programs one after another)."""
    if device.type != "cuda":
        return 2
    return per_sm * sm_count(device.index if device.index is not None else 0)


def clamp_pow2(n: int, lo: int, hi: int) -> int:
    """The power of two at or above ``n``, clamped to ``[lo, hi]``."""
    return max(lo, min(hi, triton.next_power_of_2(max(1, n))))


def device_ctx(device: torch.device):
    """Context that makes ``device`` current for a launch (nothing to do off CUDA)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def check_2d(
    t: torch.Tensor, name: str, supported: tuple[torch.dtype, ...], dims: str = ""
) -> torch.Tensor:
    """``t`` checked to be a 2-D tensor of a ``supported`` dtype on a device the kernels can
    use, with a unit column stride (a copy when it had another). ``dims`` names the axes in
    the shape error, e.g. ``" [N, D]"``."""
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D{dims}, got shape {tuple(t.shape)}")
    if t.dtype not in supported:
        raise TypeError(f"{name} dtype {t.dtype} not supported (use one of {supported})")
    check_device(t, name)
    if t.shape[1] > 1 and t.stride(1) != 1:
        t = t.contiguous()
    return t


def check_device(t: torch.Tensor, name: str) -> None:
    """Raises unless ``t`` is on CUDA or the interpreter is on."""
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{name} is on {t.device}; Triton kernels need CUDA tensors or TRITON_INTERPRET=1"
        )


@triton.jit
def load_tile(ptr, rows, row_stride, cols, row_mask, col_mask):
    """The ``[len(rows), len(cols)]`` tile ``ptr[rows[:, None] * row_stride + cols[None, :]]``,
    0 outside ``row_mask[:, None] & col_mask[None, :]``."""
    return tl.load(
        ptr + rows[:, None] * row_stride + cols[None, :],
        mask=row_mask[:, None] & col_mask[None, :],
        other=0.0,
    )
