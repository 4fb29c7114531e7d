"""choice_logprobs: log-probabilities of a few candidate tokens, without the full logits.

Given final hidden states at the scored positions ``hidden`` [M, D] (after the model's final
norm), the LM head ``weight`` [V, D] (the tied embedding matrix or a separate head), an optional
head ``bias`` [V] and the candidate token ids ``choices`` [M, C], it returns::

    logit[m, v] = hidden[m] · weight[v] + bias[v]
    logit       = tanh(logit / softcap) * softcap          (only when ``softcap`` is given)
    lse[m]      = log Σ_v exp(logit[m, v])
    logp[m, c]  = logit[m, choices[m, c]] - lse[m]

``softcap`` is Gemma's ``final_logit_softcapping``. A choice id of ``-1`` is padding ("no
choice"): its ``logp`` is ``-inf`` (probability zero), so ragged choice lists pad to one width
and ``logp.exp()`` or ``logp.logsumexp(-1)`` over a row ignore the padding. Any other id must
lie in ``[0, V)``.

The [M, V] logits are never allocated: every backend walks the vocabulary in tiles, keeping a
running maximum and a running sum of exponentials per row (an online log-sum-exp), and the
reference also walks the rows in blocks, so its extra memory is one [rows, chunk] tile plus
O(M·C). Accumulation is float32 for float32, bfloat16 and float16 inputs (float64 for float64
inputs, reference only); outputs are float32 (float64 for float64 inputs).

Backends: ``reference`` (PyTorch, any device; what the CPU runs), ``triton`` (CUDA tensors, or
CPU tensors under ``TRITON_INTERPRET=1``) and ``cuda`` (introspect._C). The op is forward only:
the outputs carry no autograd history.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from introspect import _native
from introspect.ops import _checks, _registry

OP = "choice_logprobs"
PAD = -1
"""Choice id meaning "no choice"; its log-probability is ``-inf``."""

DEFAULT_CHUNK = 8192
"""Fewest vocabulary columns per tile of the reference (more when M is small)."""
TILE_ELEMENTS = 1 << 23
"""Largest logits tile of the reference, in elements (32 MiB in float32): rows per tile =
TILE_ELEMENTS // chunk. Tuned on CPU at M=4096, V=49152, D=576 (benchmarks/bench_kernels.py)."""

_NATIVE_DTYPES = {torch.float32, torch.bfloat16, torch.float16}
_REFERENCE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
# Element-type codes of the CUDA entry point (csrc/choice_logprobs_cuda.h: ChoiceDType).
_CUDA_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 3}


class ChoiceLogprobs(NamedTuple):
    logp: torch.Tensor
    """[M, C] log-probabilities of the choices; ``-inf`` where the id is ``-1``."""
    lse: torch.Tensor
    """[M] log-sum-exp of the (soft-capped) logits over the whole vocabulary."""


def _shift(m: torch.Tensor) -> torch.Tensor:
    """The running maximum where it is finite, else 0: exp(x - shift) never sees inf - inf."""
    return torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))


# --------------------------------------------------------------------------------------------
# Reference: plain PyTorch, tiled over the vocabulary and the rows. Tests and benchmarks use it.
# --------------------------------------------------------------------------------------------


