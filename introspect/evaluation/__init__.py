"""Evaluation: agreement metrics, Self / Orig / gap with paired bootstrap intervals, and the
rows of ``metrics.jsonl`` (see :mod:`introspect.evaluation.metrics`)."""

from __future__ import annotations

from introspect.evaluation.metrics import (
    BINS,
    CATEGORICAL_METRICS,
    DEFAULT_N_BOOT,
    METRICS,
    SCALAR_METRICS,
    UNCHANGED,
    Estimate,
    agreement,
    bin_delta,
    bootstrap_indices,
    changed_f1,
    cohen_kappa,
    coupling,
    exact_match,
    metric_rows,
    pearson_r,
    prediction_records,
    rankdata,
    read_jsonl,
    recompute_metrics,
    spearman_r,
    write_jsonl,
)

__all__ = [
    "BINS",
    "CATEGORICAL_METRICS",
    "DEFAULT_N_BOOT",
    "METRICS",
    "SCALAR_METRICS",
    "UNCHANGED",
    "Estimate",
    "agreement",
    "bin_delta",
    "bootstrap_indices",
    "changed_f1",
    "cohen_kappa",
    "coupling",
    "exact_match",
    "metric_rows",
    "pearson_r",
    "prediction_records",
    "rankdata",
    "read_jsonl",
    "recompute_metrics",
    "spearman_r",
    "write_jsonl",
]
