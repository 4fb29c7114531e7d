"""Evaluation: agreement metrics, Self / Orig / gap with paired bootstrap intervals, and the
rows of ``metrics.jsonl`` (see :mod:`introspect.evaluation.metrics`)."""

from __future__ import annotations

from introspect.evaluation import metrics as _metrics
from introspect.evaluation.metrics import *  # noqa: F403 - the metrics are this package's API

__all__ = list(_metrics.__all__)
from introspect.evaluation.checkpoints import EvalError, evaluate_training

__all__ += ["EvalError", "evaluate_training"]
