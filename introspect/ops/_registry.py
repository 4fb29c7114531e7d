"""The one place that decides which backend runs an op.

Backends: ``reference`` (pure PyTorch, runs anywhere), ``cpp`` (introspect._C on CPU tensors),
``cuda`` (introspect._C's CUDA kernels on CUDA tensors), ``triton`` (Triton kernels on CUDA
tensors, or on CPU tensors under ``TRITON_INTERPRET=1``), ``onednn`` (oneDNN primitives that
PyTorch ships, ``torch.ops.mkldnn``, on CPU tensors).

Rules:
- ``backend="auto"`` picks the first backend that is available, implements the op, runs on the
  inputs' device and accepts their dtype; it falls back silently, ending at ``reference``.
- An explicitly requested backend that cannot run raises :class:`BackendUnavailableError`
  saying why.
- ``INTROSPECT_BACKEND=<name>`` replaces ``"auto"`` process-wide (and is then explicit).
- ``cuda`` needs a driver for the CUDA major version ``_C`` was built with (its runtime is linked
  statically, so this can be newer than what PyTorch's CUDA build needs) and a GPU of an
  architecture it was built for; ``triton`` runs CPU tensors only under the interpreter.
- ``auto`` tries ``cpp``, ``onednn``, ``reference`` on CPU and ``cuda``, ``triton``,
  ``reference`` on CUDA, unless the op sets its own order per dtype (:func:`set_auto_order`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from introspect import _native
from introspect.errors import EXIT_USAGE, IntrospectError

BACKENDS = ("reference", "cpp", "cuda", "triton", "onednn")
ENV_VAR = "INTROSPECT_BACKEND"

# Order tried by "auto" for each device type (an op may set its own per dtype, see
# set_auto_order). Interpreted Triton is never chosen automatically.
_AUTO_ORDER = {"cpu": ("cpp", "onednn", "reference"), "cuda": ("cuda", "triton", "reference")}
_OP_AUTO_ORDER: dict[str, Callable[[str, torch.dtype], tuple[str, ...] | None]] = {}


class BackendUnavailableError(IntrospectError, RuntimeError):
    """An explicitly requested backend cannot run this op on these inputs."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class Impl:
    fn: Callable
    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    accepts: Callable[[dict], str | None] | None = None
    """Optional size check: returns why these sizes cannot run, or None."""


_OPS: dict[str, dict[str, Impl]] = {}


def register(
    op: str,
    backend: str,
    *,
    devices: set[str],
    dtypes: set[torch.dtype],
    accepts: Callable[[dict], str | None] | None = None,
):
    """Decorator: ``fn`` implements ``op`` on ``backend`` for these device types and dtypes
    (and, if ``accepts`` is given, for the sizes it accepts)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def deco(fn: Callable) -> Callable:
        _OPS.setdefault(op, {})[backend] = Impl(fn, frozenset(devices), frozenset(dtypes), accepts)
        return fn

    return deco


def set_auto_order(op: str, order: Callable[[str, torch.dtype], tuple[str, ...] | None]) -> None:
    """``order(device_type, dtype)`` gives the backends ``auto`` tries for ``op`` (``None``: the
    default order of that device type)."""
    _OP_AUTO_ORDER[op] = order


def auto_order(op: str, device_type: str, dtype: torch.dtype) -> tuple[str, ...]:
    """The backends ``auto`` tries for ``op`` on ``device_type`` tensors of ``dtype``, in order."""
    custom = _OP_AUTO_ORDER.get(op)
    order = custom(device_type, dtype) if custom is not None else None
    return order if order is not None else _AUTO_ORDER.get(device_type, ("reference",))


def _triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_import_error() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken triton install must not break introspect
        return f"triton failed to import: {exc}"
    return None


def _cuda_present() -> bool:
    # torch.cuda.is_available() queries the driver without creating a CUDA context.
    return torch.cuda.is_available()


@functools.cache
def _cuda_driver_reason() -> str | None:
    # Cached: the driver does not change under a running process. Creates no CUDA context.
    return _native.cuda_driver_reason(_native.cuda_versions())


def _device_capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _cuda_device_reason(index: int) -> str | None:
    """Why the CUDA kernels cannot run on GPU ``index`` (its architecture), or ``None``. Only
    asked for tensors already on that GPU, so CUDA is initialised by then."""
    return _native.cuda_device_reason(
        _device_capability(index), _native.build_info().get("cuda_archs", ""),
        _native.cuda_versions() or {"driver": 0, "runtime": 0},
    )  # fmt: skip


def unavailable_reason(backend: str) -> str | None:
    """``None`` if ``backend`` can run on this machine, else a sentence saying why not."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "reference":
        return None
    if backend == "cpp":
        return _native.unavailable_reason()
    if backend == "cuda":
        reason = _native.unavailable_reason()
        if reason is not None:
            return reason
        if not _native.build_info().get("cuda", False):
            return "introspect._C was built without CUDA kernels (no CUDA compiler at build time)"
        if not _cuda_present():
            driver = _cuda_driver_reason()
            return "no CUDA device is available" + (f" ({driver})" if driver else "")
        return _cuda_driver_reason()
    if backend == "onednn":
        from introspect.ops.linear import onednn_unavailable

        return onednn_unavailable()
    # triton
    reason = _triton_import_error()
    if reason is not None:
        return reason
    if not (_cuda_present() or _triton_interpreted()):
        return "triton needs a CUDA device, or TRITON_INTERPRET=1 to run on the CPU"
    return None


