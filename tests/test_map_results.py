"""Every number published about the coupling map is recomputed here from the committed files:
Stage 0's rows from every pair's committed choice log-probabilities, each published sweep's
map from its runs' committed predictions, and the docs' tables from those."""

from __future__ import annotations

import json
import re
import subprocess
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


def test_the_committed_map_stays_small():
    # The whole map, every sweep's runs and figures, is at most 5 MB as tracked.
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", str(RESULTS)],
                         capture_output=True, check=False)  # fmt: skip
    if out.returncode != 0:  # pragma: no cover - a copy without git
        pytest.skip("not a git checkout")
    files = [ROOT / f for f in out.stdout.decode().split("\0") if f]
    assert files, "no tracked map results"
    assert sum(f.stat().st_size for f in files if f.exists()) <= 5_000_000


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


_NUM = r"[+\-−]?\d+\.\d+"
_INTERVAL = re.compile(rf"({_NUM}) \[({_NUM}), ({_NUM})\]")


def _committed_intervals() -> list[tuple[float, float, float]]:
    """Every (value, lo, hi) of every committed map's cells, nulls and endpoints."""
    found: list[tuple[float, float, float]] = []

    def walk(o):
        if isinstance(o, dict):
            if {"value", "lo", "hi"} <= o.keys() and o["value"] is not None:
                found.append((o["value"], o["lo"], o["hi"]))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    for m in MAPS:
        doc = json.loads((m / "map" / "map.json").read_text())
        walk([doc["cells"], doc["null"], doc["endpoints"]])
    return found


def _printed(text: str) -> list[tuple[str, tuple[str, str, str]]]:
    return [(m.group(0), m.groups()) for m in _INTERVAL.finditer(text)]


def _matches(printed: tuple[str, str, str], committed: tuple[float, float, float]) -> bool:
    """Whether each printed number is the committed one at the decimals printed."""
    for s, v in zip(printed, committed, strict=True):
        places = len(s.split(".")[1])
        if round(float(s.replace("−", "-")), places) != round(v, places):
            return False
    return True


@pytest.mark.skipif(not MAPS, reason="no committed map")
def test_the_intervals_in_the_prose_are_committed_ones():
    # The README's paragraph on the map and the doc page's prose (outside the generated
    # tables, which the tests above check whole) cite intervals: each is a committed one.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "**The coupling map**" in readme
    headline = readme.split("**The coupling map**", 1)[1].split("![", 1)[0]
    prose = re.sub(r"<!-- ([\w-]+):.*?<!-- /\1 -->", "", DOC.read_text(encoding="utf-8"),
                   flags=re.S)  # fmt: skip
    committed = _committed_intervals()
    cited = _printed(headline) + _printed(prose)
    assert len(cited) >= 10
    missing = [s for s, p in cited if not any(_matches(p, c) for c in committed)]
    assert not missing, f"intervals in the prose that no committed map holds: {missing}"


def test_an_interval_is_matched_at_the_decimals_printed():
    ((s, p),) = _printed("gap −0.39 [−0.67, −0.12] there")
    assert s == "−0.39 [−0.67, −0.12]"
    assert _matches(p, (-0.3948, -0.6653, -0.1249))
    assert not _matches(("−0.40", "−0.67", "−0.12"), (-0.3948, -0.6653, -0.1249))
    assert not _matches(p, (-0.3948, -0.6653, -0.1349))


def test_what_held_counts_the_committed_endpoints():
    text = DOC.read_text(encoding="utf-8").split("### What held", 1)[1].split("\n### ", 1)[0]
    ends = [e for m in MAPS for e in json.loads((m / "map" / "map.json").read_text())["endpoints"]]
    high = [e for e in ends if e["rho"][0] >= 0.7]
    flat = " ".join(text.split())
    m = re.search(r"none of the (\d+) declared endpoints there is supported \(nor the (\d+) ", flat)
    assert m, "the summary's endpoint count is missing"
    assert (int(m.group(1)), int(m.group(2))) == (len(high), len(ends) - len(high))
    assert not [e for e in ends if e["verdict"] == "supported"]
    withheld = [e for e in ends if e["verdict"].startswith("withheld")]
    assert all(e["explainer"] == "verbal-score" for e in withheld)
    assert f"{len(withheld)} verbal-score verdicts are withheld" in flat


@pytest.mark.parametrize("spec", sorted(RESULTS.glob("*.toml")), ids=lambda p: p.name)
def test_a_committed_spec_is_the_one_its_published_runs_were_made_from(spec):
    # Every spec beside the results parses and expands into its runs; where its sweep is
    # published, the spec recorded with the runs is this file's, run for run.
    from introspect.experiment.spec import load_spec, parse_spec

    mine = load_spec(spec)
    assert mine.runs()
    recorded = RESULTS / spec.stem / "sweep.json"
    if recorded.is_file():
        doc = json.loads(recorded.read_text())
        assert parse_spec(doc["spec"], source=str(recorded)).to_json() == mine.to_json()
        assert sorted(doc["runs"]) == sorted(r.name for r in mine.runs())


def test_the_docs_commands_run_every_spec_and_make_every_map():
    # The doc page's commands to run the map again: every spec that has published runs is swept,
    # and every committed map is made from the same sweeps as its committed runs.
    block = "\n".join(_block("map-commands"))
    swept = set(re.findall(r"for s in ([^;]+); do", " ".join(block.replace("\\", " ").split())))
    assert len(swept) == 1, "the sweep loop is missing"
    names = set(swept.pop().split())
    assert names == {p.parent.name for p in RESULTS.glob("*/sweep.json")}
    assert all((RESULTS / f"{n}.toml").is_file() for n in names)
    made = {}
    for line in " ".join(block.replace("\\", " ").split()).split("introspect experiment map ")[1:]:
        args = line.split(" introspect ")[0].split()
        out = args[args.index("--out") + 1]
        made[Path(out).parent.name] = sorted(Path(a).name for a in args[: args.index("--out")])
    for m in MAPS:
        committed = json.loads((m / "map" / "map.json").read_text())
        assert made.get(m.name) == sorted(p.name for p in _sources(committed)), m.name
