"""Listing the models: each alias (installed or not, converted or not) and every other cached
conversion, as rows and as the text table that ``introspect models`` prints."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from introspect.models.aliases import ALIASES, ModelAlias, _locate_alias
from introspect.models.errors import ModelNotAvailableError
from introspect.models.gguf_cache import _dir_size, _read_manifest, resolve_cache_dir


def _alias_row(alias: ModelAlias, models_dir: Path) -> tuple[dict[str, Any], str | None]:
    """The row of an alias, and the name of its cache folder where its package is installed."""
    row: dict[str, Any] = {
        "alias": alias.name,
        "package": alias.package,
        "installed": False,
        "gguf": None,
        "cached": False,
        "cache_path": None,
        "cache_size_bytes": 0,
        "install": alias.install_command,
        "description": alias.description,
    }
    try:
        src = _locate_alias(alias.name)
    except ModelNotAvailableError:
        return row, None
    folder = models_dir / src.folder
    row.update(installed=True, gguf=str(src.origin), cache_path=str(folder))
    if _read_manifest(folder) is not None:
        row.update(cached=True, cache_size_bytes=_dir_size(folder))
    return row, folder.name


def _cached_row(folder: Path, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The row of a cached conversion that no installed alias accounts for."""
    source = manifest.get("source")
    return {
        "alias": folder.name,
        "package": manifest.get("package"),
        "installed": bool(source) and Path(source).exists(),
        "gguf": source,
        "cached": True,
        "cache_path": str(folder),
        "cache_size_bytes": _dir_size(folder),
        "install": None,
        "description": "cached conversion",
    }


def list_models(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per alias, then one per other cached conversion (a ``.gguf`` file, or an alias
    converted from another version of its package), named by its cache folder.

    Keys: ``alias``, ``package`` (pip name or None), ``installed`` (the package, or for other
    cached conversions the source file, is present), ``gguf`` (the GGUF source or None),
    ``cached``, ``cache_path``, ``cache_size_bytes``, ``install`` (the command, for aliases) and
    ``description``.
    """
    models_dir = resolve_cache_dir(cache_dir) / "models"
    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    for alias in ALIASES.values():
        row, folder_name = _alias_row(alias, models_dir)
        rows.append(row)
        if folder_name is not None:
            listed.add(folder_name)

    if models_dir.is_dir():
        for folder in sorted(models_dir.iterdir()):
            if folder.name.startswith(".") or folder.name in listed or not folder.is_dir():
                continue
            manifest = _read_manifest(folder)
            if manifest is not None:
                rows.append(_cached_row(folder, manifest))
    return rows


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_models_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain aligned text table of :func:`list_models` rows, with the install command of each
    alias that is not installed underneath."""
    header = ("MODEL", "INSTALLED", "CACHED", "SIZE", "CACHE PATH")
    table = [header]
    for r in rows:
        table.append(
            (
                str(r.get("alias")),
                "yes" if r.get("installed") else "no",
                "yes" if r.get("cached") else "no",
                _human_size(int(r.get("cache_size_bytes") or 0)) if r.get("cached") else "-",
                str(r.get("cache_path") or "-"),
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    missing = [r for r in rows if r.get("install") and not r.get("installed")]
    if missing:
        lines.append("")
        lines.extend(f"to install {r['alias']}: {r['install']}" for r in missing)
    return "\n".join(lines)
