"""What an adapter knows about the file it converts (its container, the id prefix), and the value
checks the adapters share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from introspect.data.importers.containers import _RowError


def _id_text(value: Any, column: str) -> str:
    """An id cell as text (a whole float counts as an integer); _RowError if unusable."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        raise _RowError(f"id column {column!r} must hold a string or an integer, got {value!r}")
    text = str(value)
    if not text.strip():
        raise _RowError(f"id column {column!r} is empty")
    return text


def _is_blank(value: Any) -> bool:
    """True for a missing value or blank text."""
    return value is None or (isinstance(value, str) and not value.strip())


class _Context:
    """What an adapter needs to know about the file it is converting."""

    def __init__(self, path: Path, container: str, id_prefix: str | None):
        self.container = container
        self.prefix = id_prefix or path.stem

    def generated_id(self, number: int) -> str:
        return f"{self.prefix}-{number:06d}"

    def local_id(self, value: Any, column: str, number: int) -> str:
        if _is_blank(value):
            return self.generated_id(number)
        return f"{self.prefix}-{_id_text(value, column)}"


def _short(text: str, n: int = 60) -> str:
    """``text`` cut to ``n`` characters for an error message."""
    return text if len(text) <= n else text[: n - 3] + "..."
