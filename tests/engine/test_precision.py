"""Reduced-precision modes: the fidelity figures and how a model is put into a mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from introspect.engine import precision


def test_compare_reports_pearson_and_errors():
    ref = np.array([0.1, -0.4, 0.3, 0.0])
    got = ref + np.array([0.01, -0.02, 0.0, 0.005])
    fid = precision.compare(ref, got)
    assert fid["pairs"] == 4 and fid["reference"] == "float32"
    assert fid["max_abs_error"] == pytest.approx(0.02)
    assert fid["mean_abs_error"] == pytest.approx(0.035 / 4)
    assert fid["pearson"] == pytest.approx(np.corrcoef(ref, got)[0, 1])
    assert fid["delta_sd"] == pytest.approx(ref.std())


def test_compare_flags_non_finite_values():
    fid = precision.compare([0.1, 0.2, 0.3], [0.1, math.inf, 0.3])
    assert math.isnan(fid["pearson"]) and fid["max_abs_error"] == math.inf
    assert not precision.is_faithful(fid)
    with pytest.raises(ValueError, match="equally long"):
        precision.compare([1.0], [1.0, 2.0])


def test_modes():
    assert precision.autocast_dtype("float32") is None
    assert precision.autocast_dtype("autocast-fp16") is torch.float16
    assert precision.autocast_dtype("autocast-bf16") is torch.bfloat16
    lin = torch.nn.Linear(3, 3)
    assert precision.apply(lin, "bfloat16") is None and lin.weight.dtype is torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.apply(lin, "int8")


def test_measure_fidelity_on_a_tiny_model():
    from test_engine import _system_pairs
    from tiny import tiny_llama, tiny_tokenizer

    from introspect.engine import ExtractConfig

    model, tok = tiny_llama(), tiny_tokenizer()
    pairs = _system_pairs(6)
    cfg = ExtractConfig(layers=(1,))
    exact = precision.measure_fidelity(model, tok, pairs, cfg, "float32")
    assert exact["max_abs_error"] == 0 and exact["hidden_max_rel_error"] == 0
    low = precision.measure_fidelity(model, tok, pairs, cfg, "bfloat16")
    assert 0 < low["max_abs_error"] < 0.5 and 0 < low["hidden_max_rel_error"] < 0.1
    assert next(model.parameters()).dtype is torch.float32  # the model is left as it was