@_registry.register(OP, "reference", devices={"cpu", "cuda"}, dtypes=_REFERENCE_DTYPES)
def choice_logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    choices: torch.Tensor,
    softcap: float | None = None,
    chunk: int | None = None,
    row_chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (logp [M, C], lse [M]) in the accumulation dtype (float32, or float64 when an
    input is float64). ``chunk`` vocabulary columns and ``row_chunk`` rows make one tile
    (default: ``TILE_ELEMENTS`` split as ``max(DEFAULT_CHUNK, TILE_ELEMENTS // M)`` columns by
    the remaining rows); ids must lie in [-1, V)."""
    wide = torch.float64 in (hidden.dtype, weight.dtype)
    acc = torch.float64 if wide else torch.float32
    M, _ = hidden.shape
    V = weight.shape[0]
    C = choices.shape[1]
    device = hidden.device
    if chunk is None:
        # Few rows: wider tiles, fewer steps; the tile never exceeds TILE_ELEMENTS.
        chunk = max(DEFAULT_CHUNK, TILE_ELEMENTS // max(M, 1))
    chunk = max(1, min(V, chunk))
    row_chunk = max(1, min(M, row_chunk or max(1, TILE_ELEMENTS // chunk)))

    logp = torch.empty(M, C, dtype=acc, device=device)
    lse = torch.empty(M, dtype=acc, device=device)
    if M == 0:
        return logp, lse
    with torch.no_grad():
        b = bias.to(acc) if bias is not None else None
        # One flat buffer holds every tile, so the loop allocates nothing of tile size.
        buf = torch.empty(row_chunk * chunk, dtype=acc, device=device)
        for r0 in range(0, M, row_chunk):
            r1 = min(M, r0 + row_chunk)
            rows = r1 - r0
            h = hidden[r0:r1].to(acc)
            ids = choices[r0:r1]
            picked = torch.zeros(rows, C, dtype=acc, device=device)
            m = torch.full((rows,), -math.inf, dtype=acc, device=device)
            s = torch.zeros(rows, dtype=acc, device=device)
            for v0 in range(0, V, chunk):
                v1 = min(V, v0 + chunk)
                width = v1 - v0
                t = buf[: rows * width].view(rows, width)
                torch.mm(h, weight[v0:v1].to(acc).t(), out=t)
                if b is not None:
                    t.add_(b[v0:v1])
                if softcap is not None:
                    t.div_(softcap).tanh_().mul_(softcap)
                # The choices' logits are the very values that enter the log-sum-exp.
                inside = (ids >= v0) & (ids < v1)
                local = (ids - v0).clamp_(0, width - 1)
                picked = torch.where(inside, t.gather(1, local), picked)
                # Online log-sum-exp: s = Σ exp(logit - shift(m)) over the columns seen so far.
                m_new = torch.maximum(m, t.amax(1))
                sh_new = _shift(m_new)
                s.mul_(torch.exp((_shift(m) - sh_new).clamp_(max=0)))
                t.sub_(sh_new[:, None]).exp_()
                s.add_(t.sum(1))
                m = m_new
            lse_rows = _shift(m) + torch.log(s)
            lse[r0:r1] = lse_rows
            out = picked - lse_rows[:, None]
            logp[r0:r1] = out.masked_fill_(ids < 0, -math.inf)
    return logp, lse


# --------------------------------------------------------------------------------------------
# Native backends: kernels wrapped as torch.library custom ops with fake implementations, so
# they compose with torch.compile. Forward only.
# --------------------------------------------------------------------------------------------

# softcap <= 0 means none.
_SCHEMA = (
    "(Tensor hidden, Tensor weight, Tensor? bias, Tensor choices, float softcap) "
    "-> (Tensor, Tensor)"
)


def _outputs(hidden: torch.Tensor, choices: torch.Tensor):
    M, C = choices.shape
    f32 = {"dtype": torch.float32, "device": hidden.device}
    return torch.empty(M, C, **f32), torch.empty(M, **f32)


def _cuda_run(hidden, weight, bias, choices, softcap):
    C_ = _native.load()
    logp, lse = _outputs(hidden, choices)
    M, D = hidden.shape
    V = weight.shape[0]
    if M == 0:
        return logp, lse
    scratch_bytes = C_.choice_logprobs_cuda_scratch_bytes(M, V)
    scratch = torch.empty(max(scratch_bytes, 1), dtype=torch.uint8, device=hidden.device)
    with torch.cuda.device(hidden.device):
        stream = torch.cuda.current_stream(hidden.device).cuda_stream
        C_.choice_logprobs_cuda(
            _CUDA_DTYPE_CODES[hidden.dtype], hidden.data_ptr(), hidden.stride(0),
            _CUDA_DTYPE_CODES[weight.dtype], weight.data_ptr(), weight.stride(0),
            _checks.ptr(bias), choices.data_ptr(), M, V, D, choices.shape[1], softcap,
            logp.data_ptr(), lse.data_ptr(), scratch.data_ptr(), scratch_bytes, stream,
        )  # fmt: skip
    return logp, lse


def _triton_run(hidden, weight, bias, choices, softcap):
    from introspect.kernels import choice_logprobs as k

    if hidden.shape[0] == 0:
        return _outputs(hidden, choices)
    return k.choice_logprobs_fwd(hidden, weight, bias, choices, softcap if softcap > 0 else None)


def _make_native_op(backend: str, kernel, device_types: tuple[str, ...]):
    op = torch.library.custom_op(
        f"introspect::choice_logprobs_{backend}", kernel, mutates_args=(),
        device_types=device_types, schema=_SCHEMA,
    )  # fmt: skip

    @op.register_fake
    def _(hidden, weight, bias, choices, softcap):
        return _outputs(hidden, choices)

    return op


_cuda_op = _make_native_op("cuda", _cuda_run, ("cuda",))
_triton_op = _make_native_op("triton", _triton_run, ("cpu", "cuda"))


def _native_impl(op):
    def run(hidden, weight, bias, choices, softcap, chunk):
        del chunk  # the kernels choose their own tiles
        h = _checks.unit_column_stride(hidden.detach())
        w = _checks.unit_column_stride(weight.detach())
        if h.dtype != w.dtype:
            # Mixed dtypes run as (float32 hidden, weight as it is): lossless for the hidden
            # states, and the conversion is [M, D], never [V, D].
            h = h.to(torch.float32)
        b = bias.detach().to(torch.float32).contiguous() if bias is not None else None
        ids = choices.contiguous()
        return op(h, w, b, ids, float(softcap) if softcap is not None else 0.0)

    return run


def _native_accepts(backend: str):
    def accepts(sizes: dict) -> str | None:
        if sizes["D"] < 1:
            return "the kernels need D >= 1"
        if backend == "cuda":
            C_ = _native.load()
            if C_ is None or not hasattr(C_, "choice_logprobs_cuda"):
                return "introspect._C was built without the choice_logprobs CUDA kernel"
        return None

    return accepts


_registry.register(
    OP, "cuda", devices={"cuda"}, dtypes=_NATIVE_DTYPES, accepts=_native_accepts("cuda")
)(_native_impl(_cuda_op))
_registry.register(
    OP, "triton", devices={"cpu", "cuda"}, dtypes=_NATIVE_DTYPES, accepts=_native_accepts("triton")
)(_native_impl(_triton_op))


def _auto_order(device_type: str, dtype: torch.dtype) -> tuple[str, ...] | None:
    # bf16/fp16 heads: Triton's tensor-core tiles before the CUDA kernel's fp32 CUDA-core FMAs.
    # float32 keeps the default order (both kernels are fp32 FMA there; the CUDA one first).
    if device_type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return ("triton", "cuda", "reference")
    return None


_registry.set_auto_order(OP, _auto_order)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _check_choices(choices: torch.Tensor, M: int, V: int) -> torch.Tensor:
    if not isinstance(choices, torch.Tensor):
        raise TypeError(f"{OP}: choices must be a torch.Tensor, got {type(choices).__name__}")
    if choices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(
            f"{OP}: choices must be an integer tensor of token ids, got {choices.dtype}"
        )
    if choices.dim() != 2 or choices.shape[0] != M:
        raise ValueError(
            f"{OP}: choices must be [M, C] with M = {M} (from hidden [M, D]), "
            f"got shape {tuple(choices.shape)}"
        )
    choices = choices.to(torch.int64)
    if choices.numel():
        lo, hi = torch.aminmax(choices)
        if int(lo) < PAD or int(hi) >= V:
            bad = ((choices < PAD) | (choices >= V)).nonzero()[0].tolist()
            raise ValueError(
                f"{OP}: choice ids must lie in [0, {V}) (or be {PAD} for padding); "
                f"choices{bad} = {int(choices[bad[0], bad[1]])}"
            )
    return choices


def choice_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    choices: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    softcap: float | None = None,
    chunk: int | None = None,
    backend: str = "auto",
) -> ChoiceLogprobs:
    """Log-probabilities of candidate tokens under an LM head, without the [M, V] logits.

    Args:
        hidden: [M, D] final hidden states (after the final norm) at the scored positions.
        weight: [V, D] LM head weight (the embedding matrix when the head is tied).
        choices: [M, C] integer token ids per row; ``-1`` marks padding (``logp = -inf``).
        bias: optional [V] head bias.
        softcap: final-logit soft-capping (Gemma's ``final_logit_softcapping``):
            ``logit = tanh(logit / softcap) * softcap``. ``None`` applies none.
        chunk: vocabulary columns per tile of the ``reference`` backend (default: at least
            8192, more when M is small); the native backends choose their own tiles.
        backend: ``"auto"``, ``"reference"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``ChoiceLogprobs(logp [M, C], lse [M])``, float32 (float64 for float64 inputs), with no
        autograd history.
    """
    _checks.floating(OP, "hidden", hidden, 2)
    _checks.floating(OP, "weight", weight, 2)
    M, D = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != D:
        raise ValueError(
            f"{OP}: weight must be [V, D] with D = {D} (from hidden [M, D] = "
            f"{list(hidden.shape)}), got {list(weight.shape)}"
        )
    if V < 1:
        raise ValueError(f"{OP}: weight has no rows (V = 0): there is no vocabulary to score")
    if bias is not None:
        _checks.floating(OP, "bias", bias, 1)
        if bias.shape != (V,):
            raise ValueError(f"{OP}: bias must be [V] = [{V}], got {list(bias.shape)}")
    if softcap is not None:
        softcap = float(softcap)
        if not (softcap > 0 and math.isfinite(softcap)):
            raise ValueError(
                f"{OP}: softcap must be a positive finite number or None, got {softcap}"
            )
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"{OP}: chunk must be a positive int, got {chunk!r}")
    device = _checks.same_device(OP, hidden=hidden, weight=weight, bias=bias, choices=choices)
    choices = _check_choices(choices, M, V)

    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    sizes = {"M": M, "V": V, "D": D, "C": choices.shape[1]}
    _, impl = _registry.select(OP, backend, device, dtype, sizes)
    logp, lse = impl.fn(hidden, weight, bias, choices, softcap, chunk)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return ChoiceLogprobs(logp.to(out_dtype), lse.to(out_dtype))
