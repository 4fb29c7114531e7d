"""`introspect experiment sweep`: the spec, the grid, skip-when-complete, a killed sweep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from test_coupling import _metrics, model_dir  # noqa: F401  (the tiny model fixture)

import introspect
from introspect.cli import main
from introspect.experiment.spec import SpecError, load_spec, parse_spec
from introspect.experiment.sweep import SweepError, run_sweep

FIXED = dict(n_train=12, n_held=12, steps=2, batch_size=4, checkpoint_every=1, n_boot=20,
             noise_levels=[], lr=3e-3, verbal=False)  # fmt: skip
ENDPOINT = dict(name="probe high", task="sycophancy", setting="concurrent", explainer="probe",
                rho=[0.5, 1.0], direction="greater")  # fmt: skip


def _spec(model="m", **kw):
    doc = {
        "sweep": {"model": str(model), "name": "t"},
        "fixed": dict(FIXED),
        "grid": {"task": ["sycophancy"], "setting": ["concurrent"], "seed": [0, 1]},
        "endpoints": [dict(ENDPOINT)],
    }
    for k, v in kw.items():
        doc[k] = v
    return doc


TOML = """
[sweep]
model = "m"
[fixed]
n_train = 12
noise_levels = []
[grid]
task = ["sycophancy", "refusal"]
lr = [1e-4, 3e-4]
seed = [0, 1, 2]
[[endpoints]]
name = "a"
task = "refusal"
setting = "concurrent"
explainer = "probe-diff"
rho = [0.7, 1.0]
direction = "less"
"""


def test_grid_expands_to_named_runs_and_toml_equals_json(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(TOML)
    spec = load_spec(path)
    runs = spec.runs()
    assert len(runs) == 2 * 2 * 3
    assert runs[0].name == "task-sycophancy_lr-0.0001_seed-0"
    assert runs[1].name == "task-sycophancy_lr-0.0001_seed-1"  # the last key varies fastest
    assert runs[-1].name == "task-refusal_lr-0.0003_seed-2"
    assert len({r.name for r in runs}) == len(runs)
    assert runs[-1].values == {"task": "refusal", "lr": 3e-4, "seed": 2}
    assert runs[-1].config["tasks"] == ("refusal",) and runs[-1].config["n_train"] == 12
    assert spec.endpoints[0].rho == (0.7, 1.0) and spec.endpoints[0].statistic == "gap"
    as_json = tmp_path / "spec.json"
    import tomllib

    as_json.write_text(json.dumps(tomllib.loads(TOML)))
    assert [(r.name, r.config) for r in load_spec(as_json).runs()] == [
        (r.name, r.config) for r in runs
    ]


BAD = [
    ({"sweeep": {}}, "sweeep: unknown table"),
    ({"grid": {"lrr": [1]}}, "[grid] lrr: unknown setting"),
    ({"grid": {"lr": 0.1}}, "[grid] lr: expected a non-empty list"),
    ({"grid": {"lr": ["fast"]}}, "[grid] lr: expected a number"),
    ({"grid": {"seed": [0.5]}}, "[grid] seed: expected a whole number"),
    ({"grid": {"seed": [1, 1]}}, "[grid] seed: a value is listed twice"),
    ({"grid": {"out": ["x"]}}, "[grid] out: not taken here"),
    ({"fixed": {"seed": 0}, "grid": {"seed": [1, 2]}}, "[fixed] seed: also in [grid]"),
    ({"grid": {"setting": ["concurrent", "sideways"]}},
     "run setting-sideways_seed-0: unknown setting 'sideways'"),
    ({"endpoints": [{**ENDPOINT, "rho": [0.9, 0.5]}]}, "[[endpoints]] #1 rho: expected [lo, hi]"),
    ({"endpoints": [{**ENDPOINT, "task": "refusal"}]}, "#1 task: 'refusal': not among"),
    ({"endpoints": [{**ENDPOINT, "explainer": "oracle"}]}, "#1 explainer: 'oracle'"),
    ({"endpoints": [{k: v for k, v in ENDPOINT.items() if k != "direction"}]},
     "#1 direction: required"),
    ({"endpoints": [ENDPOINT, ENDPOINT]}, "[[endpoints]] name: names repeat"),
    ({"map": {"rho_bins": [0.5, 0.2]}}, "[map] rho_bins: expected increasing numbers"),
    ({"grid": {"shift": [{"lr": 1e-4, "w_reg": 0.0}, {"lr": 1e-4}]}},
     "[grid] shift #2: every table of a linked axis sets ['lr', 'w_reg']"),
    ({"grid": {"shift": [{"lr": "fast"}]}}, "[grid] shift #1 lr: expected a number"),
    ({"grid": {"shift": [{"lrr": 1e-4}]}}, "[grid] lrr: unknown setting"),
    ({"grid": {"shift": [{"seed": 3}]}}, "[grid] shift: seed is also set by [grid] seed"),
    ({"grid": {"shift": [{"lr": 1e-3}]}}, "[fixed] lr: also in [grid]"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_specs_get_one_line_naming_the_file_and_key(tmp_path, change, message):
    doc = _spec()
    for k, v in change.items():
        doc[k] = {**doc[k], **v} if k in ("grid", "fixed") else v
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError) as got:
        load_spec(path)
    text = str(got.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text
    # The command line turns it into one line and exit code 2.
    assert main(["experiment", "sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"]) == 2


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[grid\nlr = [1")
    with pytest.raises(SpecError, match=r"broken\.toml: not valid TOML"):
        load_spec(path)


def test_without_a_toml_reader_the_spec_must_be_json(tmp_path, monkeypatch):
    path = tmp_path / "spec.toml"
    path.write_text(TOML)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # as on Python 3.10 without tomli
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(SpecError, match=r"spec\.toml: reading TOML needs .*give the spec as JSON"):
        load_spec(path)


def test_a_task_in_fixed_is_every_runs_task():
    doc = _spec()
    doc["grid"] = {"seed": [0, 1]}
    doc["fixed"] = {**doc["fixed"], "task": "sycophancy", "setting": "concurrent"}
    runs = parse_spec(doc).runs()
    assert [r.name for r in runs] == ["seed-0", "seed-1"]
    assert all(r.config["tasks"] == ("sycophancy",) for r in runs)


def test_a_linked_axis_varies_its_settings_together():
    doc = _spec()
    del doc["fixed"]["lr"]
    doc["grid"] = {
        "task": ["sycophancy", "refusal"],
        "shift": [{"lr": 3e-6, "w_reg": 0.0}, {"lr": 3e-5, "w_reg": 10.0}],
        "seed": [0],
    }
    runs = parse_spec(doc).runs()
    assert [r.name for r in runs] == [
        "task-sycophancy_lr-3e-06_w_reg-0",
        "task-sycophancy_lr-3e-05_w_reg-10",
        "task-refusal_lr-3e-06_w_reg-0",
        "task-refusal_lr-3e-05_w_reg-10",
    ]
    assert runs[1].values == {"task": "sycophancy", "lr": 3e-5, "w_reg": 10.0}
    assert (runs[3].config["lr"], runs[3].config["w_reg"], runs[3].config["seed"]) == (3e-5, 10, 0)
    assert "shift" not in runs[0].config
    # An endpoint may name a setting that only a linked axis gives.
    doc["grid"] = {"task": ["sycophancy"], "mode": [{"setting": "concurrent", "lr": 1e-4}]}
    assert parse_spec(doc).endpoints[0].setting == "concurrent"
    # ... or a task: cells of a task and a learning rate each, no default task added.
    doc["grid"] = {"cell": [{"lr": 1e-5, "task": "sycophancy"}, {"lr": 3e-6, "task": "refusal"}]}
    spec = parse_spec(doc)
    assert [r.name for r in spec.runs()] == ["lr-1e-05_task-sycophancy", "lr-3e-06_task-refusal"]
    assert [r.config["tasks"] for r in spec.runs()] == [("sycophancy",), ("refusal",)]
    assert spec.endpoints[0].task == "sycophancy"


def test_a_complete_runs_large_weights_are_pruned(tmp_path):
    from introspect.experiment.sweep import PRUNE_BYTES, prune_run

    big = tmp_path / "t" / "train-concurrent" / "ckpt-000008" / "model" / "model.safetensors"
    opt = big.parent.parent / "optimizer.safetensors"
    probe = big.parent.parent / "probe" / "weights.safetensors"
    metrics = tmp_path / "t" / "eval-concurrent" / "metrics.jsonl"
    for f, size in ((big, PRUNE_BYTES), (opt, 2 * PRUNE_BYTES), (probe, 4096), (metrics, 10)):
        f.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "wb") as fh:
            fh.truncate(size)
    assert prune_run(tmp_path) == 3 * PRUNE_BYTES
    assert not big.exists() and not opt.exists() and probe.exists() and metrics.exists()


@pytest.fixture(scope="module")
def reference_sweep(model_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("ref") / "sweep"
    log: list[str] = []
    run_sweep(parse_spec(_spec(model_dir)), out, say=log.append)
    return out, log


def test_sweep_writes_runs_configs_and_endpoints(reference_sweep):
    out, log = reference_sweep
    ends = json.loads((out / "endpoints.json").read_text())
    assert ends["endpoints"] == [{**ENDPOINT, "statistic": "gap"}] and ends["declared_utc"]
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["runs"] == ["seed-0", "seed-1"]
    for seed, name in enumerate(doc["runs"]):
        cfg = json.loads((out / "runs" / name / "config.json").read_text())
        want = {
            "task": "sycophancy",
            "setting": "concurrent",
            "lr": 3e-3,
            "w_reg": 1.0,
            "seed": seed,
            "label_source": "self",
            "steps": 2,
            "n_train": 12,
            "n_held": 12,
        }
        assert {k: cfg[k] for k in want} == want  # fmt: skip
        assert cfg["model"] and cfg["values"] == {"seed": seed}
        assert cfg["config"]["out"] == str(out / "runs" / name)
        state = json.loads((out / "runs" / name / "state.json").read_text())
        assert state["complete"] and "sycophancy/eval-shuffled" in state["completed"]
    # Progress: run k/N, the stage, the sweep's ETA.
    assert any(m.startswith("[sweep 2/2 seed-1] [") and "sweep ETA" in m for m in log)
    assert any("sycophancy/train-concurrent: start" in m for m in log)


def test_a_complete_sweep_is_skipped_and_changed_endpoints_refused(
    reference_sweep,
    model_dir,  # noqa: F811
    monkeypatch,
):
    import introspect.experiment.coupling as coupling

    out, _ = reference_sweep

    def no_run(*_a, **_k):
        raise AssertionError("a complete run was run again")

    monkeypatch.setattr(coupling, "run_coupling", no_run)
    log: list[str] = []
    doc = run_sweep(parse_spec(_spec(model_dir)), out, resume=True, say=log.append)
    assert [r["status"] for r in doc["runs"]] == ["complete", "complete"]
    assert sum("complete, skipped" in m for m in log) == 2
    with pytest.raises(SweepError, match="already holds a sweep"):
        run_sweep(parse_spec(_spec(model_dir)), out, say=log.append)
    other = _spec(model_dir, endpoints=[{**ENDPOINT, "rho": [0.3, 1.0]}])
    with pytest.raises(SweepError, match="endpoints differ from those declared"):
        run_sweep(parse_spec(other), out, resume=True, say=log.append)


def test_a_sweep_killed_mid_run_finishes_with_the_same_metrics(
    reference_sweep,
    model_dir,  # noqa: F811
    tmp_path,
):
    ref, _ = reference_sweep
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_spec(model_dir)))
    out = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=str(Path(introspect.__file__).parent.parent))
    cmd = [sys.executable, "-m", "introspect", "experiment", "sweep", str(spec), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stderr:
            seen.append(line)
            # Killed inside the second run, while it trains its shuffled-label control.
            if line.startswith("[sweep 2/2 seed-1] [") and "train-shuffled: start" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    state = json.loads((out / "runs" / "seed-1" / "state.json").read_text())
    assert not state.get("complete") and "sycophancy/eval-concurrent" in state["completed"]
    log: list[str] = []
    run_sweep(spec, out, resume=True, say=log.append)
    assert any(m == "[sweep 1/2] seed-0: complete, skipped" for m in log)
    assert any("sycophancy/eval-concurrent: done earlier, skipped" in m for m in log)
    for name in ("seed-0", "seed-1"):
        got, want = _metrics(out / "runs" / name), _metrics(ref / "runs" / name)
        assert got and got == want


def test_map_of_a_real_sweep_reads_the_runs_own_numbers(reference_sweep, monkeypatch, tmp_path):
    from introspect.evaluation import read_jsonl

    out, _ = reference_sweep
    assert main(["experiment", "map", str(out), "--out", str(tmp_path / "map"), "--n-boot",
                 "50"]) == 0  # fmt: skip
    doc = json.loads((tmp_path / "map" / "map.json").read_text())
    main_pts = [p for p in doc["points"] if p["role"] == "main"]
    # Two runs, checkpoints 1 and 2, two probes (the runs train no verbal explainer).
    assert len(main_pts) == 2 * 2 * 2 and not doc["metrics_mismatches"]
    for p in main_pts:
        rows = read_jsonl(Path(p["path"]) / "sycophancy" / "eval-concurrent" / "metrics.jsonl")
        gap = next(r["value"] for r in rows if (r["explainer"], r["checkpoint"], r["metric"])
                   == (p["explainer"], p["checkpoint"], "gap.pearson"))  # fmt: skip
        assert p["gap"] == gap
    nulls = [p for p in doc["points"] if p["role"] == "null"]
    assert {p["condition"] for p in nulls} == {"shuffled"}
    assert all(not n["enough"] for n in doc["null"])  # two shuffled runs: fewer than 3
    assert doc["endpoints"][0]["name"] == "probe high"


def test_a_published_sweep_maps_to_the_same_numbers(reference_sweep, tmp_path):
    from introspect.experiment import build_map, publish_sweep

    out, _ = reference_sweep
    dest = tmp_path / "published"
    doc = publish_sweep(out, dest, say=lambda m: None)
    assert doc["published"] == ["seed-0", "seed-1"] and not doc["left_out"]
    assert not list(dest.rglob("*.safetensors")) and not list(dest.rglob("predictions.jsonl"))
    assert list(dest.rglob("predictions.jsonl.gz"))
    opts = dict(n_boot=50, null_min_runs=2, say=lambda m: None)
    here = build_map([out], tmp_path / "m1", **opts)
    there = build_map([dest], tmp_path / "m2", **opts)
    assert here["cells"] and here["cells"] == there["cells"]
    assert here["null"] == there["null"] and here["endpoints"] == there["endpoints"]
    assert not there["metrics_mismatches"] and not there["skipped"]
