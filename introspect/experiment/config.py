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
# a 135M model, set-up included: the main run and its frozen and shuffled-label controls; the
# no-explanation and label-noise controls are the full preset's); ``full`` took 84 minutes there
# for two tasks and a label model (budget: 90).
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "n_train": 64,
        "n_held": 64,
        "steps": 8,
        "batch_size": 8,
        "checkpoint_every": 4,
        "lr": 1e-4,
        "n_boot": 500,
        "noise_levels": (),
        "no_explanation_control": False,
        "all_conditions_for_every_task": False,
        "rho_targets": (0.9, 0.5),
        "drift_steps": 24,
        "drift_every": 1,
        "drift_lr": 3e-5,
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
        "rho_targets": (0.9, 0.7, 0.5, 0.3),
        "drift_steps": 96,
        "drift_every": 2,
        "drift_lr": 1e-5,
    },
}

SETTINGS = ("concurrent", "explain-only", "earlier-checkpoint")
"""``concurrent``: explanation training while the model trains on the task's behaviour objective;
``explain-only``: the model trains only to state its labels (with the behavioural regulariser);
``earlier-checkpoint``: M0 is first post-trained on the objective alone into checkpoints M1
whose Δ correlates with M0's at each ρ target, and each M1 is explanation-trained on M0's
labels."""
VERBAL_FORMATS = ("binned", "precursor")


