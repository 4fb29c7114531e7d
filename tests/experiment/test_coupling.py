"""`introspect experiment coupling` on a tiny random model: stages, report, resume, seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
from tiny import tiny_llama, tiny_tokenizer

from introspect.cli import main
from introspect.evaluation import read_jsonl
from introspect.experiment import ExperimentConfig, ExperimentError, run_coupling
from introspect.experiment.coupling import plan_stages

SMALL = dict(n_train=12, n_held=12, steps=2, batch_size=4, checkpoint_every=1, n_boot=50)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinymodel")
    tiny_llama().save_pretrained(root)
    tiny_tokenizer().save_pretrained(root)
    return root


def _cfg(model_dir, out, **kw):
    base = dict(model=str(model_dir), out=str(out), lr=3e-3, noise_levels=(0.5,), **SMALL)
    return ExperimentConfig(**{**base, **kw})


def _metrics(out):
    rows = {}
    for path in sorted(out.glob("*/eval-*/metrics.jsonl")):
        rows[path.parent.relative_to(out).as_posix()] = read_jsonl(path)
    return rows


def frozen_rows(out):
    return read_jsonl(out / "sycophancy" / "eval-frozen" / "metrics.jsonl")


def test_cli_runs_every_stage_and_writes_the_report(model_dir, tmp_path):
    out = tmp_path / "run"
    argv = [
        "experiment", "coupling", "--model", str(model_dir), "--tasks", "sycophancy,refusal",
        "--out", str(out), "--label-model", "no-such-model-dir", "--n-train", "12",
        "--n-held", "12", "--steps", "2", "--checkpoint-every", "1", "--n-boot", "50",
    ]  # fmt: skip
    assert main(argv) == 0
    state = json.loads((out / "state.json").read_text())
    cfg = ExperimentConfig.from_preset(
        "quick",
        model=str(model_dir),
        out=str(out),
        tasks=("sycophancy", "refusal"),
        label_model="no-such-model-dir",
        n_train=12,
        n_held=12,
        steps=2,
        checkpoint_every=1,
        n_boot=50,
    )
    names = [s[0] for s in plan_stages(cfg)]
    assert state["completed"] == names and state["complete"]
    assert "refusal/eval-concurrent" in names and "refusal/eval-shuffled" not in names
    # The unavailable label model is recorded as skipped, not a failure.
    assert state["stages"]["sycophancy/labels-other"]["skipped"]
    assert state["stages"]["sycophancy/train-label-no-such-model-dir"]["skipped"]
    report = (out / "report.md").read_text()
    assert (
        "| task | condition | explainer | metric | step | Self | Orig | gap (Self − Orig)" in report
    )
    assert "![" in report and (out / "figures" / "summary.png").is_file()
    for rel in [line.split("](")[1].rstrip(")") for line in report.splitlines() if "![" in line]:
        assert (out / rel).is_file(), rel
    assert "## Verdicts over the trajectory" in report
    assert "## Per checkpoint: ρ_t, Self, Orig, gap and c" in report
    assert "## Wall time per stage" in report
    # The table's numbers are those of the metrics.jsonl rows of the last checkpoint.
    rows = read_jsonl(out / "sycophancy" / "eval-concurrent" / "metrics.jsonl")
    last = [r for r in rows if r["explainer"] == "probe" and r["checkpoint"] == 2]
    gap = next(r for r in last if r["metric"] == "gap.pearson")
    want = f"{gap['value']:+.3f} [{gap['lo']:+.2f}, {gap['hi']:+.2f}]"
    line = next(
        ln
        for ln in report.splitlines()
        if ln.startswith("| sycophancy | concurrent | probe |") and "metrics.jsonl" in ln
    )
    assert want in line
    # The verbal explainer (the model itself) is scored by Cohen's kappa of the bins, where the
    # model trains; the frozen control has none.
    vgap = next(
        r for r in rows
        if r["explainer"] == "verbal" and r["checkpoint"] == 2 and r["metric"] == "gap.kappa"
    )  # fmt: skip
    line = next(
        ln for ln in report.splitlines()
        if ln.startswith("| sycophancy | concurrent | verbal | kappa | 2 |")
    )  # fmt: skip
    assert f"{vgap['value']:+.3f} [{vgap['lo']:+.2f}, {vgap['hi']:+.2f}]" in line
    # The frozen control's verbal explainer is the untrained model's answers.
    assert {r["explainer"] for r in frozen_rows(out)} == {
        "probe", "probe-diff", "ridge-m0", "verbal", "verbal@m0-threshold", "verbal-score"
    }  # fmt: skip
    # Every verdict names the precondition it met or missed.
    verdicts = [ln for ln in report.splitlines() if "| concurrent | probe |" in ln and "**" in ln]
    assert verdicts and all("ρ = " in ln for ln in verdicts)
    # Frozen control: the current Δ is the label, so the gap is exactly 0.
    frozen = read_jsonl(out / "sycophancy" / "eval-frozen" / "metrics.jsonl")
    gaps = {r["explainer"]: r["value"] for r in frozen if r["metric"] == "gap.pearson"}
    assert all(abs(gaps[e]) < 1e-9 for e in ("probe", "probe-diff", "ridge-m0"))
    # (the untrained verbal score of the tiny model, whose vocabulary lacks the sentence words,
    # is constant: its r is undefined)
    # Concurrent training moved the model: the current Δ differs from the labels.
    beh = read_jsonl(out / "sycophancy" / "eval-concurrent" / "behaviour.jsonl")
    assert beh[-1]["delta_vs_labels"] < 0.999999


def test_label_model_without_chat_template_reads_plain_transcripts(model_dir, tmp_path):
    # A base model from another "family" (other weights, no chat template) gives the labels.
    base = tmp_path / "base"
    tiny_llama(seed=1).save_pretrained(base)
    tok = tiny_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(base)
    out = tmp_path / "run"
    cfg = _cfg(model_dir, out, noise_levels=(), label_model=str(base))
    run_coupling(cfg, say=lambda _m: None)
    state = json.loads((out / "state.json").read_text())
    labels = state["stages"]["sycophancy/labels-other"]
    assert "skipped" not in labels and labels["chat_template"] == "plain"
    cond = f"train-label-{base}"
    assert "skipped" not in state["stages"][f"sycophancy/{cond}"]
    from introspect import open_run

    m0 = open_run(out / "sycophancy" / "m0")
    other = open_run(out / "sycophancy" / "labels-other")
    assert m0.config["chat_template"] == "model" and other.config["chat_template"] == "plain"
    assert m0.ids == other.ids
    assert not np.allclose(m0.delta, other.delta)  # another model's Δ, not M0's


def test_existing_directory_needs_resume(model_dir, tmp_path):
    out = tmp_path / "run"
    run_coupling(_cfg(model_dir, out, noise_levels=()), say=lambda _m: None)
    with pytest.raises(ExperimentError, match="--resume"):
        run_coupling(_cfg(model_dir, out, noise_levels=()), say=lambda _m: None)
    with pytest.raises(ExperimentError, match="different settings"):
        run_coupling(_cfg(model_dir, out, seed=1, noise_levels=()), resume=True, say=print)


def test_resume_skips_completed_stages_and_ends_identical(model_dir, tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    run_coupling(_cfg(model_dir, ref), say=lambda _m: None)

    out = tmp_path / "run"
    import introspect.evaluation.checkpoints as checkpoints
    import introspect.training.loop as loop

    real_evaluate = checkpoints.evaluate_training
    calls = {"eval": 0, "train": 0}

    def failing_eval(*a, **k):
        calls["eval"] += 1
        if calls["eval"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*a, **k)

    monkeypatch.setattr(checkpoints, "evaluate_training", failing_eval)
    with pytest.raises(KeyboardInterrupt):
        run_coupling(_cfg(model_dir, out), say=lambda _m: None)
    state = json.loads((out / "state.json").read_text())
    assert state["completed"][-1] == "sycophancy/train-frozen"
    assert "sycophancy/eval-frozen" not in state["completed"]
    done_before = list(state["completed"])

    real_train = loop.train

    def counting_train(*a, **k):
        calls["train"] += 1
        return real_train(*a, **k)

    monkeypatch.setattr(checkpoints, "evaluate_training", real_evaluate)
    monkeypatch.setattr(loop, "train", counting_train)
    log: list[str] = []
    run_coupling(_cfg(model_dir, out), resume=True, say=log.append)
    for name in done_before:
        assert any(m.endswith(f"{name}: done earlier, skipped") for m in log), name
    remaining = [s for s in plan_stages(_cfg(model_dir, out)) if s[0] not in done_before]
    assert calls["train"] == sum(1 for s in remaining if s[1] == "train")
    state = json.loads((out / "state.json").read_text())
    assert state["complete"]
    assert _metrics(out) == _metrics(ref)


def test_same_seed_same_metrics_other_seed_differs(model_dir, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    quiet = dict(say=lambda _m: None)
    fast = dict(noise_levels=(), checkpoint_every=2)
    run_coupling(_cfg(model_dir, a, **fast), **quiet)
    run_coupling(_cfg(model_dir, b, **fast), **quiet)
    run_coupling(_cfg(model_dir, c, **fast, seed=1), **quiet)
    ma, mb, mc = _metrics(a), _metrics(b), _metrics(c)
    assert ma and ma == mb
    assert ma != mc


def test_bad_settings_are_rejected(model_dir, tmp_path):
    with pytest.raises(ExperimentError, match="unknown task"):
        _cfg(model_dir, tmp_path / "x", tasks=("nope",))
    with pytest.raises(ExperimentError, match="unknown preset"):
        ExperimentConfig.from_preset("huge", model="m", out="o")
    assert main(["experiment", "coupling", "--model", "m", "--out", str(tmp_path / "y"),
                 "--task", "nope"]) == 2  # fmt: skip


def test_presets_plan_their_conditions():
    quick = ExperimentConfig.from_preset(
        "quick", model="m", out="o", tasks=("sycophancy", "refusal"), label_model="other"
    )
    full = ExperimentConfig.from_preset(
        "full", model="m", out="o", tasks=("sycophancy", "refusal"), label_model="other"
    )
    assert full.n_train > quick.n_train and full.steps > quick.steps
    q = [s[0] for s in plan_stages(quick)]
    f = [s[0] for s in plan_stages(full)]
    conds = ("concurrent", "frozen", "shuffled", "no-explanation", "noise-0.2", "noise-0.5",
             "label-other")  # fmt: skip
    for cond in conds:
        assert f"sycophancy/eval-{cond}" in f and f"refusal/eval-{cond}" in f
        # The demo keeps the main run and its frozen and shuffled-label controls (and the other
        # model's labels when one is named), to stay within its time budget.
        wanted = cond in ("concurrent", "frozen", "shuffled", "label-other")
        assert (f"sycophancy/eval-{cond}" in q) == wanted, cond
    assert "refusal/eval-shuffled" not in q and q[-1] == f[-1] == "report"


def test_bad_device_is_a_clear_error(model_dir, tmp_path, capsys):
    argv = ["experiment", "coupling", "--model", str(model_dir), "--out", str(tmp_path / "r"),
            "--device", "abacus"]  # fmt: skip
    assert main(argv) == 2
    assert "unknown device 'abacus'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_rescore_recomputes_the_metrics_and_report_from_the_predictions(model_dir, tmp_path):
    out = tmp_path / "run"
    run_coupling(_cfg(model_dir, out), say=lambda _m: None)
    want = _metrics(out)

    def results(path):  # the tables of Self, Orig and gap, and the verdicts (not the times)
        text = path.read_text().split("## Wall time per stage")[0]
        return [ln for ln in text.splitlines() if ln.startswith("| ")]

    table = results(out / "report.md")
    assert len(table) > 5
    for path in out.glob("*/eval-*/metrics.jsonl"):
        path.write_text("")
    (out / "report.md").unlink()
    assert main(["experiment", "rescore", str(out)]) == 0
    assert _metrics(out) == want
    assert results(out / "report.md") == table
    assert json.loads((out / "state.json").read_text())["rescored_utc"]
    # Not an experiment directory: a clear error.
    assert main(["experiment", "rescore", str(tmp_path)]) == 3


def test_a_gap_from_orig_below_chance_is_called_so():
    from introspect.evaluation.decide import verdict
    from introspect.evaluation.metrics import Estimate
    from introspect.experiment.verdicts import below_chance_caveat

    gap = Estimate("gap.pearson", 0.3, 0.1, 0.5, 50)
    said = verdict(gap, 0.9)
    assert said["verdict"] == "coupling"
    weak = below_chance_caveat(said, {"value": 0.1, "lo": -0.01, "hi": 0.2})
    assert weak["verdict"] == "inconclusive" and "not above chance" in weak["text"]
    strong = below_chance_caveat(said, {"value": 0.1, "lo": 0.02, "hi": 0.2})
    assert strong == said


# --------------------------------------------------------------------------------------------
# The settings


SETTING_KW = {
    "explain-only": dict(setting="explain-only"),
    "explain-only-precursor": dict(setting="explain-only", verbal_format="precursor"),
    "earlier-checkpoint": dict(
        setting="earlier-checkpoint",
        rho_targets=(0.99, 0.3),
        drift_steps=4,
        drift_every=1,
        drift_lr=3e-3,
    ),
}


@pytest.mark.parametrize("setting", sorted(SETTING_KW))
def test_each_setting_runs_resumes_mid_way_and_repeats_for_its_seed(
    model_dir, tmp_path, monkeypatch, setting
):
    import introspect.evaluation.checkpoints as checkpoints

    kw = dict(SETTING_KW[setting], noise_levels=())
    ref = tmp_path / "ref"
    state = run_coupling(_cfg(model_dir, ref, **kw), say=lambda _m: None)
    assert state["complete"] and state["config"]["setting"] == kw["setting"]
    evals = [s for s in plan_stages(_cfg(model_dir, ref, **kw)) if s[1] == "eval"]
    assert evals and any("skipped" not in state["stages"][s[0]] for s in evals)
    # Interrupted in its second evaluation, then resumed: the same numbers as in one go.
    out = tmp_path / "run"
    real = checkpoints.evaluate_training
    calls = {"n": 0}

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(checkpoints, "evaluate_training", failing)
    with pytest.raises(KeyboardInterrupt):
        run_coupling(_cfg(model_dir, out, **kw), say=lambda _m: None)
    monkeypatch.setattr(checkpoints, "evaluate_training", real)
    assert not json.loads((out / "state.json").read_text()).get("complete")
    run_coupling(_cfg(model_dir, out, **kw), resume=True, say=lambda _m: None)
    assert _metrics(out) == _metrics(ref) and _metrics(ref)
    report = (ref / "report.md").read_text()
    assert f"setting **{kw['setting']}**" in report and "## Verdicts over the trajectory" in report
    verdicts = json.loads((ref / "verdicts.json").read_text())
    assert verdicts and all(
        "precondition" in st["verdict"] for e in verdicts for st in e["explainers"].values()
    )


def test_explain_only_trains_the_model_only_as_its_verbal_explainer(model_dir, tmp_path):
    out = tmp_path / "run"
    run_coupling(_cfg(model_dir, out, setting="explain-only", noise_levels=()), say=print)
    doc = json.loads((out / "sycophancy" / "train-explain" / "train.json").read_text())
    assert doc["model_trains"] and doc["behaviour_objective"] == "none"
    assert doc["config"]["verbal"] and doc["config"]["w_verbal"] == 1.0
    assert doc["config"]["w_reg"] == 1.0
    assert all(r["behaviour"] == 0 and r["verbal"] > 0 for r in doc["log"])
    ctrl = json.loads((out / "sycophancy" / "train-no-explanation" / "train.json").read_text())
    assert not ctrl["model_trains"] and ctrl["config"]["w_verbal"] == 0.0


def test_rho0_is_measured_before_training_on_other_labels(model_dir, tmp_path):
    from introspect import open_run
    from introspect.data import read_pairs

    other = tmp_path / "other"
    tiny_llama(seed=3).save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    out = tmp_path / "run"
    cfg = _cfg(model_dir, out, setting="explain-only", labels=f"model:{other}", noise_levels=())
    state = run_coupling(cfg, say=lambda _m: None)
    pre = state["stages"]["sycophancy/labels-other"]["precondition"]
    held = [p.id for p in read_pairs(out / "sycophancy" / "held.jsonl")[0]]

    def delta(run):
        r = open_run(run)
        at = {i: k for k, i in enumerate(r.ids)}
        return np.array([r.delta[at[i]] for i in held])

    want = np.corrcoef(delta(out / "sycophancy" / "labels-other"), delta(out / "sycophancy" / "m0"))
    assert pre["rho"] == pytest.approx(want[0, 1], abs=1e-12)
    assert pre["met"] == (pre["rho"] >= 0.5)
    # The main run trains on the other model's labels, and its verdicts carry ρ0.
    doc = json.loads((out / "sycophancy" / "train-explain" / "train.json").read_text())
    assert doc["labels_source"]["path"].endswith("labels-other")
    verdicts = json.loads((out / "verdicts.json").read_text())
    main_run = next(e for e in verdicts if e["condition"] == "explain")
    assert main_run["explainers"]["probe"]["verdict"]["rho0"]["rho"] == pre["rho"]


def test_earlier_checkpoint_saves_m1_where_rho_first_falls_below_each_target(model_dir, tmp_path):
    from introspect import extract, open_run
    from introspect.data import read_pairs

    out = tmp_path / "run"
    cfg = _cfg(model_dir, out, noise_levels=(), **SETTING_KW["earlier-checkpoint"])
    state = run_coupling(cfg, say=lambda _m: None)
    drift = state["stages"]["sycophancy/drift"]
    history = drift["history"]
    reached = drift["reached"]["m1-rho0.99"]
    first = next(h for h in history if h["rho"] < 0.99)
    assert reached["step"] == first["step"] and reached["rho"] == first["rho"]
    # ρ0 of the saved M1 is numpy's Pearson of its Δ and M0's on the held-out pairs.
    held, _ = read_pairs(out / "sycophancy" / "held.jsonl")
    m1 = extract(str(out / "sycophancy" / "drift" / "m1-rho0.99" / "model"), None, held,
                 tmp_path / "m1run", chat_template="auto")  # fmt: skip
    m0 = open_run(out / "sycophancy" / "m0")
    at = {i: k for k, i in enumerate(m0.ids)}
    y0 = np.array([m0.delta[at[p.id]] for p in held])
    assert reached["rho"] == pytest.approx(np.corrcoef(m1.delta, y0)[0, 1], abs=1e-9)
    # M1 is explained on M0's labels, starting from M1.
    doc = json.loads((out / "sycophancy" / "train-m1-rho0.99-explain" / "train.json").read_text())
    assert doc["model"]["spec"].endswith("m1-rho0.99/model")
    assert doc["labels_source"]["path"].endswith("sycophancy/m0")
    if "m1-rho0.3" not in drift["reached"]:
        assert state["stages"]["sycophancy/train-m1-rho0.3-explain"]["skipped"]


def test_a_target_passed_with_the_next_is_jumped_over_not_saved(model_dir, tmp_path, monkeypatch):
    import introspect.evaluation.metrics as metrics

    script = iter([0.95, 0.2, 0.1])  # r after steps 1, 2, 3
    monkeypatch.setattr(metrics, "pearson_r", lambda *_a: next(script))
    out = tmp_path / "run"
    kw = dict(SETTING_KW["earlier-checkpoint"], rho_targets=(0.99, 0.9, 0.5), drift_steps=3)
    state = run_coupling(_cfg(model_dir, out, noise_levels=(), **kw), say=lambda _m: None)
    drift = state["stages"]["sycophancy/drift"]
    assert [h["rho"] for h in drift["history"]] == [0.95, 0.2]  # every target passed by step 2
    assert {k: v["step"] for k, v in drift["reached"].items()} == {"m1-rho0.99": 1, "m1-rho0.5": 2}
    assert drift["jumped"]["m1-rho0.9"] == {"target": 0.9, "step": 2, "rho": 0.2, "before": 0.95}
    assert not (out / "sycophancy" / "drift" / "m1-rho0.9").exists()
    assert "jumped over" in state["stages"]["sycophancy/train-m1-rho0.9-explain"]["skipped"]
    report = (out / "report.md").read_text()
    assert "| 0.9 | jumped over (from +0.950) | 2 | +0.200 |" in report
    assert "| 0.5 | m1-rho0.5 | 2 | +0.200 |" in report
