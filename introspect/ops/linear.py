"""linear: ``x @ weight.T + bias``, with oneDNN's prepacked GEMM on CPU (inference).

``F.linear`` on float32 CPU tensors runs MKL's GEMM on the plain ``[out, in]`` weight. oneDNN
(which PyTorch ships as ``torch.ops.mkldnn``) can first reorder the weight into its blocked
layout once, and then runs each product from it, faster on the AVX-512 CPUs the engine is
measured on (its share of the engine's time is the ``no packed linear`` ablation of
``benchmarks/bench_extract.py``). The result differs from ``F.linear`` only in summation order
(about 1e-6 relative in float32; ``tests/ops/test_linear.py`` bounds both against float64).

``pack_linear_weight(weight)`` makes the blocked copy (a :class:`PackedWeight`, which remembers
the weight's storage and version, so a weight changed in place since is noticed);
``linear(x, weight, bias, packed=...)`` uses it.

Backends: ``reference`` (``F.linear``, differentiable, anywhere) and ``onednn`` (float32 CPU
tensors, forward only: ``auto`` takes it only with a packed weight that is current and when
autograd will not need a backward).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from introspect.ops import _checks, _registry

OP = "linear"
_REFERENCE_DTYPES = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


@dataclass(eq=False)
class PackedWeight:
    """A weight in oneDNN's blocked layout, and which weight (storage, version) it copies."""

    packed: torch.Tensor
    data_ptr: int
    version: int
    shape: tuple[int, ...]

    def current(self, weight: torch.Tensor) -> bool:
        """Whether this is still a copy of ``weight`` (same storage, not changed in place)."""
        return (
            weight.data_ptr() == self.data_ptr
            and weight._version == self.version
            and tuple(weight.shape) == self.shape
        )


def onednn_unavailable() -> str | None:
    """Why the ``onednn`` backend cannot run here, or ``None``."""
    if not torch.backends.mkldnn.is_available():
        return "this PyTorch build has no oneDNN (mkldnn)"
    ops = torch.ops.mkldnn
    for name in ("_reorder_linear_weight", "_linear_pointwise"):
        if not hasattr(ops, name):
            return f"this PyTorch build has no torch.ops.mkldnn.{name}"
    return None


def pack_linear_weight(weight: torch.Tensor) -> PackedWeight:
    """``weight`` ([out, in], float32, CPU) reordered for the ``onednn`` backend."""
    why = onednn_unavailable()
    if why is not None:
        raise _registry.BackendUnavailableError(f"cannot pack a linear weight: {why}")
    if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
        raise ValueError(
            "pack_linear_weight: weight must be a 2-D float32 CPU tensor, got "
            f"{tuple(weight.shape)} {weight.dtype} on {weight.device}"
        )
    with torch.no_grad():
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
    return PackedWeight(packed, weight.data_ptr(), weight._version, tuple(weight.shape))


@_registry.register(OP, "reference", devices={"cpu", "cuda"}, dtypes=_REFERENCE_DTYPES)
def linear_reference(x, weight, bias=None, packed=None):
    return F.linear(x, weight, bias)


def _onednn_accepts(sizes: dict) -> str | None:
    if sizes.get("grad"):
        return "it has no backward, and an input requires grad with grad enabled"
    if not sizes.get("packed"):
        return "it needs the weight packed by pack_linear_weight (and still current)"
    return onednn_unavailable() or sizes.get("why")


@_registry.register(OP, "onednn", devices={"cpu"}, dtypes={torch.float32}, accepts=_onednn_accepts)
def linear_onednn(x, weight, bias=None, packed=None):
    b = None if bias is None else bias.detach()
    return torch.ops.mkldnn._linear_pointwise(x.detach(), packed.packed, b, "none", [], "")


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    packed: PackedWeight | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``: x [..., in], weight [out, in], bias [out] or ``None``.

    With ``packed`` (from :func:`pack_linear_weight` on this weight) and no autograd, ``auto``
    runs oneDNN's GEMM on it; otherwise ``F.linear``."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"linear: {name} must be a floating-point torch.Tensor")
    if weight.dim() != 2 or x.dim() == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: x [..., in] and weight [out, in] do not fit: {tuple(x.shape)} and "
            f"{tuple(weight.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    device = _checks.same_device(OP, x=x, weight=weight, bias=bias)
    grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias)
    )
    dtypes = {t.dtype for t in (x, weight, bias) if t is not None}
    why = (
        None
        if len(dtypes) == 1
        else f"x, weight and bias differ in dtype ({sorted(dtypes, key=str)})"
    )
    current = packed is not None and packed.current(weight)
    sizes = {"grad": grad, "packed": current, "why": why}
    _, impl = _registry.select(OP, backend, device, x.dtype, sizes)
    return impl.fn(x, weight, bias, packed if current else None)
