"""Explainers: models that predict the counterfactual effect Δ of removing a feature from x.

Every explainer kind is a frozen dataclass config plus an :class:`Explainer` subclass registered
by name in :data:`EXPLAINERS`, so that a config round-trips through a dict (and JSON) and a saved
explainer loads back by its name::

    from introspect.explain import ProbeConfig, build, config_to_dict, load

    probe = build(ProbeConfig(mode="direct", layers=(12,), solver="ridge"))
    probe.fit(run, labels, rows=train)          # labels: introspect.labels.Labels or [N] array
    pred = probe.predict(run, rows=test)
    probe.save("explainers/probe-l12")
    same = load("explainers/probe-l12")

Modules:

- ``base``: the registry, config (de)serialisation, save/load plumbing.
- ``features``: where inputs come from (in-memory arrays, or a run read shard by shard).
- ``ridge``: closed-form ridge from streamed sufficient statistics, λ by k-fold CV.
- ``probe``: scalar explainers on hidden states (``"probe"``).
- ``lora``: low-rank adapters for the linear layers of a model.
- ``verbal``: the model itself says how its answer would change (``"verbal"``; a package of the
  sentences, their parsing, the batched forward passes and the explainer).

Explainers that answer in words (the model explaining its own counterfactual behaviour) are
categorical: they subclass :class:`Explainer` with ``output = "categorical"``, live in their own
module beside ``probe`` and register the same way; their answers are scored by
:mod:`introspect.evaluation` with exact match and changed-F1.
"""

from __future__ import annotations

from introspect.explain.base import (
    EXPLAINERS,
    Explainer,
    ExplainerConfig,
    build,
    config_from_dict,
    config_to_dict,
    load,
    register,
)
from introspect.explain.features import ArraySource, FeatureSource, RunSource
from introspect.explain.probe import ProbeConfig, ProbeExplainer
from introspect.explain.ridge import DEFAULT_LAMBDAS, RidgeFit, RidgeStats, fit_ridge, fold_ids
from introspect.explain.verbal import VerbalConfig, VerbalExplainer

__all__ = [
    "DEFAULT_LAMBDAS",
    "EXPLAINERS",
    "ArraySource",
    "Explainer",
    "ExplainerConfig",
    "FeatureSource",
    "ProbeConfig",
    "ProbeExplainer",
    "RidgeFit",
    "RidgeStats",
    "RunSource",
    "VerbalConfig",
    "VerbalExplainer",
    "build",
    "config_from_dict",
    "config_to_dict",
    "fit_ridge",
    "fold_ids",
    "load",
    "register",
]
