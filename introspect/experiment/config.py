"""The coupling experiment's settings: presets, the conditions run on each task and the plan
of stages (pure data; importing this module imports no torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from introspect.errors import UsageError

OBJECTIVE_OF_TASK = {
    "sycophancy": "anti-sycophancy",
    "hint": "anti-sycophancy",
    "refusal": "refusal-shift",
}

# Sizes and schedules. ``quick`` is the demo (budget: 10 minutes for one task on a 2-core CPU with
# a 135M model, set-up included); ``full`` took 84 minutes there for two tasks and a label model
# (budget: 90).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "n_train": 64,
        "n_held": 64,
        "steps": 8,
        "batch_size": 8,
        "checkpoint_every": 4,
        "lr": 1e-4,
        "n_boot": 500,
        "noise_levels": (0.5,),
        "all_conditions_for_every_task": False,
    },
    "full": {
        "n_train": 384,
        "n_held": 192,
        "steps": 48,
        "batch_size": 8,
        "checkpoint_every": 16,
        "lr": 3e-5,
        "n_boot": 1000,
        "noise_levels": (0.2, 0.5),
        "all_conditions_for_every_task": True,
    },
}


class ExperimentError(UsageError):
    """Experiment settings that do not fit together, or an output directory in the way."""


@dataclass(frozen=True)
class ExperimentConfig:
    model: str
    out: str
    tasks: tuple[str, ...] = ("sycophancy",)
    preset: str = "quick"
    seed: int = 0
    label_model: str | None = None
    n_train: int = 64
    n_held: int = 64
    steps: int = 8
    batch_size: int = 8
    checkpoint_every: int = 4
    lr: float = 1e-4
    probe_lr: float = 1e-3
    n_boot: int = 500
    noise_levels: tuple[float, ...] = (0.2, 0.5)
    layer: int | None = None
    all_conditions_for_every_task: bool = False
    pair_files: dict[str, tuple[str, str]] = field(default_factory=dict)
    batch_tokens: int = 2048
    verbal: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        from introspect.data.tasks import TASKS

        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "noise_levels", tuple(float(p) for p in self.noise_levels))
        problems = []
        if not self.tasks:
            problems.append("no task given")
        for t in self.tasks:
            if t not in TASKS:
                problems.append(f"unknown task {t!r}; choose from {', '.join(sorted(TASKS))}")
            elif t not in OBJECTIVE_OF_TASK:
                problems.append(f"task {t!r} has no behaviour-shifting objective")
        if len(set(self.tasks)) != len(self.tasks):
            problems.append(f"a task is named twice: {','.join(self.tasks)}")
        sizes = ("n_train", "n_held", "steps", "batch_size", "checkpoint_every", "batch_tokens")
        for name in sizes:
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_train < 2 or self.n_held < 3:
            problems.append("at least 2 training and 3 held-out pairs are needed")
        if self.n_boot < 0:
            problems.append(f"n_boot must be >= 0, got {self.n_boot}")
        for p in self.noise_levels:
            if not 0.0 < p <= 1.0:
                problems.append(f"noise levels lie in (0, 1]; got {p}")
        try:
            from introspect.models import resolve_device

            resolve_device(self.device)
        except ValueError as exc:
            problems.append(str(exc))
        for t in self.pair_files:
            if t not in self.tasks:
                problems.append(f"pair files given for {t!r}, which is not among the tasks")
        if problems:
            raise ExperimentError("; ".join(problems))

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> ExperimentConfig:
        if preset not in PRESETS:
            raise ExperimentError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values = {**PRESETS[preset], "preset": preset}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["tasks"] = list(self.tasks)
        d["noise_levels"] = list(self.noise_levels)
        d["pair_files"] = {k: list(v) for k, v in self.pair_files.items()}
        return d

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run it continues."""
        d = self.to_json()
        d.pop("out")
        d.pop("device")  # a run may continue on another device
        return d


@dataclass(frozen=True)
class Condition:
    name: str
    concurrent: bool
    noise: float = 0.0
    shuffle: bool = False
    labels: str = "m0"  # "m0" or "other" (the label model's Δ)
    description: str = ""
    # Checkpoints every ``checkpoint_every`` steps, each evaluated, and the start evaluated too;
    # otherwise one checkpoint at the end (the model's trajectory is that of ``concurrent``).
    trajectory: bool = False


def _noise_name(p: float) -> str:
    return f"noise-{p:g}"


def conditions_for(cfg: ExperimentConfig, task: str) -> list[Condition]:
    """The conditions run on ``task``: all of them on the first task (every task with
    ``all_conditions_for_every_task``), else the concurrent run and the frozen control."""
    conds = [
        Condition(
            "concurrent",
            True,
            description="model trains on the objective; clean labels",
            trajectory=True,
        ),
        Condition(
            "frozen",
            False,
            description="control: model frozen (Self = Orig); no verbal explainer, which is the "
            "model itself",
        ),
    ]
    if task != cfg.tasks[0] and not cfg.all_conditions_for_every_task:
        return conds
    conds.append(
        Condition("shuffled", True, shuffle=True, description="control: labels permuted over pairs")
    )
    for p in cfg.noise_levels:
        conds.append(
            Condition(_noise_name(p), True, noise=p, description=f"{p:.0%} of the labels resampled")
        )
    if cfg.label_model:
        conds.append(
            Condition(
                f"label-{cfg.label_model}",
                True,
                labels="other",
                description=f"labels: Δ of {cfg.label_model}",
                trajectory=True,
            )
        )
    return conds


def plan_stages(cfg: ExperimentConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, kind, arguments)`` of every stage, in order."""
    stages: list[tuple[str, str, dict[str, Any]]] = []
    for task in cfg.tasks:
        stages.append((f"{task}/pairs", "pairs", {"task": task}))
        stages.append((f"{task}/labels-m0", "labels", {"task": task, "which": "m0"}))
        if cfg.label_model:
            stages.append((f"{task}/labels-other", "labels", {"task": task, "which": "other"}))
        for cond in conditions_for(cfg, task):
            stages.append((f"{task}/train-{cond.name}", "train", {"task": task, "cond": cond}))
            stages.append((f"{task}/eval-{cond.name}", "eval", {"task": task, "cond": cond}))
    stages.append(("report", "report", {}))
    return stages
