"""Fused elementwise ops of a Llama-family decoder forward (inference).

``rms_norm(x, weight, eps)`` is Hugging Face's ``LlamaRMSNorm`` (``h = x.float(); h = h *
rsqrt(h.pow(2).mean(-1, keepdim=True) + eps); weight * h.to(x.dtype)``), optionally after a
residual add (``s = x + residual``, normalised and returned as the new residual);
``silu_mul(gate, up)`` is the gated MLP's ``F.silu(gate) * up``; ``rope(q, k, cos, sin)`` is
``apply_rotary_pos_emb`` (``q * cos + rotate_half(q) * sin`` with cos and sin [B, S, D]
broadcast over the heads), for q and k in one call.

The ``reference`` backend is those PyTorch formulas. The ``cpp`` backend (CPU, float32 and
bfloat16) makes one pass over each row instead of one per PyTorch op, and rounds exactly where
the formulas round; it has no backward, so ``auto`` takes it only when autograd will not need
one (grad disabled, or no input requiring grad) and falls back to the reference otherwise
(``auto`` also keeps the reference for bfloat16 ``silu_mul``, where torch's silu is faster).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from introspect import _native
from introspect.ops import _checks, _registry

RMS_NORM, SILU_MUL, ROPE = "rms_norm", "silu_mul", "rope"
_CPP_DTYPES = {torch.float32, torch.bfloat16}
_REFERENCE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


# --------------------------------------------------------------------------------------------
# References: the Hugging Face formulas, op for op
# --------------------------------------------------------------------------------------------


def rms_norm_reference(x, weight, eps, residual=None):
    """``LlamaRMSNorm`` (after ``x + residual`` when a residual is given: then ``(y, s)``)."""
    s = None
    if residual is not None:
        x = s = x + residual
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    y = weight * h.to(x.dtype)
    return y if s is None else (y, s)


def silu_mul_reference(gate, up):
    return F.silu(gate) * up


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rope_reference(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


for _op, _fn in ((RMS_NORM, rms_norm_reference), (SILU_MUL, silu_mul_reference),
                 (ROPE, rope_reference)):  # fmt: skip
    _registry.register(_op, "reference", devices={"cpu", "cuda"}, dtypes=_REFERENCE_DTYPES)(_fn)


# --------------------------------------------------------------------------------------------
# cpp: introspect._C on CPU tensors, inference only
# --------------------------------------------------------------------------------------------


def _cpp_accepts(kernel: str):
    def accepts(sizes: dict) -> str | None:
        C = _native.load()
        if C is not None and not hasattr(C, kernel):
            return f"introspect._C has no {kernel} (built before it was added): rebuild it"
        if sizes.get("grad"):
            return "it has no backward, and an input requires grad with grad enabled"
        return sizes.get("why")

    return accepts


def _custom_op(name: str, fn, schema: str):
    """``fn`` as the CPU-only custom op ``introspect::<name>`` (opaque to autograd)."""
    return torch.library.custom_op(
        f"introspect::{name}", fn, mutates_args=(), device_types=("cpu",), schema=schema
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as [rows, last dim] with a unit column stride (a view where one exists)."""
    return _checks.unit_column_stride(t.reshape(-1, t.shape[-1]))


