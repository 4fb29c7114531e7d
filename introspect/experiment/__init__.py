"""End-to-end experiments built from the extract, train and eval layers.

    from introspect.experiment import ExperimentConfig, run_coupling

    run_coupling(ExperimentConfig.from_preset("quick", model="smollm2-135m",
                                              tasks=("sycophancy",), out="runs/coupling"))

``coupling`` runs the introspective-coupling protocol stage by stage (pairs, fixed labels,
training under each condition, evaluation per checkpoint, report) with a resumable
``state.json``; ``report`` writes ``report.md``; ``sweep`` runs a grid of them from a spec
(``spec``), ``map`` aggregates finished runs over ρ and ``stage0`` measures the tasks before any
training (docs/coupling-map.md); ``commands`` is the ``introspect experiment``
command line. Attributes are imported on first use, so that building the command line imports no
torch.
"""

from __future__ import annotations

from introspect._lazy import lazy_getattr

__all__ = [
    "PRESETS",
    "ExperimentConfig",
    "ExperimentError",
    "build_map",
    "load_spec",
    "publish_sweep",
    "rescore_coupling",
    "run_coupling",
    "run_stage0",
    "run_sweep",
]

_WHERE = {
    "build_map": "map",
    "load_spec": "spec",
    "publish_sweep": "publish",
    "run_stage0": "stage0",
    "run_sweep": "sweep",
    "PRESETS": "coupling",
    "ExperimentConfig": "coupling",
    "ExperimentError": "coupling",
    "run_coupling": "coupling",
    "rescore_coupling": "coupling",
}


__getattr__ = lazy_getattr(__name__, _WHERE)
