"""The errors of model loading and prompting, and the check that the loading libraries are
installed."""

from __future__ import annotations

import importlib.util
from typing import Any

from introspect.errors import EXIT_MODEL, EXIT_USAGE, IntrospectError

RUNTIME_REQUIREMENTS = '"transformers>=5" gguf accelerate safetensors'
"""What ``pip install`` needs for this module (gguf and accelerate only for GGUF sources)."""


class ModelLoadError(IntrospectError, RuntimeError):
    """A model could not be resolved or loaded; the message says what was tried and why."""

    exit_code = EXIT_MODEL


class ModelNotAvailableError(ModelLoadError):
    """An alias names a model whose package is not installed; the message gives the command."""


class NoChatTemplateError(IntrospectError, ValueError):
    """Chat messages were given for a model whose tokenizer has no chat template."""

    exit_code = EXIT_USAGE


def _require_transformers(*, gguf: bool = False) -> Any:
    """The ``transformers`` module, or an ImportError that gives the ``pip install`` command
    (with ``gguf``: also checks for the packages that GGUF conversion needs)."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(
            f"introspect.models needs transformers: pip install {RUNTIME_REQUIREMENTS}"
        ) from e
    if gguf:
        absent = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
        if absent:
            raise ImportError(
                f"converting a GGUF model needs {' and '.join(absent)}: "
                f"pip install {RUNTIME_REQUIREMENTS}"
            )
    return transformers


def _first_line(e: BaseException) -> str:
    """An exception as ``Type: first line of its message``, for one-line error messages."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