def _out_dtype(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    return torch.bfloat16 if a == b == torch.bfloat16 else torch.float32


def _rms_norm_cpp_impl(x, weight, eps, residual):
    C = _native.load()
    n = x.shape[-1]
    x2, w = _rows(x), weight.contiguous()
    y = torch.empty(x.shape, dtype=_out_dtype(x.dtype, w.dtype))
    s = torch.empty_like(x, memory_format=torch.contiguous_format) if residual is not None else None
    r2 = _rows(residual) if residual is not None else None
    C.rms_norm_cpu(
        _checks.DTYPE_CODES[x.dtype], x2.data_ptr(), x2.stride(0), _checks.ptr(r2),
        r2.stride(0) if r2 is not None else 0, _checks.DTYPE_CODES[w.dtype], w.data_ptr(),
        float(eps), x2.shape[0], n, y.data_ptr(), n, _checks.ptr(s), n, torch.get_num_threads(),
    )  # fmt: skip
    return y, s


def _rms_norm_cpp(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_norm_cpp_impl(x, weight, eps, None)[0]


def _rms_norm_residual_cpp(x, weight, eps: float, residual):
    return _rms_norm_cpp_impl(x, weight, eps, residual)


_rms_op = _custom_op(
    "rms_norm_cpp", _rms_norm_cpp, "(Tensor x, Tensor weight, float eps) -> Tensor"
)
_rms_res_op = _custom_op(
    "rms_norm_residual_cpp",
    _rms_norm_residual_cpp,
    "(Tensor x, Tensor weight, float eps, Tensor residual) -> (Tensor, Tensor)",
)


@_rms_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape, dtype=_out_dtype(x.dtype, weight.dtype))


@_rms_res_op.register_fake
def _(x, weight, eps, residual):
    return x.new_empty(x.shape, dtype=_out_dtype(x.dtype, weight.dtype)), x.new_empty(x.shape)


@_registry.register(
    RMS_NORM, "cpp", devices={"cpu"}, dtypes=_CPP_DTYPES, accepts=_cpp_accepts("rms_norm_cpu")
)
def rms_norm_cpp(x, weight, eps, residual=None):
    if residual is None:
        return _rms_op(x, weight, float(eps))
    return _rms_res_op(x, weight, float(eps), residual)


def _silu_mul_cpp(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    C = _native.load()
    g2, u2 = _rows(gate), _rows(up)
    out = torch.empty(gate.shape, dtype=gate.dtype)
    n = gate.shape[-1]
    C.silu_mul_cpu(
        _checks.DTYPE_CODES[gate.dtype], g2.data_ptr(), g2.stride(0), u2.data_ptr(), u2.stride(0),
        g2.shape[0], n, out.data_ptr(), n, torch.get_num_threads(),
    )  # fmt: skip
    return out


_silu_op = _custom_op("silu_mul_cpp", _silu_mul_cpp, "(Tensor gate, Tensor up) -> Tensor")


@_silu_op.register_fake
def _(gate, up):
    return torch.empty_like(gate)


@_registry.register(
    SILU_MUL, "cpp", devices={"cpu"}, dtypes=_CPP_DTYPES, accepts=_cpp_accepts("silu_mul_cpu")
)
def silu_mul_cpp(gate, up):
    return _silu_op(gate, up)


# In bfloat16, torch's own silu (its exp fused with multiply-adds) outruns this kernel's on the
# CPUs measured (benchmarks/bench_kernels.py, silu_mul rows): auto keeps the reference there.
_registry.set_auto_order(
    SILU_MUL, lambda device, dtype: ("reference",) if dtype == torch.bfloat16 else None
)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _rope_out(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The output of ``x``'s rotation: ``x``'s layout (as a PyTorch elementwise op keeps it)
    where that has a unit last stride, else contiguous."""
    out = torch.empty_like(x, dtype=dtype)
    return out if out.stride(-1) == 1 or out.shape[-1] <= 1 else torch.empty(x.shape, dtype=dtype)


def _rope_cpp(q, k, cos, sin):
    C = _native.load()
    q, k = _unit_last(q), _unit_last(k)
    B, _, S, D = q.shape
    cos, sin = _unit_last(cos.expand(B, S, D)), _unit_last(sin.expand(B, S, D))
    dtype = _out_dtype(q.dtype, cos.dtype)
    outs = (_rope_out(q, dtype), _rope_out(k, dtype))

    def arg(x, out):
        return (x.data_ptr(), x.shape[1], *x.stride()[:3], out.data_ptr(), *out.stride()[:3])

    C.rope_cpu(
        _checks.DTYPE_CODES[q.dtype], _checks.DTYPE_CODES[cos.dtype], arg(q, outs[0]),
        arg(k, outs[1]), cos.data_ptr(), cos.stride(0), cos.stride(1), sin.data_ptr(),
        sin.stride(0), sin.stride(1), B, S, D, torch.get_num_threads(),
    )  # fmt: skip
    return outs


_rope_op = _custom_op(
    "rope_cpp", _rope_cpp, "(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor, Tensor)"
)


@_rope_op.register_fake
def _(q, k, cos, sin):
    dtype = _out_dtype(q.dtype, cos.dtype)
    return torch.empty_like(q, dtype=dtype), torch.empty_like(k, dtype=dtype)


@_registry.register(
    ROPE, "cpp", devices={"cpu"}, dtypes=_CPP_DTYPES, accepts=_cpp_accepts("rope_cpu")
)
def rope_cpp(q, k, cos, sin):
    return _rope_op(q, k, cos, sin)


# --------------------------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# triton on CUDA: Liger-Kernel's kernels, where it is installed
# --------------------------------------------------------------------------------------------
# On a GPU these ops are Liger-Kernel's Triton kernels rather than kernels of our own: they are
# an established library's, with backward passes (training can use them), and tested on the
# GPUs this project cannot test on; kernels of our own for three elementwise ops would repeat
# them with only the Triton interpreter to check them here. Liger-Kernel is optional
# (``pip install liger-kernel``); without it ``auto`` uses the reference on CUDA. Its kernels
# round in their own order, so they are not bitwise equal to the reference (the engine's exact
# path on CPU uses the ``cpp`` kernels, which are).


def _liger():
    try:
        from liger_kernel.transformers import functional
    except ImportError:
        return None
    return functional


def _liger_accepts(sizes: dict) -> str | None:
    if _liger() is None:
        return "Liger-Kernel is not installed (pip install liger-kernel)"
    return sizes.get("why")


_LIGER = dict(devices={"cuda"}, dtypes={torch.float16, torch.bfloat16, torch.float32},
              accepts=_liger_accepts)  # fmt: skip


@_registry.register(RMS_NORM, "triton", **_LIGER)
def rms_norm_liger(x, weight, eps, residual=None):
    s = None
    if residual is not None:
        x = s = x + residual
    y = _liger().liger_rms_norm(x, weight, eps, 0.0, "llama", False)
    return y if s is None else (y, s)


@_registry.register(SILU_MUL, "triton", **_LIGER)
def silu_mul_liger(gate, up):
    return _liger().liger_swiglu(gate, up)


@_registry.register(ROPE, "triton", **_LIGER)
def rope_liger(q, k, cos, sin):
    return _liger().liger_rope(q, k, cos, sin)


def _tensor(op: str, name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"{op}: {name} must have at least one dimension, got a scalar")
    return t


def _sizes(*tensors: torch.Tensor | None, why: str | None = None) -> dict:
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return {"grad": grad, "why": why}


def _cpp_dtype_why(**tensors: torch.Tensor) -> str | None:
    bad = [f"{k} is {v.dtype}" for k, v in tensors.items() if v.dtype not in _CPP_DTYPES]
    return f"it runs float32 and bfloat16 only ({', '.join(bad)})" if bad else None


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    *,
    backend: str = "auto",
):
    """``weight * x / sqrt(mean(x², last dim) + eps)`` with ``LlamaRMSNorm``'s rounding (see the
    module docstring). With ``residual`` (x's shape and dtype): normalises ``s = x + residual``
    and returns ``(y, s)``."""
    _tensor(RMS_NORM, "x", x), _tensor(RMS_NORM, "weight", weight)
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"rms_norm: weight must be 1-D of x's last dimension ({x.shape[-1]}), got shape "
            f"{tuple(weight.shape)}"
        )
    if residual is not None:
        _tensor(RMS_NORM, "residual", residual)
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(
                f"rms_norm: residual must have x's shape and dtype ({tuple(x.shape)}, {x.dtype}), "
                f"got {tuple(residual.shape)}, {residual.dtype}"
            )
    device = _checks.same_device(RMS_NORM, x=x, weight=weight, residual=residual)
    sizes = _sizes(x, weight, residual, why=_cpp_dtype_why(weight=weight))
    _, impl = _registry.select(RMS_NORM, backend, device, x.dtype, sizes)
    return impl.fn(x, weight, eps, residual)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``F.silu(gate) * up`` (gate and up of one shape)."""
    _tensor(SILU_MUL, "gate", gate), _tensor(SILU_MUL, "up", up)
    if gate.shape != up.shape:
        raise ValueError(
            f"silu_mul: gate and up must have one shape, got {tuple(gate.shape)} and "
            f"{tuple(up.shape)}"
        )
    device = _checks.same_device(SILU_MUL, gate=gate, up=up)
    why = None if up.dtype == gate.dtype else f"gate is {gate.dtype} but up is {up.dtype}"
    _, impl = _registry.select(SILU_MUL, backend, device, gate.dtype, _sizes(gate, up, why=why))
    return impl.fn(gate, up)


def _rope_why(q, k, cos, sin) -> str | None:
    if k.dtype != q.dtype or sin.dtype != cos.dtype:
        return f"q, k are {q.dtype}, {k.dtype} and cos, sin {cos.dtype}, {sin.dtype}"
    if q.shape[-1] % 2:
        return f"the head dimension ({q.shape[-1]}) is odd"
    return _cpp_dtype_why(cos=cos)


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin)`` for q [B, Hq, S, D],
    k [B, Hk, S, D] and cos, sin [B, S, D] (or [1, S, D]), broadcast over the heads. New
    tensors; the inputs are not modified."""
    for name, t, dims in (("q", q, 4), ("k", k, 4), ("cos", cos, 3), ("sin", sin, 3)):
        _tensor(ROPE, name, t)
        if t.dim() != dims:
            raise ValueError(f"rope: {name} must be {dims}-D, got shape {tuple(t.shape)}")
    B, _, S, D = q.shape
    if k.shape[0] != B or k.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"rope: k must be [B, Hk, S, D] with q's B, S, D {B, S, D}, got {tuple(k.shape)}"
        )
    for name, t in (("cos", cos), ("sin", sin)):
        if t.shape[0] not in (1, B) or t.shape[1:] != (S, D):
            raise ValueError(f"rope: {name} must be [B, S, D] = {[B, S, D]}, got {list(t.shape)}")
    device = _checks.same_device(ROPE, q=q, k=k, cos=cos, sin=sin)
    sizes = _sizes(q, k, cos, sin, why=_rope_why(q, k, cos, sin))
    _, impl = _registry.select(ROPE, backend, device, q.dtype, sizes)
    return impl.fn(q, k, cos, sin)
