"""Differentiable ops with one backend registry.

Every op has a pure-PyTorch ``reference`` that runs anywhere, plus native implementations
(``cpp``, ``cuda``, ``triton``) where they exist. ``backend="auto"`` picks the fastest one that
can run the inputs; naming a backend that cannot run raises :class:`BackendUnavailableError`.
The ``INTROSPECT_BACKEND`` environment variable replaces ``"auto"``.
"""

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "introspect.ops needs PyTorch >= 2.4, which is not installed. It is not a declared "
        "dependency, so that pip never picks a multi-GB CUDA build for you: install the build "
        "you want first (the CPU-only one, or one for your CUDA version)."
    ) from None

from introspect.ops._registry import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    implemented_backends,
    unavailable_reason,
)
from introspect.ops.choice_logprobs import (
    ChoiceLogprobs,
    choice_logprobs,
    choice_logprobs_reference,
)
from introspect.ops.delta_probe import DeltaProbeOutput, delta_probe, delta_probe_reference
from introspect.ops.fused import (
    rms_norm,
    rms_norm_reference,
    rope,
    rope_reference,
    silu_mul,
    silu_mul_reference,
)
from introspect.ops.linear import PackedWeight, linear, linear_reference, pack_linear_weight
from introspect.ops.paired_attention import SegmentMeta, paired_attention, segment_meta
from introspect.ops.pearson import PearsonStats, merge_chunks, pearson, pearson_stats

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ChoiceLogprobs",
    "DeltaProbeOutput",
    "PackedWeight",
    "PearsonStats",
    "SegmentMeta",
    "available_backends",
    "choice_logprobs",
    "choice_logprobs_reference",
    "delta_probe",
    "delta_probe_reference",
    "implemented_backends",
    "linear",
    "linear_reference",
    "merge_chunks",
    "pack_linear_weight",
    "paired_attention",
    "pearson",
    "pearson_stats",
    "rms_norm",
    "rms_norm_reference",
    "rope",
    "rope_reference",
    "segment_meta",
    "silu_mul",
    "silu_mul_reference",
    "unavailable_reason",
]
