"""Loads the compiled extension ``introspect._C`` once, safely.

A missing extension (pure-Python install, or a build with the native part switched off) or one
built for another version of the package is not an error: the ``cpp`` and ``cuda`` backends are
simply unavailable, and a warning says what was built and what is present.
"""

from __future__ import annotations

import logging
import os
from types import ModuleType

from introspect import __version__

logger = logging.getLogger("introspect")

#: The kernel ABI this Python code was written against (csrc/common.h: kAbiVersion).
EXPECTED_ABI = 1

_loaded = False
_module: ModuleType | None = None
_reason: str | None = None


def _warn(message: str) -> None:
    # INTROSPECT_QUIET_NATIVE=1 silences the warning for deliberate pure-Python installs.
    if os.environ.get("INTROSPECT_QUIET_NATIVE") != "1":
        logger.warning(message)


def load() -> ModuleType | None:
    """Returns ``introspect._C`` if it is present and matches this package, else ``None``."""
    global _loaded, _module, _reason
    if _loaded:
        return _module
    _loaded = True
    try:
        from introspect import _C  # type: ignore[attr-defined]
    except ImportError as exc:
        _reason = f"introspect._C is not importable ({exc})"
        _warn(
            f"{_reason}; the 'cpp' and 'cuda' backends are disabled and the PyTorch reference "
            "is used. Build it with `pip install .` from a source checkout (needs a C++17 "
            "compiler and CMake)."
        )
        return None
    built_version = getattr(_C, "__version__", "unknown")
    built_abi = getattr(_C, "ABI_VERSION", None)
    if built_abi != EXPECTED_ABI or built_version != __version__:
        info = _C.build_info() if hasattr(_C, "build_info") else {}
        _reason = (
            f"introspect._C was built for introspect {built_version} (kernel ABI {built_abi}, "
            f"cuda={info.get('cuda', '?')}), but introspect {__version__} (kernel ABI "
            f"{EXPECTED_ABI}) is present"
        )
        _warn(f"{_reason}; the native backends are disabled. Reinstall to rebuild it.")
        return None
    _module = _C
    return _module


def unavailable_reason() -> str | None:
    """Why the extension is unavailable, or ``None`` if it loaded."""
    load()
    return _reason


def build_info() -> dict:
    """What the extension was built with (empty when it is not loaded)."""
    module = load()
    return dict(module.build_info()) if module is not None else {}


# --------------------------------------------------------------------------------------------
# Can this machine's driver and GPU run the CUDA kernels? (Checked before any launch.)
# --------------------------------------------------------------------------------------------

# The oldest driver branch for each CUDA major version (NVIDIA's release notes).
_DRIVER_FOR_MAJOR = {11: "R450", 12: "R525", 13: "R580"}


def cuda_version_str(v: int) -> str:
    """ "13.0" for 13000 (a CUDA version as 1000 * major + 10 * minor)."""
    return f"{v // 1000}.{v % 1000 // 10}"


def cuda_versions() -> dict | None:
    """``{"driver": int, "runtime": int, "error": str}`` from ``_C.cuda_versions()`` (CUDA
    versions as 1000 * major + 10 * minor; driver 0 when none is installed), or ``None`` when the
    extension holds no CUDA kernels. Creates no CUDA context."""
    module = load()
    if module is None or not hasattr(module, "cuda_versions"):
        return None
    return dict(module.cuda_versions())


def cuda_driver_reason(versions: dict | None) -> str | None:
    """Why a driver reporting ``versions`` (see :func:`cuda_versions`) cannot run the CUDA
    kernels, or ``None``. The statically linked runtime needs a driver for its CUDA major
    version (CUDA minor version compatibility covers the rest)."""
    if versions is None:
        return "introspect._C has no CUDA version query (built before it was added): rebuild it"
    driver, runtime = int(versions["driver"]), int(versions["runtime"])
    if driver <= 0:
        err = versions.get("error") or ""
        return "no NVIDIA driver was found" + (f" ({err})" if err else "")
    if driver // 1000 >= runtime // 1000:
        return None
    needs = _DRIVER_FOR_MAJOR.get(runtime // 1000)
    return (
        f"introspect._C's CUDA kernels were built with CUDA {cuda_version_str(runtime)}, which "
        f"needs a driver for CUDA {runtime // 1000}.x{f' ({needs} or newer)' if needs else ''}, "
        f"but this driver supports CUDA {cuda_version_str(driver)}; update the driver, or "
        f"rebuild with a CUDA {driver // 1000}.x toolkit (CUDACXX=/path/to/nvcc pip install .)"
    )


def cuda_device_reason(capability: tuple[int, int], archs: str, versions: dict) -> str | None:
    """Why a GPU of compute ``capability`` cannot run kernels built for ``archs`` (build_info's
    comma-separated list, e.g. ``"80,90"``: each with SASS and PTX, as CMake builds a plain
    number), or ``None``. SASS runs on the same major version at an equal or higher minor; PTX
    is compiled by the driver for any newer GPU, which needs a driver at least as new as the
    runtime that wrote the PTX."""
    major, minor = capability
    names = (a.strip().removesuffix("-real").removesuffix("-virtual") for a in archs.split(","))
    built = sorted((int(a) // 10, int(a) % 10) for a in names if a.isdigit())
    if any(b_major == major and b_minor <= minor for b_major, b_minor in built):
        return None
    older = [b for b in built if b <= (major, minor)]
    if not older:
        return (
            f"introspect._C's CUDA kernels were built for compute capability "
            f"{', '.join(f'{a}.{b}' for a, b in built)}; this GPU is {major}.{minor} (rebuild "
            f"with INTROSPECT_CUDA_ARCHS={major}{minor})"
        )
    if int(versions["driver"]) < int(versions["runtime"]):
        return (
            f"this GPU (compute capability {major}.{minor}) needs the kernels' PTX compiled by "
            f"the driver, which supports CUDA {cuda_version_str(int(versions['driver']))}, older "
            f"than the CUDA {cuda_version_str(int(versions['runtime']))} that wrote it (rebuild "
            f"with INTROSPECT_CUDA_ARCHS={major}{minor}, or update the driver)"
        )
    return None
