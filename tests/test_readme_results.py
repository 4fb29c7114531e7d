"""Every number in the README's Results table is that of a committed ``metrics.jsonl`` row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RUN = ROOT / "docs" / "results" / "coupling-full"
BEGIN, END = "<!-- results-table: docs/results/coupling-full -->", "<!-- /results-table -->"

if not (README.is_file() and (RUN / "state.json").is_file()):  # pragma: no cover
    pytest.skip("README or the committed run is not beside tests/", allow_module_level=True)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _table_rows() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "the Results table's markers are missing"
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| task")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]


def _ci(r: dict) -> str:
    return f"{r['value']:+.3f} [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def test_results_table_matches_the_committed_metrics():
    rows = _table_rows()
    assert len(rows) >= 10
    state = json.loads((RUN / "state.json").read_text())
    assert state.get("complete"), "the committed run did not finish"
    seen = set()
    for task, cond, expl, metric, self_, orig, gap, verdict, r_dl in rows:
        # Probes are reported by Pearson r, the verbal explainer by Cohen's kappa of the bins.
        assert metric == ("κ" if expl == "verbal" else "r"), (task, cond, expl)
        key = "kappa" if expl == "verbal" else "pearson"
        stage = f"{task}/eval-{cond}"
        assert stage in state["completed"], stage
        edir = RUN / task / f"eval-{cond}"
        metrics = [
            r for r in _jsonl(edir / "metrics.jsonl")
            if r["explainer"] == expl and r["metric"].endswith(f".{key}")
        ]  # fmt: skip
        last = max(r["checkpoint"] for r in metrics)
        by = {r["metric"].split(".")[0]: r for r in metrics if r["checkpoint"] == last}
        assert (self_, orig, gap) == (_ci(by["self"]), _ci(by["orig"]), _ci(by["gap"])), stage
        lo, hi = by["gap"]["lo"], by["gap"]["hi"]
        want = "Self > Orig" if lo > 0 else "Self < Orig" if hi < 0 else "no difference"
        assert verdict == want, (stage, expl)
        behaviour = _jsonl(edir / "behaviour.jsonl")
        assert r_dl == f"{behaviour[-1]['delta_vs_labels']:+.3f}", stage
        seen.add((task, cond))
    # Every evaluated condition of the run is in the table.
    evaluated = {
        tuple(name.split("/eval-")) for name in state["completed"]
        if "/eval-" in name and not state["stages"][name].get("skipped")
    }  # fmt: skip
    assert seen == evaluated


def test_results_prose_cites_the_run():
    text = README.read_text(encoding="utf-8")
    section = text.split("### Results", 1)[1].split("\n## ", 1)[0]
    state = json.loads((RUN / "state.json").read_text())
    cfg = state["config"]
    assert cfg["preset"] == "full" and f"--preset {cfg['preset']}" in section
    assert re.search(r"20\d\d-\d\d-\d\d", section), "the Results section must say when it ran"


def test_committed_metrics_are_those_of_the_committed_predictions():
    # metrics.jsonl of every committed evaluation is what this version computes from its
    # predictions.jsonl (what `introspect experiment rescore` writes), row for row.
    from introspect.evaluation import recompute_metrics

    state = json.loads((RUN / "state.json").read_text())
    cfg = state["config"]
    dirs = sorted(RUN.glob("*/eval-*"))
    assert len(dirs) == sum(
        1 for n in state["completed"] if "/eval-" in n and not state["stages"][n].get("skipped")
    )
    for edir in dirs:
        want = _jsonl(edir / "metrics.jsonl")
        got = recompute_metrics(edir / "predictions.jsonl", n_boot=cfg["n_boot"], seed=cfg["seed"])
        assert got == want, edir.name


def test_verbal_settings_are_committed_with_the_run():
    # Each training where the model learned to explain itself keeps its threshold and answers.
    state = json.loads((RUN / "state.json").read_text())
    for name in state["completed"]:
        if "/train-" not in name or name.endswith("train-frozen"):
            continue
        train_json = json.loads((RUN / name / "train.json").read_text())
        assert train_json["verbal"] == "verbal.json", name
        verbal = json.loads((RUN / name / "verbal.json").read_text())
        assert verbal["threshold"] > 0 and len(verbal["answers"]) == train_json["n_pairs"]
