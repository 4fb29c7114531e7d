"""Test configuration: markers, backend discovery, and the Triton interpreter on CPU machines.

Tests run against the *installed* package (``make test`` builds and installs it first), so the
native extension they exercise is the one users get.
"""

from __future__ import annotations

import os

# Triton kernels run on the CPU through the interpreter when no GPU is present. This must be set
# before triton is imported anywhere.
if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass

import pytest

from introspect.ops import available_backends

try:
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "introspect",
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    settings.load_profile("introspect")
except ImportError:  # pragma: no cover
    pass


def cpu_backends(op: str, include_reference: bool = False) -> list[str]:
    """Backends that run ``op`` on CPU tensors here (Triton only under the interpreter)."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    names = [b for b in available_backends(op) if b != "cuda" and (b != "triton" or interpreted)]
    return names if include_reference else [b for b in names if b != "reference"]


def pytest_collection_modifyitems(config, items):
    # A GPU is enough: Triton tests need nothing else, and tests of the `cuda` backend skip
    # themselves where the CUDA build of introspect._C is absent or cannot run.
    import torch

    have_cuda = torch.cuda.is_available()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not have_cuda:
            item.add_marker(skip_cuda)


# ---------------------------------------------------------------------------------------------
# Real models: converted once per session into a cache (the user's when $INTROSPECT_CACHE is set)
# ---------------------------------------------------------------------------------------------

import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from introspect.models import ModelNotAvailableError, load_model, resolve_cache_dir  # noqa: E402


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """The user's cache when $INTROSPECT_CACHE is set, else a temporary one for this session
    (removed afterwards: converted models take hundreds of MB)."""
    if os.environ.get("INTROSPECT_CACHE"):
        yield resolve_cache_dir()
        return
    cache = tmp_path_factory.mktemp("introspect-cache")
    yield cache
    shutil.rmtree(cache, ignore_errors=True)


def _load_alias_or_skip(alias: str, cache: Path):
    try:
        t0 = time.perf_counter()
        lm = load_model(alias, cache_dir=cache)
    except ModelNotAvailableError as e:
        pytest.skip(str(e).splitlines()[0])
    except ImportError as e:
        pytest.skip(str(e))
    return lm, time.perf_counter() - t0


@pytest.fixture(scope="session")
def smollm2(model_cache):
    lm, _ = _load_alias_or_skip("smollm2-135m", model_cache)
    return lm
