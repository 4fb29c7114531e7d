"""Every number the README and docs/coupling.md publish about the committed runs is that of a
committed result file, and the committed metrics are what this version computes from the
committed predictions."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
COUPLING = DOCS / "coupling.md"
RUN = ROOT / "docs" / "results" / "coupling-full"
PROBE_CONTROL = ROOT / "benchmarks" / "results" / "probe_control"
BEGIN, END = "<!-- results-table: docs/results/coupling-full -->", "<!-- /results-table -->"

HERE = README.is_file() and COUPLING.is_file() and (RUN / "state.json").is_file()
if not HERE:  # pragma: no cover
    pytest.skip("the docs or the committed run are not beside tests/", allow_module_level=True)

from introspect.evaluation import read_jsonl, recompute_metrics  # noqa: E402


def _table_rows() -> list[list[str]]:
    text = COUPLING.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "the Results table's markers are missing"
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [ln for ln in body.splitlines() if ln.startswith("| ") and not ln.startswith("| task")]
    return [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]


def _ci(r: dict) -> str:
    return f"{r['value']:+.3f} [{r['lo']:+.2f}, {r['hi']:+.2f}]"


def _last(edir: Path, explainer: str, key: str) -> dict[str, dict]:
    """The self/orig/gap rows of ``explainer``'s ``key`` metric at the last checkpoint."""
    metrics = [
        r for r in read_jsonl(edir / "metrics.jsonl")
        if r["explainer"] == explainer and r["metric"].endswith(f".{key}")
    ]  # fmt: skip
    last = max(r["checkpoint"] for r in metrics)
    return {r["metric"].split(".")[0]: r for r in metrics if r["checkpoint"] == last}


def _evaluated(state: dict) -> list[str]:
    return [
        n for n in state["completed"] if "/eval-" in n and not state["stages"][n].get("skipped")
    ]  # fmt: skip


def test_results_table_matches_the_committed_metrics():
    rows = _table_rows()
    assert len(rows) >= 10
    state = json.loads((RUN / "state.json").read_text())
    assert state.get("complete"), "the committed run did not finish"
    seen = set()
    for task, cond, expl, metric, self_, orig, gap, verdict, r_dl in rows:
        # Probes are reported by Pearson r, the verbal explainer by Cohen's kappa of the bins.
        assert metric == ("κ" if expl == "verbal" else "r"), (task, cond, expl)
        stage = f"{task}/eval-{cond}"
        assert stage in state["completed"], stage
        edir = RUN / task / f"eval-{cond}"
        by = _last(edir, expl, "kappa" if expl == "verbal" else "pearson")
        assert (self_, orig, gap) == (_ci(by["self"]), _ci(by["orig"]), _ci(by["gap"])), stage
        lo, hi = by["gap"]["lo"], by["gap"]["hi"]
        want = "Self > Orig" if lo > 0 else "Self < Orig" if hi < 0 else "no difference"
        assert verdict == want, (stage, expl)
        behaviour = read_jsonl(edir / "behaviour.jsonl")
        assert r_dl == f"{behaviour[-1]['delta_vs_labels']:+.3f}", stage
        seen.add((task, cond))
    # Every evaluated condition of the run is in the table.
    assert seen == {tuple(name.split("/eval-")) for name in _evaluated(state)}


def test_results_prose_cites_the_run():
    text = COUPLING.read_text(encoding="utf-8")
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    state = json.loads((RUN / "state.json").read_text())
    cfg = state["config"]
    assert cfg["preset"] == "full" and f"--preset {cfg['preset']}" in section
    assert re.search(r"20\d\d-\d\d-\d\d", section), "the Results section must say when it ran"


