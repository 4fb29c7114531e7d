"""The extraction engine: f(x), f(x'), Δ and hidden states from packed paired forwards.

Its names are imported on first use, so that importing the package (and building the command
line) imports no torch."""

from introspect._lazy import lazy_getattr

_WHERE = {
    "POSITIONS": "stream",
    "ExtractConfig": "stream",
    "extract_pairs": "stream",
    "shared_prefix": "stream",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_getattr(__name__, _WHERE)
