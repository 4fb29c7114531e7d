"""Explainer configs round-trip by name through dicts and JSON; bad configs fail clearly."""

from __future__ import annotations

import json

import pytest

from introspect.explain import (
    EXPLAINERS,
    ProbeConfig,
    ProbeExplainer,
    build,
    config_from_dict,
    config_to_dict,
)

CONFIGS = [
    ProbeConfig(),
    ProbeConfig(mode="difference", layers=(3, 7), position="span_mean", lambdas=(0.1, 1.0)),
    ProbeConfig(head="mlp", solver="gradient", hidden_units=8, epochs=3, lr=3e-3, seed=11),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_round_trip_through_dict_and_json(config):
    d = config_to_dict(config)
    assert d["explainer"] == "probe"
    assert config_from_dict(d) == config
    assert config_from_dict(json.loads(json.dumps(d))) == config
    assert isinstance(config_from_dict(json.loads(json.dumps(d))).layers, tuple)


def test_missing_fields_take_defaults_and_build_accepts_dicts():
    cfg = config_from_dict({"explainer": "probe", "mode": "difference"})
    assert cfg == ProbeConfig(mode="difference")
    explainer = build({"explainer": "probe", "layers": [5]})
    assert isinstance(explainer, ProbeExplainer)
    assert explainer.config.layers == (5,)
    assert isinstance(build(ProbeConfig()), ProbeExplainer)


def test_registry_holds_the_probe():
    assert EXPLAINERS["probe"] is ProbeExplainer
    assert ProbeExplainer.config_class is ProbeConfig
    assert ProbeExplainer.output == "scalar"


@pytest.mark.parametrize(
    "data, match",
    [
        ({"mode": "direct"}, "'explainer' field"),
        ({"explainer": "nope"}, "unknown explainer 'nope'.*probe"),
        ({"explainer": "probe", "layer": [3]}, r"unknown config field\(s\) \['layer'\]"),
        ({"explainer": "probe", "mode": "pairwise"}, "mode must be one of"),
        ({"explainer": "probe", "head": "mlp"}, "solver='gradient'"),
        ({"explainer": "probe", "lambdas": [0.0, 1.0]}, "lambdas must be positive"),
        ({"explainer": "probe", "cv_folds": 1}, "cv_folds"),
    ],
)
def test_bad_configs_are_rejected(data, match):
    with pytest.raises(ValueError, match=match):
        config_from_dict(data)


def test_config_to_dict_refuses_unregistered_configs():
    from dataclasses import dataclass

    from introspect.explain import ExplainerConfig

    @dataclass(frozen=True)
    class Other(ExplainerConfig):
        x: int = 1

    with pytest.raises(TypeError, match="not the config of a registered explainer"):
        config_to_dict(Other())
