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
    assert "## Which of the paper's claims held here" in report
    assert "## Wall time per stage" in report
    # The table's numbers are those of the metrics.jsonl rows of the last checkpoint.
    rows = read_jsonl(out / "sycophancy" / "eval-concurrent" / "metrics.jsonl")
    last = [r for r in rows if r["explainer"] == "probe" and r["checkpoint"] == 2]
    gap = next(r for r in last if r["metric"] == "gap.pearson")
    want = f"{gap['value']:+.3f} [{gap['lo']:+.2f}, {gap['hi']:+.2f}]"
    line = next(
        ln for ln in report.splitlines() if ln.startswith("| sycophancy | concurrent | probe |")
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
    assert "| sycophancy | frozen | verbal |" not in report
    assert "Self > Orig under concurrent post-training, verbal explainer (sycophancy)" in report
    assert {r["explainer"] for r in frozen_rows(out)} == {"probe", "probe-diff", "ridge-m0"}
    # Frozen control: the current Δ is the label, so the gap is exactly 0.
    frozen = read_jsonl(out / "sycophancy" / "eval-frozen" / "metrics.jsonl")
    assert all(abs(r["value"]) < 1e-9 for r in frozen if r["metric"] == "gap.pearson")
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
    for cond in ("concurrent", "frozen", "shuffled", "noise-0.2", "noise-0.5", "label-other"):
        assert f"sycophancy/eval-{cond}" in f and f"refusal/eval-{cond}" in f
        # The demo keeps one noise level (the heavier) to stay within its time budget.
        assert (f"sycophancy/eval-{cond}" in q) == (cond != "noise-0.2")
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

    def results(path):  # the table of Self, Orig and gap, and the verdicts
        lines = path.read_text().splitlines()
        return [ln for ln in lines if "metrics.jsonl` |" in ln or ln.startswith("- Self >")]

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
    from introspect.experiment.report import _claim

    def row(v, lo, hi):
        return {"value": v, "lo": lo, "hi": hi}

    def entry(self_lo):
        rows = {"self": row(0.1, self_lo, 0.2), "orig": row(-0.2, -0.3, -0.1),
                "gap": row(0.3, 0.1, 0.5)}  # fmt: skip
        return {"task": "t", "condition": "c", "rows": {"verbal": rows}}

    weak = _claim("claim", entry(-0.01), "gap", explainer="verbal")
    assert "**supported**" in weak and "not above chance" in weak
    strong = _claim("claim", entry(0.02), "gap", explainer="verbal")
    assert "**supported**" in strong and "chance" not in strong
