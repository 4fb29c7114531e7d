"""Concurrent post-training: a behaviour-shifting objective on the model and an explanation
objective on a probe, at the same time, with resumable checkpoints.

    from introspect.training import TrainConfig, train

    train(TrainConfig(model="smollm2-135m", pairs="train.jsonl", labels="runs/m0",
                      out="runs/train", objective="anti-sycophancy", concurrent=True))

Modules: ``objectives`` (what each objective trains towards, the differentiable forwards),
``config`` (the settings), ``loop`` (:func:`train`, the entry point), ``trainer`` (the run as an
object: setup, one step, checkpoints), ``setup`` (what a run prepares before its first step),
``checkpoint`` (directory layout, optimizer state), ``commands`` (the ``introspect train``
command line). ``train(config, model=..., tokenizer=...)`` starts from a model object in memory.
Attributes are imported on first use, so that importing this package (and building the command
line) does not import torch.
"""

from __future__ import annotations

from introspect._lazy import lazy_getattr

__all__ = ["OBJECTIVES", "TrainConfig", "TrainError", "sft_targets", "train"]

_WHERE = {
    "OBJECTIVES": "objectives",
    "TrainError": "objectives",
    "sft_targets": "objectives",
    "TrainConfig": "loop",
    "train": "loop",
}


__getattr__ = lazy_getattr(__name__, _WHERE)
