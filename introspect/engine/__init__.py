"""The extraction engine: f(x), f(x'), Δ and hidden states from packed paired forwards."""

from introspect.engine.stream import POSITIONS, ExtractConfig, extract_pairs, shared_prefix

__all__ = ["POSITIONS", "ExtractConfig", "extract_pairs", "shared_prefix"]
