"""Whether a model honours the packed 4D mask, decided once and remembered.

The tree layout packs a pair's sequences into one row with a 4D mask; a model whose attention
ignores or mangles that mask would give other numbers than separate forwards, so the engine
runs one item both ways before it trusts the layout. The answer depends on the model's
architecture and configuration, its attention implementation, dtype and device, and the torch
and transformers versions, not on its weights or the pair: it is kept per model object in
memory and on disk under ``<cache>/layout/`` (the cache root of
:func:`introspect.models.gguf_cache.resolve_cache_dir`), so a new process on the same model
skips the check. ``INTROSPECT_LAYOUT_CHECK=always`` ignores both (every run checks again).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["layout_fingerprint", "tree_layout_problem"]

ENV_VAR = "INTROSPECT_LAYOUT_CHECK"
FORMAT_VERSION = 1
_MEMORY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layout_fingerprint(model: Any) -> dict[str, Any]:
    """What the packed mask's handling depends on (the disk cache's key)."""
    import torch
    import transformers

    config = model.config.to_dict() if hasattr(model.config, "to_dict") else {}
    for where in ("_name_or_path", "_commit_hash", "transformers_version"):  # not behaviour
        config.pop(where, None)
    param = next(model.parameters())
    return {
        "format": FORMAT_VERSION,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": json.dumps(config, sort_keys=True, default=str),
        "attn_implementation": str(getattr(model.config, "_attn_implementation", None)),
        "dtype": str(param.dtype),
        "device": param.device.type,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _read(path, key) -> tuple[bool, str | None]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(doc, dict) or doc.get("key") != key or "problem" not in doc:
        return False, None
    problem = doc["problem"]
    return (True, problem) if problem is None or isinstance(problem, str) else (False, None)


def tree_layout_problem(model: Any, check: Callable[[], str | None]) -> str | None:
    """``None`` where ``model`` honours the packed mask, else why not: remembered for this model
    object (while its fingerprint is unchanged), else read from the disk cache, else
    ``check()`` (and then remembered in both)."""
    from introspect.models.gguf_cache import resolve_cache_dir

    always = os.environ.get(ENV_VAR, "") == "always"
    key = layout_fingerprint(model)
    digest = _digest(key)
    seen = _MEMORY.get(model)
    if not always and seen is not None and seen[0] == digest:  # same model, same settings
        return seen[1]
    path = resolve_cache_dir() / "layout" / f"{digest}.json"
    found, problem = (False, None) if always else _read(path, key)
    if not found:
        problem = check()
        try:
            from introspect._io import write_json_atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"key": key, "problem": problem})
        except OSError:
            pass  # a read-only cache: check again next time
    _MEMORY[model] = (digest, problem)
    return problem
