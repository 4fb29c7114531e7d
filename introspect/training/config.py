"""The settings of a training run (:class:`TrainConfig`), checked when it is made.

What each setting does is described in :mod:`introspect.training.loop`; ``identity()`` names the
settings a resumed run must share with the run it continues (``packed_step`` changes how a step
is computed, not what: a run may resume with the other setting).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from introspect.training.objectives import OBJECTIVES, TrainError

__all__ = ["TrainConfig"]

# Settings that may differ between a run and its resumption.
_MUTABLE = ("steps", "out", "optimizer_state", "device", "packed_step")


@dataclass(frozen=True)
class TrainConfig:
    """What a training run does (see :func:`introspect.training.train`). ``model`` names the
    starting model (an alias, a directory, a ``.gguf`` file or a hub id) and is what
    ``train.json`` records; when ``train`` is given a model object, it is a label only."""

    model: str
    pairs: str
    labels: str
    out: str
    objective: str = "anti-sycophancy"
    concurrent: bool = False
    layer: int | None = None
    steps: int = 10
    batch_size: int = 8
    lr: float = 1e-5
    probe_lr: float = 1e-3
    weight_decay: float = 0.0
    w_behaviour: float = 1.0
    w_explain: float = 1.0
    w_reg: float = 0.0
    explainer_grad_to_model: bool = False
    difference_probe: bool = True
    verbal: bool = False
    w_verbal: float = 1.0
    verbal_threshold: float | None = None
    verbal_format: str = "binned"
    verbal_answers: str | None = None
    noise: float = 0.0
    shuffle_labels: bool = False
    checkpoint_every: int = 5
    optimizer_state: str = "last"
    seed: int = 0
    device: str = "auto"
    packed_step: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.objective not in OBJECTIVES:
            problems.append(
                f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}"
            )
        for name in ("steps", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "probe_lr"):
            if not float(getattr(self, name)) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "w_behaviour", "w_explain", "w_reg", "w_verbal"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a finite number >= 0, got {v}")
        if not 0.0 <= float(self.noise) <= 1.0:
            problems.append(f"noise must lie in [0, 1], got {self.noise}")
        try:
            from introspect.models import resolve_device

            resolve_device(self.device)
        except ValueError as exc:
            problems.append(str(exc))
        if self.optimizer_state not in ("last", "all"):
            problems.append(
                f"optimizer_state must be 'last' or 'all', got {self.optimizer_state!r}"
            )
        if self.verbal and self.w_verbal > 0 and not self.concurrent:
            problems.append(
                "the verbal explainer is the model itself: it needs concurrent training "
                "(the model is frozen; with w_verbal 0 its untrained answers are scored)"
            )
        if self.verbal_format not in ("binned", "precursor"):
            problems.append(
                f"verbal_format must be 'binned' or 'precursor', got {self.verbal_format!r}"
            )
        if self.verbal_answers is not None and self.verbal_format != "precursor":
            problems.append("verbal_answers are the precursor format's; set verbal_format")
        if self.verbal_threshold is not None and not (
            math.isfinite(float(self.verbal_threshold)) and float(self.verbal_threshold) >= 0
        ):
            problems.append(f"verbal_threshold must be >= 0, got {self.verbal_threshold}")
        if self.explainer_grad_to_model and not self.concurrent:
            problems.append(
                "explainer_grad_to_model needs concurrent training (the model is frozen)"
            )
        if self.concurrent and not (
            (self.objective != "none" and self.w_behaviour > 0)
            or self.w_reg > 0
            or (self.explainer_grad_to_model and self.w_explain > 0)
            or (self.verbal and self.w_verbal > 0)
        ):
            problems.append(
                "concurrent training with nothing that trains the model: give an objective with "
                "w_behaviour > 0, or w_reg > 0, or explainer_grad_to_model, or verbal"
            )
        if problems:
            raise TrainError("; ".join(problems))

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run it continues."""
        d = dataclasses.asdict(self)
        for k in _MUTABLE:
            d.pop(k)
        return d
