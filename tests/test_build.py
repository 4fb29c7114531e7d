"""The native build: CUDA sources are compiled wherever a CUDA compiler exists."""

from __future__ import annotations

import os
import shutil

import pytest

from introspect import _native


def _cuda_compiler_present() -> bool:
    return bool(os.environ.get("CUDACXX")) or shutil.which("nvcc") is not None


@pytest.mark.skipif(
    os.environ.get("INTROSPECT_NATIVE", "ON").upper() in ("OFF", "0"),
    reason="built with INTROSPECT_NATIVE=OFF",
)
def test_cuda_kernels_compiled_when_a_compiler_is_present():
    if not _cuda_compiler_present() or os.environ.get("INTROSPECT_CUDA", "").upper() == "OFF":
        pytest.skip("no CUDA compiler here (or INTROSPECT_CUDA=OFF): nothing to check")
    info = _native.build_info()
    assert info, f"introspect._C did not load: {_native.unavailable_reason()}"
    assert info["cuda"], "nvcc is present but the extension was built without its CUDA kernels"
    kernels = set(info["cuda_kernels"].split(","))
    assert {"delta_probe_fwd", "delta_probe_bwd"} <= kernels, info
    assert "80" in info["cuda_archs"] and "90" in info["cuda_archs"], info


@pytest.mark.skipif(
    os.environ.get("INTROSPECT_NATIVE", "ON").upper() in ("OFF", "0"),
    reason="built with INTROSPECT_NATIVE=OFF",
)
def test_choice_logprobs_cuda_kernel_compiled_when_a_compiler_is_present():
    if not _cuda_compiler_present() or os.environ.get("INTROSPECT_CUDA", "").upper() == "OFF":
        pytest.skip("no CUDA compiler here (or INTROSPECT_CUDA=OFF): nothing to check")
    info = _native.build_info()
    assert info, f"introspect._C did not load: {_native.unavailable_reason()}"
    assert "choice_logprobs" in info["cuda_kernels"].split(","), info
    module = _native.load()
    assert hasattr(module, "choice_logprobs_cuda"), "the CUDA entry point is not bound"
    # The scratch size is host arithmetic: callable without a GPU.
    assert module.choice_logprobs_cuda_scratch_bytes(0, 10) == 0
    assert module.choice_logprobs_cuda_scratch_bytes(4096, 49152) >= 2 * 4096 * 4


@pytest.mark.skipif(
    os.environ.get("INTROSPECT_NATIVE", "ON").upper() in ("OFF", "0"),
    reason="built with INTROSPECT_NATIVE=OFF",
)
def test_cuda_build_reports_its_runtime_and_the_driver():
    """A CUDA build says which CUDA runtime it carries (statically linked: the driver must
    support its major version) and what the driver supports, without creating a context."""
    if not _cuda_compiler_present() or os.environ.get("INTROSPECT_CUDA", "").upper() == "OFF":
        pytest.skip("no CUDA compiler here (or INTROSPECT_CUDA=OFF): nothing to check")
    import subprocess

    versions = _native.cuda_versions()
    assert versions is not None, "the CUDA build has no cuda_versions()"
    assert isinstance(versions["driver"], int) and versions["driver"] >= 0
    nvcc = os.environ.get("CUDACXX") or shutil.which("nvcc")
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    major, minor = versions["runtime"] // 1000, versions["runtime"] % 1000 // 10
    assert f"release {major}.{minor}" in out, (versions, out)