def available_backends(op: str | None = None) -> list[str]:
    """Backends this machine can run (for ``op``, those that also implement it)."""
    names = [b for b in BACKENDS if unavailable_reason(b) is None]
    if op is not None:
        names = [b for b in names if b in _OPS.get(op, {})]
    return names


def implemented_backends(op: str) -> list[str]:
    """Backends that implement ``op`` at all, available here or not."""
    return [b for b in BACKENDS if b in _OPS.get(op, {})]


def _why_not(
    op: str, backend: str, device: torch.device, dtype: torch.dtype, sizes: dict | None = None
) -> str | None:
    impls = _OPS.get(op, {})
    if backend not in impls:
        return (
            f"op {op!r} has no {backend!r} implementation "
            f"(implemented: {', '.join(implemented_backends(op))})"
        )
    reason = unavailable_reason(backend)
    if reason is not None:
        return f"backend {backend!r} is not available: {reason}"
    impl = impls[backend]
    if device.type not in impl.devices:
        where = " or ".join(sorted(d.upper() for d in impl.devices))
        return f"backend {backend!r} runs {op!r} on {where} tensors, but the inputs are on {device}"
    if backend == "triton" and device.type == "cpu" and not _triton_interpreted():
        return (
            f"backend 'triton' runs {op!r} on CUDA tensors, and on CPU tensors only under the "
            "Triton interpreter (TRITON_INTERPRET=1, set before triton is imported); the inputs "
            "are on cpu"
        )
    if backend == "cuda" and device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        reason = _cuda_device_reason(index)
        if reason is not None:
            return f"backend 'cuda' cannot run on {device}: {reason}"
    if dtype not in impl.dtypes:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in impl.dtypes))
        return f"backend {backend!r} runs {op!r} on {names}, but the inputs are {dtype}"
    if impl.accepts is not None and sizes is not None:
        reason = impl.accepts(sizes)
        if reason is not None:
            return f"backend {backend!r} cannot run {op!r} here: {reason}"
    return None


def select(
    op: str,
    backend: str,
    device: torch.device,
    dtype: torch.dtype,
    sizes: dict | None = None,
) -> tuple[str, Impl]:
    """Resolves ``backend`` ("auto" or a name) to the implementation that will run."""
    if backend == "auto":
        backend = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
        if backend not in (*BACKENDS, "auto"):
            raise ValueError(
                f"{ENV_VAR}={backend!r} is not a backend; choose from {', '.join(BACKENDS)}"
            )
    if backend == "auto":
        for name in auto_order(op, device.type, dtype):
            if _why_not(op, name, device, dtype, sizes) is None:
                return name, _OPS[op][name]
        raise BackendUnavailableError(f"no backend can run {op!r} on {device} / {dtype}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from auto, {', '.join(BACKENDS)}")
    reason = _why_not(op, backend, device, dtype, sizes)
    if reason is not None:
        raise BackendUnavailableError(reason)
    return backend, _OPS[op][backend]
