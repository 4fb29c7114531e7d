"""introspect: counterfactual self-explanation research on language models.

Build (x, x') pairs, measure how a model's behaviour changes when a feature is removed, extract the
hidden states that carry the effect, train explainers on fixed labels, and measure whether the
explanations follow the model's current behaviour. Every verb takes a model object you already
hold (with its tokenizer) as well as a name or path::

    import introspect
    pairs = introspect.generate("sycophancy", 200, seed=0)
    run = introspect.extract(model, tokenizer, pairs, "build/run", layers=[-1])
    run.delta, run.hidden(run.layers[0], "x")

The verbs: :func:`load_model`, :func:`read_pairs` / :func:`write_pairs`, :func:`generate` (the
built-in tasks, also :data:`TASKS`), :func:`extract`, :func:`open_run`, :func:`train` (with
:class:`TrainConfig`), :func:`evaluate`, :func:`run_coupling` (with :class:`ExperimentConfig`),
and the ops layer :mod:`introspect.ops`. Errors a user can cause derive from
:class:`IntrospectError`.

Importing this package is cheap and safe: names load on first use, it never initialises CUDA, and
a missing or mismatched native extension only disables the backends that need it (with a logged
warning).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute); ``None`` means the module itself.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    "ops": ("introspect.ops", None),
    "available_backends": ("introspect.ops", "available_backends"),
    "IntrospectError": ("introspect.errors", "IntrospectError"),
    "load_model": ("introspect.models", "load_model"),
    "LoadedModel": ("introspect.models", "LoadedModel"),
    "Pair": ("introspect.data", "Pair"),
    "read_pairs": ("introspect.data", "read_pairs"),
    "write_pairs": ("introspect.data", "write_pairs"),
    "coerce_pairs": ("introspect.data", "coerce_pairs"),
    "generate": ("introspect.data.tasks", "generate"),
    "TASKS": ("introspect.data.tasks", "TASKS"),
    "generate_sycophancy": ("introspect.data.tasks", "generate_sycophancy"),
    "generate_hint": ("introspect.data.tasks", "generate_hint"),
    "generate_refusal": ("introspect.data.tasks", "generate_refusal"),
    "extract": ("introspect.engine.driver", "extract"),
    "open_run": ("introspect.run", "open_run"),
    "Run": ("introspect.run", "Run"),
    "train": ("introspect.training", "train"),
    "TrainConfig": ("introspect.training", "TrainConfig"),
    "evaluate": ("introspect.evaluation.checkpoints", "evaluate_training"),
    "run_coupling": ("introspect.experiment.coupling", "run_coupling"),
    "ExperimentConfig": ("introspect.experiment.coupling", "ExperimentConfig"),
}

__all__ = [
    "TASKS",
    "ExperimentConfig",
    "IntrospectError",
    "LoadedModel",
    "Pair",
    "Run",
    "TrainConfig",
    "__version__",
    "available_backends",
    "coerce_pairs",
    "evaluate",
    "extract",
    "generate",
    "generate_hint",
    "generate_refusal",
    "generate_sycophancy",
    "load_model",
    "open_run",
    "ops",
    "read_pairs",
    "run_coupling",
    "train",
    "write_pairs",
]

if TYPE_CHECKING:
    from introspect import ops
    from introspect.data import Pair, coerce_pairs, read_pairs, write_pairs
    from introspect.data.tasks import (
        TASKS,
        generate,
        generate_hint,
        generate_refusal,
        generate_sycophancy,
    )
    from introspect.engine.driver import extract
    from introspect.errors import IntrospectError
    from introspect.evaluation.checkpoints import evaluate_training as evaluate
    from introspect.experiment.coupling import ExperimentConfig, run_coupling
    from introspect.models import LoadedModel, load_model
    from introspect.ops import available_backends
    from introspect.run import Run, open_run
    from introspect.training import TrainConfig, train


def __getattr__(name: str) -> Any:
    # Heavy modules (torch, transformers) load on first use, not on `import introspect`.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'introspect' has no attribute {name!r}")
    module, attr = _EXPORTS[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