class ExperimentError(UsageError):
    """Experiment settings that do not fit together, or an output directory in the way."""


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of a coupling experiment (see :mod:`introspect.experiment.coupling`);
    :meth:`from_preset` fills the sizes from a preset. ``labels``: where the fixed labels come
    from, ``"self"`` (the studied model M0), ``"model:NAME"`` (another model) or ``"earlier"``
    (M0's labels explained by a later checkpoint M1: the ``earlier-checkpoint`` setting).
    ``objective``: the behaviour objective (None: the task's). ``epochs``: when given, the
    number of steps is ``epochs`` passes over the training pairs. ``rho_targets``,
    ``drift_steps``, ``drift_every``, ``drift_lr``: where the ``earlier-checkpoint`` setting saves
    M1 (the first checkpoint with r(Δ_M1, Δ_M0) below each target, measured every
    ``drift_every`` of at most ``drift_steps`` steps at learning rate ``drift_lr``; a target
    whose first checkpoint below it is also below the next target is jumped over, not saved).
    ``rho_threshold``: below it, a verdict is "precondition not met".
    ``no_explanation_control``: run the control without explanation training (in the
    concurrent setting it trains the model on the objective alone, as long as the main run;
    a sweep that needs only the shuffled-label null may turn it off)."""

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
    setting: str = "concurrent"
    labels: str = "self"
    objective: str | None = None
    w_reg: float = 1.0
    epochs: int | None = None
    verbal_format: str = "binned"
    rho_targets: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)
    drift_steps: int = 48
    drift_every: int = 2
    drift_lr: float = 1e-5
    rho_threshold: float = 0.5
    no_explanation_control: bool = True

    def __post_init__(self) -> None:
        from introspect.data.tasks import TASKS

        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "noise_levels", tuple(float(p) for p in self.noise_levels))
        object.__setattr__(self, "rho_targets", tuple(float(p) for p in self.rho_targets))
        if self.setting == "earlier-checkpoint" and self.labels == "self":
            object.__setattr__(self, "labels", "earlier")
        problems = self._setting_problems()
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

    def _setting_problems(self) -> list[str]:
        """What is wrong with the setting, the label source and the knobs (empty: nothing)."""
        from introspect.training.objectives import OBJECTIVES

        problems = []
        if self.setting not in SETTINGS:
            problems.append(f"unknown setting {self.setting!r}; choose from {', '.join(SETTINGS)}")
        if self.verbal_format not in VERBAL_FORMATS:
            problems.append(
                f"unknown verbal format {self.verbal_format!r}; choose from "
                f"{', '.join(VERBAL_FORMATS)}"
            )
        if not (self.labels in ("self", "earlier") or self.labels.startswith("model:")):
            problems.append(f"labels must be self, model:NAME or earlier, got {self.labels!r}")
        elif self.labels.startswith("model:") and not self.labels[6:]:
            problems.append("labels model:NAME needs the model's name")
        if (self.labels == "earlier") != (self.setting == "earlier-checkpoint"):
            problems.append("labels 'earlier' go with the earlier-checkpoint setting, and only it")
        if self.objective is not None and self.objective not in OBJECTIVES:
            problems.append(
                f"unknown objective {self.objective!r}; choose from {', '.join(OBJECTIVES)}"
            )
        if self.setting == "explain-only" and not self.verbal:
            problems.append(
                "explain-only trains the model only as its verbal explainer: drop --no-verbal"
            )
        if not (self.w_reg >= 0 and self.lr > 0):
            problems.append(f"w_reg must be >= 0 and lr > 0, got {self.w_reg} and {self.lr}")
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if not self.rho_targets or not all(0 < t < 1 for t in self.rho_targets):
            problems.append(f"rho targets lie in (0, 1), got {list(self.rho_targets)}")
        if self.drift_steps < 1 or self.drift_every < 1:
            problems.append("drift_steps and drift_every must be >= 1")
        if not self.drift_lr > 0:
            problems.append(f"drift_lr must be > 0, got {self.drift_lr}")
        if not 0 <= self.rho_threshold <= 1:
            problems.append(f"rho_threshold lies in [0, 1], got {self.rho_threshold}")
        return problems

    def objective_of(self, task: str) -> str:
        """The behaviour objective trained on ``task`` (the task's unless one is given)."""
        return self.objective or OBJECTIVE_OF_TASK[task]

    @property
    def train_steps(self) -> int:
        """Optimizer steps of one explanation-training run: ``epochs`` passes over the training
        pairs when given, else ``steps``."""
        if self.epochs is None:
            return self.steps
        return self.epochs * -(-self.n_train // self.batch_size)

    @property
    def other_model(self) -> str | None:
        """The model other labels come from: ``labels="model:NAME"``'s, else the control's
        ``label_model``."""
        return self.labels[6:] if self.labels.startswith("model:") else self.label_model

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
        d["rho_targets"] = list(self.rho_targets)
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
    """One training run of a task and how it is evaluated. ``explain``: the model trains as its
    verbal explainer (the probes train in every condition); ``behaviour``: the model trains on
    the task's behaviour objective too; neither: the model does not train (``frozen``, or the
    no-explanation control, whose verbal answers are the untrained model's). ``start``: the
    model the run starts from, ``"m0"`` or ``"m1-<target>"`` (an earlier-checkpoint M1).
    ``labels``: ``"m0"`` or ``"other"`` (the other model's Δ)."""

    name: str
    concurrent: bool
    noise: float = 0.0
    shuffle: bool = False
    labels: str = "m0"
    description: str = ""
    # Checkpoints every ``checkpoint_every`` steps, each evaluated, and the start evaluated too;
    # otherwise one checkpoint at the end.
    trajectory: bool = False
    behaviour: bool = True
    explain: bool = True
    start: str = "m0"
    control: str | None = None  # the shuffled-label condition whose Self checks this one's

    @property
    def model_trains(self) -> bool:
        return self.concurrent


def _noise_name(p: float) -> str:
    return f"noise-{p:g}"


def m1_name(target: float) -> str:
    """The name of the earlier-checkpoint M1 saved at ρ target ``target``."""
    return f"m1-rho{target:g}"


def _controls(cfg: ExperimentConfig, main: Condition, prefix: str = "") -> list[Condition]:
    """Shuffled labels and label noise, each a copy of ``main``."""
    out = [
        dataclasses.replace(
            main,
            name=f"{prefix}shuffled",
            shuffle=True,
            trajectory=False,
            control=None,
            description="control: labels permuted over pairs",
        )
    ]
    for p in cfg.noise_levels:
        out.append(
            dataclasses.replace(
                main,
                name=f"{prefix}{_noise_name(p)}",
                noise=p,
                trajectory=False,
                control=f"{prefix}shuffled",
                description=f"{p:.0%} of the labels resampled",
            )
        )
    return out


def conditions_for(cfg: ExperimentConfig, task: str) -> list[Condition]:
    """The conditions run on ``task`` under ``cfg.setting``: the main run, and its controls on
    the first task (every task with ``all_conditions_for_every_task``)."""
    full = task == cfg.tasks[0] or cfg.all_conditions_for_every_task
    if cfg.setting == "concurrent":
        return _concurrent_conditions(cfg, full)
    if cfg.setting == "explain-only":
        return _explain_only_conditions(cfg, full)
    return _earlier_conditions(cfg, full)


def _concurrent_conditions(cfg: ExperimentConfig, full: bool) -> list[Condition]:
    main = Condition(
        "concurrent",
        True,
        labels="other" if cfg.labels.startswith("model:") else "m0",
        description="model trains on the objective and as its verbal explainer",
        trajectory=True,
        control="shuffled" if full else None,
    )
    conds = [
        main,
        Condition(
            "frozen",
            False,
            labels=main.labels,
            behaviour=False,
            explain=False,
            description="control: model frozen (Self = Orig); its verbal answers untrained",
        ),
    ]
    if not full:
        return conds
    if cfg.verbal and cfg.no_explanation_control:
        conds.append(
            dataclasses.replace(
                main,
                name="no-explanation",
                explain=False,
                control=None,
                description="control: the same run without explanation training (w_verbal 0)",
            )
        )
    conds.extend(_controls(cfg, main))
    if cfg.label_model and not cfg.labels.startswith("model:"):
        conds.append(
            dataclasses.replace(
                main,
                name=f"label-{cfg.label_model}",
                labels="other",
                description=f"labels: Δ of {cfg.label_model}",
            )
        )
    return conds


def _explain_only_conditions(cfg: ExperimentConfig, full: bool) -> list[Condition]:
    main = Condition(
        "explain",
        True,
        labels="other" if cfg.labels.startswith("model:") else "m0",
        behaviour=False,
        description="model trains only as its verbal explainer, with the regulariser",
        trajectory=True,
        control="shuffled" if full else None,
    )
    conds = [main]
    if cfg.no_explanation_control:
        # Without explanation training only the regulariser would train the model, and its
        # gradient at the start is zero: the model stays M0, so the run is a frozen one.
        conds.append(dataclasses.replace(
            main,
            name="no-explanation",
            concurrent=False,
            explain=False,
            trajectory=False,
            control=None,
            description="control: the same run without explanation training (the model stays "
            "M0; its verbal answers untrained)",
        ))  # fmt: skip
    return conds + (_controls(cfg, main) if full else [])


def _earlier_conditions(cfg: ExperimentConfig, full: bool) -> list[Condition]:
    conds = []
    for k, target in enumerate(cfg.rho_targets):
        m1 = m1_name(target)
        main = Condition(
            f"{m1}-explain",
            True,
            behaviour=False,
            start=m1,
            description=f"M1 (r(Δ_M1, Δ_M0) first below {target:g}) trains as its verbal "
            "explainer on M0's labels",
            trajectory=True,
            control=f"{m1}-shuffled" if full and k == 0 else None,
        )
        conds.append(main)
        if full and k == 0:
            conds.append(
                dataclasses.replace(
                    main,
                    name=f"{m1}-shuffled",
                    shuffle=True,
                    trajectory=False,
                    control=None,
                    description="control: labels permuted over pairs",
                )
            )
    return conds


def plan_stages(cfg: ExperimentConfig) -> list[tuple[str, str, dict[str, Any]]]:
    """``(name, kind, arguments)`` of every stage, in order."""
    stages: list[tuple[str, str, dict[str, Any]]] = []
    for task in cfg.tasks:
        stages.append((f"{task}/pairs", "pairs", {"task": task}))
        stages.append((f"{task}/labels-m0", "labels", {"task": task, "which": "m0"}))
        if cfg.other_model:
            stages.append((f"{task}/labels-other", "labels", {"task": task, "which": "other"}))
        if cfg.setting == "earlier-checkpoint":
            stages.append((f"{task}/drift", "drift", {"task": task}))
        for cond in conditions_for(cfg, task):
            stages.append((f"{task}/train-{cond.name}", "train", {"task": task, "cond": cond}))
            stages.append((f"{task}/eval-{cond.name}", "eval", {"task": task, "cond": cond}))
    stages.append(("report", "report", {}))
    return stages
