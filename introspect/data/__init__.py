"""Counterfactual pairs: the record, validation, pair files, pairs built in code, task generators
and importers."""

from introspect.data.coerce import coerce_pairs, iter_coerced
from introspect.data.io import (
    ON_ERROR,
    PairFileError,
    ReadReport,
    Skipped,
    iter_pairs,
    read_pairs,
    write_pairs,
    write_skipped,
)
from introspect.data.pairs import Pair, PairError, ablate_each, prompt_text, remove_spans

__all__ = [
    "ON_ERROR",
    "Pair",
    "PairError",
    "PairFileError",
    "ReadReport",
    "Skipped",
    "ablate_each",
    "coerce_pairs",
    "iter_coerced",
    "iter_pairs",
    "prompt_text",
    "read_pairs",
    "remove_spans",
    "write_pairs",
    "write_skipped",
]