def test_readme_headline_gaps_are_the_committed_ones():
    # The README's experiment sentence quotes the direct probe's gap under concurrent training.
    text = " ".join(README.read_text(encoding="utf-8").split())  # lines joined
    for task in ("sycophancy", "refusal"):
        gap = _last(RUN / task / "eval-concurrent", "probe", "pearson")["gap"]
        quoted = f"{gap['value']:+.3f} [{gap['lo']:+.2f}, {gap['hi']:+.2f}]".replace("-", "−")
        assert quoted in text, (task, quoted)
    assert "docs/results/coupling-full/figures/summary.png" in text
    assert (RUN / "figures" / "summary.png").is_file()
    # ... beside ρ = r(current Δ, labels) at the same (last) checkpoint.
    for task in ("sycophancy", "refusal"):
        rows = read_jsonl(RUN / task / "eval-concurrent" / "behaviour.jsonl")
        rho = rows[-1]["delta_vs_labels"]
        assert f"{rho:.3f} ({task})" in text, (task, rho)


SETTINGS_QUICK = ROOT / "docs" / "results" / "settings-quick"


@pytest.mark.parametrize("run", [RUN, SETTINGS_QUICK / "earlier-checkpoint"], ids=lambda p: p.name)
def test_committed_metrics_are_those_of_the_committed_predictions(run):
    # metrics.jsonl of every committed evaluation is what this version computes from its
    # compressed predictions (what `introspect experiment rescore` writes), row for row.
    state = json.loads((run / "state.json").read_text())
    cfg = state["config"]
    dirs = sorted(run.glob("*/eval-*"))
    assert len(dirs) == len(_evaluated(state))
    for edir in dirs:
        assert not (edir / "predictions.jsonl").exists(), "commit the predictions compressed"
        want = read_jsonl(edir / "metrics.jsonl")
        got = recompute_metrics(
            edir / "predictions.jsonl.gz", n_boot=cfg["n_boot"], seed=cfg["seed"]
        )
        # Equal up to float rounding: the bootstrap's sums may round differently across numpy
        # builds (1e-13 seen), far below the three decimals any table shows.
        assert len(got) == len(want), edir.name
        for g, w in zip(got, want, strict=True):
            assert g.keys() == w.keys(), edir.name
            for key, value in w.items():
                if isinstance(value, float):
                    assert g[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (edir.name, g)
                else:
                    assert g[key] == value, (edir.name, g)


def test_probe_control_metrics_are_those_of_its_predictions():
    # The control runs of docs/training.md: their tables are generated from these metrics.
    dirs = sorted(p.parent for p in PROBE_CONTROL.glob("*/metrics.jsonl"))
    assert [d.name for d in dirs] == ["concurrent", "real", "shuffled"]
    for edir in dirs:
        cfg = json.loads((edir / "eval.json").read_text())
        got = recompute_metrics(
            edir / "predictions.jsonl.gz", n_boot=cfg["n_boot"], seed=cfg["seed"]
        )
        assert got == read_jsonl(edir / "metrics.jsonl"), edir.name


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


def test_read_jsonl_reads_gzip_transparently(tmp_path):
    rows = [{"a": 1}, {"b": [2, 3]}]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    with gzip.open(tmp_path / "p.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(text + "\n")
    assert read_jsonl(tmp_path / "p.jsonl.gz") == rows
    # The uncompressed name finds the compressed file when only that exists ...
    assert read_jsonl(tmp_path / "p.jsonl") == rows
    # ... and the uncompressed file when it exists.
    (tmp_path / "p.jsonl").write_text(json.dumps({"c": 4}) + "\n", encoding="utf-8")
    assert read_jsonl(tmp_path / "p.jsonl") == [{"c": 4}]
    with gzip.open(tmp_path / "bad.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"a": 1}\n{broken\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl\.gz:2: not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl.gz")
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_links_of_the_readme_and_docs_resolve():
    # Every relative link and image of the README, of docs/*.md and of the committed run's
    # report names a file that is here.
    pages = [README, *sorted(DOCS.glob("*.md")), RUN / "report.md"]
    assert len(pages) >= 10
    for page in pages:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which is missing"
