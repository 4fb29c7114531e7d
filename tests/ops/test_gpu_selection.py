"""Backend selection for CUDA tensors, decided on the CPU: a simulated GPU and driver (the
registry's device and driver queries monkeypatched) and the real selection code.

Covers the driver check of the statically linked CUDA runtime, the GPU architecture check, Triton
on CPU tensors without the interpreter, delta_probe's probe limit, and choice_logprobs' order by
dtype."""

from __future__ import annotations

import os

import pytest
import torch

from introspect import _native
from introspect.info import build_info
from introspect.ops import (
    BackendUnavailableError,
    _registry,
    available_backends,
    choice_logprobs,
    delta_probe,
    unavailable_reason,
)
from introspect.ops.delta_probe import MAX_PROBES

GPU = torch.device("cuda", 0)
CPU = torch.device("cpu")


def _clear_caches():
    _registry._cuda_driver_reason.cache_clear()
    _registry._cuda_device_reason.cache_clear()


@pytest.fixture
def fake_gpu(monkeypatch):
    """A machine with one GPU and a CUDA build of introspect._C; returns a setter for the
    driver's CUDA version and the GPU's compute capability."""
    pytest.importorskip("triton")
    state = {"driver": 13000, "runtime": 13000, "capability": (9, 0)}
    info = {
        "version": "x", "abi": _native.EXPECTED_ABI, "cuda": True, "cuda_archs": "80,90",
        "cuda_kernels": "delta_probe_fwd,delta_probe_bwd,choice_logprobs", "compiler": "x",
    }  # fmt: skip
    monkeypatch.setattr(_native, "unavailable_reason", lambda: None)
    monkeypatch.setattr(_native, "build_info", lambda: dict(info))
    monkeypatch.setattr(
        _native, "cuda_versions",
        lambda: {"driver": state["driver"], "runtime": state["runtime"], "error": ""},
    )  # fmt: skip
    monkeypatch.setattr(_registry, "_cuda_present", lambda: True)
    monkeypatch.setattr(_registry, "_device_capability", lambda index: state["capability"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("INTROSPECT_BACKEND", raising=False)
    _clear_caches()

    def set_(**kw):
        state.update(kw)
        _clear_caches()

    yield set_
    _clear_caches()


# ---------------------------------------------------------------------------------------------
# The driver check (a CUDA 13 runtime linked statically needs an R580+ driver)
# ---------------------------------------------------------------------------------------------


def test_old_driver_disables_cuda_and_auto_falls_back(fake_gpu):
    fake_gpu(driver=12040)  # R550: CUDA 12.4
    reason = unavailable_reason("cuda")
    assert reason is not None
    assert "CUDA 13.0" in reason and "R580" in reason and "12.4" in reason, reason
    assert "cuda" not in available_backends()
    assert build_info()["backends"]["cuda"] == reason  # what `introspect info` shows
    for op, dtype in (("delta_probe", torch.float32), ("choice_logprobs", torch.float32)):
        assert _registry.select(op, "auto", GPU, dtype, {"N": 4, "D": 8, "P": 2})[0] == "triton"
    with pytest.raises(BackendUnavailableError, match="R580"):
        _registry.select("delta_probe", "cuda", GPU, torch.float32, {"N": 4, "D": 8, "P": 2})


def test_info_command_prints_the_versions_and_the_reason(fake_gpu, capsys):
    from introspect.cli import main

    fake_gpu(driver=12040)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CUDA runtime compiled in: 13.0; driver: CUDA 12.4" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("cuda "))
    assert "R580" in line, out


def test_driver_of_the_runtime_major_runs_the_kernels(fake_gpu):
    for driver in (13000, 13020, 14000):  # minor version compatibility within 13.x
        fake_gpu(driver=driver, runtime=13010)
        assert unavailable_reason("cuda") is None, driver
        assert _registry.select("delta_probe", "auto", GPU, torch.float32)[0] == "cuda"


def test_no_driver_is_said(fake_gpu):
    fake_gpu(driver=0)
    assert "no NVIDIA driver" in unavailable_reason("cuda")


def test_extension_without_the_version_query_is_not_trusted(fake_gpu, monkeypatch):
    monkeypatch.setattr(_native, "cuda_versions", lambda: None)
    _clear_caches()
    assert "rebuild" in unavailable_reason("cuda")


def test_cpu_machine_says_why_cuda_is_unavailable(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _clear_caches()
    reason = build_info()["backends"]["cuda"]
    assert reason != "available"
    assert "no CUDA device" in reason or "introspect._C" in reason, reason
    from introspect.cli import main

    assert main(["info"]) == 0
    assert f"cuda       {reason}" in capsys.readouterr().out


def test_the_real_version_query():
    versions = _native.cuda_versions()
    if versions is None:
        pytest.skip("introspect._C has no CUDA kernels")
    assert versions["runtime"] >= 11000 and versions["driver"] >= 0
    if versions["driver"] == 0:  # this machine has no driver: the reason says so
        assert "no NVIDIA driver" in _native.cuda_driver_reason(versions)


# ---------------------------------------------------------------------------------------------
# The GPU's architecture against the one the kernels were built for
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capability", "driver", "runtime", "match"),
    [
        ((8, 0), 13000, 13000, None),
        ((8, 6), 13000, 13000, None),  # sm_80 SASS runs on 8.6 / 8.9
        ((8, 9), 12080, 13000, None),
        ((9, 0), 13000, 13000, None),
        ((7, 5), 13000, 13000, "built for compute capability 8.0, 9.0; this GPU is 7.5"),
        ((12, 0), 13020, 13000, None),  # PTX compiled by a new enough driver
        ((10, 0), 13000, 13020, "PTX compiled by the driver"),
    ],
)
def test_device_architecture(capability, driver, runtime, match):
    reason = _native.cuda_device_reason(capability, "80,90", {"driver": driver, "runtime": runtime})
    if match is None:
        assert reason is None
    else:
        assert match in reason


def test_unsupported_gpu_falls_back(fake_gpu):
    fake_gpu(capability=(7, 5))
    assert unavailable_reason("cuda") is None  # the machine's driver is fine ...
    assert _registry.select("delta_probe", "auto", GPU, torch.float32)[0] == "triton"
    with pytest.raises(BackendUnavailableError, match=r"this GPU is 7\.5"):
        _registry.select("delta_probe", "cuda", GPU, torch.float32)


# ---------------------------------------------------------------------------------------------
# Triton on CPU tensors needs the interpreter
# ---------------------------------------------------------------------------------------------


def test_triton_refuses_cpu_tensors_without_the_interpreter(fake_gpu, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert unavailable_reason("triton") is None  # a GPU is present ...
    for op in ("delta_probe", "choice_logprobs", "pearson", "paired_attention"):
        with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
            _registry.select(op, "triton", CPU, torch.float32, {"N": 4, "D": 8, "P": 2, "M": 4})
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1"):
        delta_probe(torch.randn(4, 8), torch.randn(2, 8), backend="triton")
    # ... and auto never picks it for CPU tensors.
    assert _registry.select("delta_probe", "auto", CPU, torch.float32)[0] != "triton"


# ---------------------------------------------------------------------------------------------
# delta_probe: more probes than the kernels take
# ---------------------------------------------------------------------------------------------


def test_probe_limit_falls_back_on_gpu(fake_gpu):
    sizes = {"N": 10, "D": 16, "P": MAX_PROBES}
    assert _registry.select("delta_probe", "auto", GPU, torch.float32, sizes)[0] == "cuda"
    sizes["P"] = MAX_PROBES + 1
    assert _registry.select("delta_probe", "auto", GPU, torch.float32, sizes)[0] == "reference"
    assert _registry.select("delta_probe", "auto", GPU, torch.bfloat16, sizes)[0] == "reference"
    for backend in ("cuda", "triton"):
        with pytest.raises(BackendUnavailableError, match=f"at most {MAX_PROBES} probes, got P"):
            _registry.select("delta_probe", backend, GPU, torch.float32, sizes)


def test_probe_limit_with_the_triton_kernel():
    pytest.importorskip("triton")
    if "triton" not in available_backends("delta_probe"):
        pytest.skip("triton not available here")
    device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"
    h, w = torch.randn(5, 8, device=device), torch.randn(MAX_PROBES + 1, 8, device=device)
    with pytest.raises(BackendUnavailableError, match=f"at most {MAX_PROBES} probes"):
        delta_probe(h, w, backend="triton")
    assert delta_probe(h, w).pred.shape == (5, MAX_PROBES + 1)


def test_probe_limit_matches_the_kernels():
    pytest.importorskip("triton")
    from introspect.kernels import delta_probe as k

    assert k.MAX_P == MAX_PROBES


# ---------------------------------------------------------------------------------------------
# choice_logprobs: Triton's tensor cores first for 16-bit heads
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "first"),
    [(torch.bfloat16, "triton"), (torch.float16, "triton"), (torch.float32, "cuda")],
)
def test_choice_logprobs_order_by_dtype(fake_gpu, dtype, first):
    sizes = {"M": 4, "V": 100, "D": 8, "C": 2}
    assert _registry.select("choice_logprobs", "auto", GPU, dtype, sizes)[0] == first
    # The other one where the first cannot run.
    fake_gpu(driver=12040)
    assert _registry.select("choice_logprobs", "auto", GPU, dtype, sizes)[0] == "triton"


def test_choice_logprobs_without_triton_uses_cuda_for_bf16(fake_gpu, monkeypatch):
    monkeypatch.setattr(_registry, "_triton_import_error", lambda: "triton is not installed")
    sizes = {"M": 4, "V": 100, "D": 8, "C": 2}
    assert _registry.select("choice_logprobs", "auto", GPU, torch.bfloat16, sizes)[0] == "cuda"


def test_choice_logprobs_auto_on_cpu_is_unchanged():
    hidden, weight = torch.randn(3, 8).bfloat16(), torch.randn(20, 8).bfloat16()
    choices = torch.tensor([[1, 2], [3, 4], [5, -1]])
    assert _registry.select("choice_logprobs", "auto", CPU, torch.bfloat16)[0] == "reference"
    out = choice_logprobs(hidden, weight, choices)
    assert out.logp.shape == (3, 2)
