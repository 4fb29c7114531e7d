"""The generic formats (``jsonl``, ``csv``, ``parquet``): pair fields read from source columns
through a mapping (the ``--map`` option), with CSV cells parsed into lists, chats and objects."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from introspect.data.importers.containers import _Row, _RowError
from introspect.data.importers.context import _Context, _id_text

_PAIR_FIELDS = ("id", "prompt", "remove", "prompt_mod", "choices", "target", "meta")


def _check_mapping(mapping: Mapping[str, str] | None) -> dict[str, str]:
    """Every pair field -> its source column (named by ``mapping`` or the same name)."""
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(_PAIR_FIELDS))
    if unknown:
        raise ValueError(
            f"mapping names unknown pair field(s) {', '.join(map(repr, unknown))}; "
            f"the fields are {', '.join(_PAIR_FIELDS)}"
        )
    for name, column in mapping.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"mapping[{name!r}] must be a column name, got {column!r}")
    return {name: mapping.get(name, name) for name in _PAIR_FIELDS}


def _csv_list(text: str, column: str) -> list[Any] | None:
    """A ``choices``/``remove`` cell: a JSON array or a ``|``-separated list."""
    if not text.strip():
        return None
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _RowError(
                f"column {column!r} starts with '[' but is not a JSON array "
                f"({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(value, list):
            raise _RowError(f"column {column!r} must be a JSON array or a |-separated list")
        return value
    return text.split("|")


def _csv_prompt(text: str) -> Any:
    """A ``prompt``/``prompt_mod`` cell: a chat when it holds a JSON array of messages."""
    if not text.strip():
        return None
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text
        if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
            return value
    return text


def _csv_meta(text: str, column: str) -> Any:
    """A ``meta`` cell: a JSON object."""
    if not text.strip():
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _RowError(f"column {column!r} must hold a JSON object ({exc.msg})") from None
    if not isinstance(value, dict):
        raise _RowError(f"column {column!r} must hold a JSON object, got {type(value).__name__}")
    return value


def _csv_cell(name: str, text: str, column: str) -> Any:
    """The value of a CSV cell for pair field ``name`` (None for an empty cell)."""
    if name in ("choices", "remove"):
        return _csv_list(text, column)
    if name in ("prompt", "prompt_mod"):
        return _csv_prompt(text)
    if name == "meta":
        return _csv_meta(text, column)
    return text if text.strip() else None


def _generic_adapter(mapping: Mapping[str, str] | None) -> Callable[[_Context, _Row], dict]:
    """The converter of a generic row to a pair object through ``mapping``."""
    columns = _check_mapping(mapping)
    used = set(columns.values())

    def convert(ctx: _Context, row: _Row) -> dict:
        data = row.data or {}
        csv_cells = ctx.container == "csv"
        obj: dict[str, Any] = {}
        for name, column in columns.items():
            if column not in data:
                continue
            value = data[column]
            if csv_cells and isinstance(value, str):
                value = _csv_cell(name, value, column)
            if value is not None:
                obj[name] = value
        if "id" in obj:
            obj["id"] = _id_text(obj["id"], columns["id"])
        else:
            if columns["id"] in data:  # the column is there but this row has no value
                raise _RowError(f"id column {columns['id']!r} is empty")
            obj["id"] = ctx.generated_id(row.number)
        pid = obj["id"]
        for name in ("prompt", "choices", "target"):
            if name not in obj:
                column = columns[name]
                where = f"column {column!r}" + (f" (for '{name}')" if column != name else "")
                state = "is empty" if column in data else "is missing"
                raise _RowError(f"{where} {state}", pid)
        extras = {k: v for k, v in data.items() if k not in used}
        if extras:
            meta = obj.get("meta")
            if meta is not None and not isinstance(meta, dict):
                raise _RowError(f"'meta' must be an object, got {type(meta).__name__}", pid)
            obj["meta"] = {**extras, **(meta or {})}
        return obj

    return convert
