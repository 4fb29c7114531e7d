"""`introspect experiment stage0` on tiny random models, against the reference behaviour and
numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
from test_coupling import model_dir  # noqa: F401  (the tiny model fixture)
from tiny import tiny_llama, tiny_tokenizer

from introspect.cli import main
from introspect.experiment.stage0 import argmax_changes, surface_r2


def test_argmax_changes_and_surface_r2_against_numpy():
    xs = [np.array([0.0, -1.0]), np.array([-2.0, -0.5, -3.0]), np.array([-1.0, -0.2])]
    mods = [np.array([-1.0, 0.0]), np.array([-2.0, -0.6, -3.0]), np.array([-1.0, -0.3])]
    assert argmax_changes(xs, mods) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    noise = 0.3 * rng.normal(size=200)
    y = x @ np.array([1.0, -0.5, 0.0]) + noise
    # y is linear in x but for the noise: out-of-fold R² is close to 1 − var(noise) / var(y).
    assert surface_r2(x, y) == pytest.approx(1 - noise.var() / y.var(), abs=0.03)
    # Features unrelated to y explain nothing out of fold.
    assert surface_r2(x, rng.normal(size=200)) < 0.05


def test_stage0_reports_changes_r2_and_rho0(model_dir, tmp_path):  # noqa: F811
    from introspect.behaviour import measure
    from introspect.data.tasks import generate
    from introspect.models import load_model, with_chat_template

    other = tmp_path / "other"
    tiny_llama(seed=2).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    out = tmp_path / "s0"
    argv = ["experiment", "stage0", "--model", str(model_dir), "--tasks", "sycophancy,refusal",
            "--out", str(out), "--n", "24", "--n-boot", "50",
            "--label-models", f"{model_dir},{other}"]  # fmt: skip
    assert main(argv) == 0
    doc = json.loads((out / "stage0.json").read_text())
    rows = {r["task"]: r for r in doc["tasks"]}
    assert set(rows) == {"sycophancy", "refusal"}
    lm = load_model(str(model_dir))
    tok, _ = with_chat_template(lm.tokenizer, "auto")
    for task, row in rows.items():
        # Δ from packed forwards equals the plain forwards' within float32 rounding.
        delta = np.asarray(measure(lm.model, tok, generate(task, 24, seed=0)).delta)
        assert row["delta_mean"] == pytest.approx(delta.mean(), abs=1e-5)
        assert row["delta_sd"] == pytest.approx(delta.std(), abs=1e-5)
        assert 0.0 <= row["argmax_change"] <= 1.0
        assert {"prompt_chars", "removed_chars", "n_choices"} <= set(row["features"])
        # The model as its own label model: ρ0 is 1; another model's is its Pearson r.
        assert row["rho0"][str(model_dir)]["rho"] == pytest.approx(1.0)
        assert row["rho0"][str(model_dir)]["met"]
        assert -1.0 <= row["rho0"][str(other)]["rho"] < 0.999
    # Every row is recomputed, without a model, from the values written beside it.
    from introspect.experiment.stage0 import recompute_rows

    assert recompute_rows(out, lm.tokenizer) == doc["tasks"]
    md = (out / "stage0.md").read_text()
    assert "| sycophancy | 24 |" in md and f"ρ0 {other}" in md
