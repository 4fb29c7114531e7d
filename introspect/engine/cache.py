"""The key/value cache argument of transformers models, under its current name or the old one.

transformers 5 renamed the forward argument ``past_key_values`` (and the output attribute of
the same name) to ``cache``; the old name still works but warns, and goes away in 5.40. Older
releases know only ``past_key_values``. Which name a model takes is read from its own forward
signature (feature detection, not version numbers), once per model class::

    out = model(input_ids=ids, use_cache=True, **cache_kwargs(model, DynamicCache()))
    cache = output_cache(out)
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

__all__ = ["CACHE_NAMES", "cache_argument", "cache_kwargs", "output_cache"]

CACHE_NAMES = ("cache", "past_key_values")  # the current name first


@functools.cache
def _argument_of(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):  # a forward without a readable signature
        return CACHE_NAMES[1]
    return next((name for name in CACHE_NAMES if name in params), CACHE_NAMES[1])


def cache_argument(module: Any) -> str:
    """``"cache"`` where ``module``'s forward takes an argument of that name, else
    ``"past_key_values"`` (older transformers, or a forward that takes ``**kwargs`` only)."""
    return _argument_of(type(module))


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """The keyword argument that passes ``cache`` to ``module``'s forward."""
    return {cache_argument(module): cache}


def output_cache(out: Any) -> Any:
    """The key/value cache a model's forward returned (``out.cache``, or ``past_key_values``
    where the output class still declares that field), without the deprecated alias."""
    fields = getattr(out, "__dataclass_fields__", None) or {}
    for name in CACHE_NAMES:
        if name in fields:
            return getattr(out, name)
    return out.past_key_values  # an output that is not a dataclass (a plain ModelOutput dict)
