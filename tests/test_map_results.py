"""Every number published about the coupling map is recomputed here from the committed files:
Stage 0's rows from every pair's committed choice log-probabilities, each published sweep's
map from its runs' committed predictions, and the docs' tables from those."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "coupling-map"
DOC = ROOT / "docs" / "coupling-map.md"
if not (DOC.is_file() and RESULTS.is_dir()):  # pragma: no cover - an installed copy
    pytest.skip("the docs are not beside tests/", allow_module_level=True)

STAGE0 = RESULTS / "stage0"
# Each published map, by the sweep directory it lives in; a map may pool the runs of several
# sweeps (a stage's extra seeds are a sweep of their own).
MAPS = sorted(p.parent.parent for p in RESULTS.glob("*/map/map.json"))


def _sources(committed: dict) -> list[Path]:
    """The sweep directories whose runs a committed map pooled, from its runs' paths."""
    return sorted({(ROOT / r["path"]).parent.parent for r in committed["runs"]})


def _block(tag: str) -> list[str]:
    """The lines between ``<!-- TAG -->`` and ``<!-- /TAG-end -->`` in the doc page."""
    text = DOC.read_text(encoding="utf-8")
    begin, end = f"<!-- {tag} -->", f"<!-- /{tag.split(':')[0]} -->"
    assert begin in text, f"{DOC.name}: marker {begin} is missing"
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return [ln for ln in body.strip().splitlines() if ln.strip()]


@pytest.mark.skipif(not (STAGE0 / "stage0.json").is_file(), reason="no committed Stage 0")
def test_stage0_table_in_the_docs_is_the_committed_one():
    from introspect.experiment.stage0 import stage0_table

    doc = json.loads((STAGE0 / "stage0.json").read_text())
    assert _block("stage0-table: docs/results/coupling-map/stage0") == stage0_table(doc)
    md = (STAGE0 / "stage0.md").read_text().splitlines()
    assert stage0_table(doc) == md[-len(stage0_table(doc)) :]


@pytest.mark.skipif(not (STAGE0 / "stage0_values.jsonl.gz").is_file(), reason="no values")
def test_stage0_rows_are_recomputed_from_the_committed_values(smollm2):
    from introspect.experiment.stage0 import recompute_rows

    doc = json.loads((STAGE0 / "stage0.json").read_text())
    assert recompute_rows(STAGE0, smollm2.tokenizer) == doc["tasks"]


def test_every_published_sweep_is_in_a_map():
    pooled = {p for m in MAPS for p in _sources(json.loads((m / "map" / "map.json").read_text()))}
    assert {p.parent for p in RESULTS.glob("*/sweep.json")} <= pooled


@pytest.mark.parametrize("sweep", MAPS, ids=[s.name for s in MAPS])
def test_a_published_map_is_recomputed_from_its_predictions(sweep, tmp_path):
    from introspect.experiment import build_map

    committed = json.loads((sweep / "map" / "map.json").read_text())
    o = committed["options"]
    doc = build_map(
        _sources(committed), tmp_path / "map", say=lambda m: None, rho_bins=tuple(o["rho_bins"]),
        n_boot=o["n_boot"], seed=o["seed"], alpha=o["alpha"], null_min_runs=o["null_min_runs"],
        explainers=tuple(o["explainers"]),
    )  # fmt: skip
    assert not doc["metrics_mismatches"], doc["metrics_mismatches"][:3]

    def skipped(d):  # the runs not yet complete, by name (paths are where the map was made)
        return sorted((Path(s["run"]).name, s["why"]) for s in d["skipped"])

    assert len(doc["runs"]) == len(committed["runs"]) and skipped(doc) == skipped(committed)
    for key in ("cells", "null", "endpoints"):
        assert json.loads(json.dumps(doc[key])) == committed[key], key


@pytest.mark.parametrize("sweep", MAPS, ids=[s.name for s in MAPS])
def test_the_docs_endpoint_tables_are_the_committed_maps(sweep):
    from introspect.experiment.mapreport import endpoint_lines

    committed = json.loads((sweep / "map" / "map.json").read_text())
    rel = sweep.relative_to(ROOT).as_posix()
    table = [ln for ln in endpoint_lines(committed) if ln.startswith("|")]
    assert table and _block(f"map-endpoints: {rel}") == table
