"""`introspect experiment map` on synthetic run directories, against numpy references written
here: Holm's correction, the hierarchical bootstrap, the imitator and tracker curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from introspect.cli import main
from introspect.evaluation import write_jsonl
from introspect.experiment.config import ExperimentConfig, plan_stages
from introspect.experiment.mapstats import (
    Point,
    Unit,
    bootstrap_p,
    hierarchical_bootstrap,
    holm,
    imitator_gap,
    tracker_gap,
)

# ------------------------------------------------------------------------- pure statistics


def test_holm_matches_the_step_down_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    got = holm([0.02, math.nan, 0.01])  # an endpoint without data is left out of m
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)
    assert holm([]) == []


def test_bootstrap_p_counts_the_replicates_on_the_nulls_side():
    reps = np.array([0.3, -0.1, 0.2, 0.0, np.nan, 0.5])
    assert bootstrap_p(reps, 0.0, "greater") == pytest.approx((1 + 2) / (1 + 5))
    assert bootstrap_p(reps, 0.0, "less") == pytest.approx((1 + 4) / (1 + 5))
    assert math.isnan(bootstrap_p(np.array([np.nan]), 0.0, "greater"))


def _points(rng, n, k, rho, kind):
    """k checkpoints of an explainer on n pairs: labels y, current Δ with r(current, y) = rho,
    predictions that imitate y or track the current Δ."""
    y = rng.normal(size=n)
    out = []
    for _ in range(k):
        cur = rho * y + math.sqrt(1 - rho**2) * rng.normal(size=n)
        base = y if kind == "imitator" else cur
        out.append(Point(base + 0.5 * rng.normal(size=n), cur, y))
    return out


def _reference_bootstrap(units, n_boot, seed):
    """The hierarchical bootstrap of the mean gap in plain numpy loops (np.corrcoef), drawing
    the random numbers in the documented order."""
    rng = np.random.default_rng(seed)
    k = len(units)
    draws = rng.integers(0, k, size=(n_boot, k))
    idx = {}
    for u, unit in enumerate(units):
        for r in range(int((draws == u).sum(axis=1).max())):
            idx[u, r] = rng.integers(0, unit.n_pairs, size=(n_boot, unit.n_pairs))
    out = np.empty(n_boot)
    for b in range(n_boot):
        gaps = []
        for u, unit in enumerate(units):
            for r in range(int((draws[b] == u).sum())):
                i = idx[u, r][b]
                for pt in unit.points:
                    s = np.corrcoef(pt.pred[i], pt.current[i])[0, 1]
                    o = np.corrcoef(pt.pred[i], pt.label[i])[0, 1]
                    gaps.append(s - o)
        out[b] = np.mean(gaps)
    return out


def test_hierarchical_bootstrap_matches_a_numpy_reference_and_repeats_per_seed():
    rng = np.random.default_rng(5)
    units = [Unit(f"s{s}", tuple(_points(rng, 30 + 7 * s, 2, 0.8, "tracker"))) for s in range(3)]
    point, reps = hierarchical_bootstrap(units, ("gap", "rho"), n_boot=40, seed=11)
    want = np.mean([np.corrcoef(p.pred, p.current)[0, 1] - np.corrcoef(p.pred, p.label)[0, 1]
                    for u in units for p in u.points])  # fmt: skip
    assert point["gap"] == pytest.approx(want, abs=1e-9)
    np.testing.assert_allclose(reps["gap"], _reference_bootstrap(units, 40, 11), atol=1e-9)
    again = hierarchical_bootstrap(units, ("gap", "rho"), n_boot=40, seed=11)[1]
    other = hierarchical_bootstrap(units, ("gap", "rho"), n_boot=40, seed=12)[1]
    assert np.array_equal(again["gap"], reps["gap"]) and not np.array_equal(
        other["gap"], reps["gap"]
    )


def test_cell_c_is_the_ratio_of_the_pooled_coefficients():
    """c of a set of points is A / (A + B) of the mean coefficients (each point's own fit by
    numpy's least squares here), so a point whose a + b nearly cancels cannot dominate it."""
    rng = np.random.default_rng(3)
    n = 80
    points = list(_points(rng, n, 2, 0.6, "tracker"))
    y, now = rng.normal(size=n), rng.normal(size=n)
    points.append(Point(pred=0.5 * now - 0.49 * y + 0.01 * rng.normal(size=n), current=now,
                        label=y))  # fmt: skip  # a + b nearly cancels: a large ratio of its own

    def fit(pt):
        z = lambda v: (v - v.mean()) / v.std()
        X = np.stack([z(pt.current), z(pt.label)], axis=1)
        return np.linalg.lstsq(X, z(pt.pred), rcond=None)[0]

    coef = np.array([fit(pt) for pt in points])
    own = coef[:, 0] / coef.sum(axis=1)
    assert abs(own[-1]) > 5  # the mean of the ratios would be dominated by it
    point, reps = hierarchical_bootstrap([Unit("u", tuple(points))], ("c", "gap"), n_boot=200)
    A, B = coef.mean(axis=0)
    assert point["c"] == pytest.approx(A / (A + B), abs=1e-9)
    assert 0 < point["c"] < 1.5 and point["c"] != pytest.approx(own.mean(), abs=0.5)
    lo, hi = np.nanquantile(reps["c"], [0.025, 0.975])
    assert lo <= point["c"] <= hi
    assert set(reps) == {"c", "gap"} | {"a", "b"} and set(point) >= {"c", "gap"}
    # no positive fit at all: undefined
    flat = Point(pred=-(now + y) + 0.1 * rng.normal(size=n), current=now, label=y)
    alone, _ = hierarchical_bootstrap([Unit("u", (flat,))], ("c",), n_boot=0)
    assert np.isnan(alone["c"])


@pytest.mark.parametrize("rho", [0.3, 0.6, 0.9])
def test_imitators_and_trackers_lie_on_their_curves(rho):
    rng = np.random.default_rng(1)
    n = 4000
    for kind, curve, along in (
        ("imitator", imitator_gap, "orig"),
        ("tracker", tracker_gap, "self"),
    ):
        (pt,) = _points(rng, n, 1, rho, kind)
        point, _ = hierarchical_bootstrap([Unit("u", (pt,))], ("self", "orig", "gap"), n_boot=0)
        assert float(curve(rho, point[along])) == pytest.approx(point["gap"], abs=0.03)
    grid = np.linspace(-0.5, 1, 7)
    np.testing.assert_allclose(imitator_gap(grid, 0.8), 0.8 * (grid - 1))
    np.testing.assert_allclose(tracker_gap(grid, 0.7), 0.7 * (1 - grid))


# ------------------------------------------------------------------ synthetic run directories


def _write_run(root: Path, seed: int, rho: float, n: int = 60) -> Path:
    """A finished explain-only coupling run, as the experiment writes it, whose probe tracks the
    current Δ, whose difference probe imitates the labels, with labels correlated ``rho`` with
    the current Δ at steps 1 and 2; its shuffled control predicts noise."""
    out = root / f"seed-{seed}_rho-{rho:g}"
    cfg = ExperimentConfig(model="/no/such/model", out=str(out), setting="explain-only",
                           seed=seed, noise_levels=(), n_train=8, n_held=n, steps=2)  # fmt: skip
    stages = plan_stages(cfg)
    rng = np.random.default_rng([seed, int(rho * 100)])
    prng = np.random.default_rng(seed)  # the seed's pairs: the same labels in all its runs
    ids = [f"sycophancy-{seed}-{i:04d}" for i in range(n)]
    y = prng.normal(size=n)
    for cond in ("explain", "shuffled"):
        recs = []
        for step in (0, 1, 2) if cond == "explain" else (2,):
            r = 1.0 if step == 0 else rho
            cur = r * y + math.sqrt(1 - r**2) * rng.normal(size=n)
            preds = {"probe": cur + 0.4 * rng.normal(size=n),
                     "probe-diff": y + 0.4 * rng.normal(size=n)}  # fmt: skip
            if cond == "shuffled":
                preds = {k: rng.normal(size=n) for k in preds}
            for expl, p in preds.items():
                recs += [{"checkpoint": step, "explainer": expl, "id": i, "pred": float(a),
                          "current": float(b), "label": float(c)}
                         for i, a, b, c in zip(ids, p, cur, y, strict=True)]  # fmt: skip
        edir = out / "sycophancy" / f"eval-{cond}"
        edir.mkdir(parents=True)
        write_jsonl(edir / "predictions.jsonl", recs)
    state = {"config": cfg.to_json(), "completed": [s[0] for s in stages], "complete": True,
             "stages": {s[0]: {"seconds": 0.0} for s in stages}}  # fmt: skip
    (out / "state.json").write_text(json.dumps(state))
    return out


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [_write_run(root, seed, rho) for seed in (0, 1, 2) for rho in (0.95, 0.6)]


def _endpoints_sweep(root: Path, runs: list[Path], endpoints: list[dict]) -> Path:
    """A sweep directory around the runs (as `experiment sweep` leaves it)."""
    sweep = root / "sweep"
    (sweep / "runs").mkdir(parents=True)
    for r in runs:
        (sweep / "runs" / r.name).symlink_to(r)
    spec = {"sweep": {"model": "/no/such/model"}, "fixed": {"noise_levels": []},
            "grid": {"task": ["sycophancy"], "setting": ["explain-only"]}}  # fmt: skip
    (sweep / "sweep.json").write_text(json.dumps({"spec": spec, "runs": [r.name for r in runs]}))
    (sweep / "endpoints.json").write_text(json.dumps({"endpoints": endpoints}))
    return sweep


def _ep(name, explainer, rho, direction="greater", statistic="gap"):
    return {
        "name": name,
        "task": "sycophancy",
        "setting": "explain-only",
        "explainer": explainer,
        "rho": rho,
        "direction": direction,
        "statistic": statistic,
    }


def test_map_on_synthetic_runs(synthetic_runs, tmp_path, monkeypatch):
    import transformers

    import introspect.models as models

    def no_model(*_a, **_k):
        raise AssertionError("the map loaded a model")

    monkeypatch.setattr(models, "load_model", no_model)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_model)
    ends = [
        _ep("tracker high", "probe", [0.9, 1.0]),
        _ep("imitator high", "probe-diff", [0.9, 1.0]),
        _ep("imitator mid, below", "probe-diff", [0.5, 0.7], direction="less"),
        _ep("tracker c", "probe", [0.5, 0.7], statistic="c"),
        _ep("nothing there", "probe", [-1.0, 0.0]),
    ]
    sweep = _endpoints_sweep(tmp_path, synthetic_runs, ends)
    assert main(["experiment", "map", str(sweep), "--n-boot", "200", "--explainers",
                 "probe,probe-diff"]) == 0  # fmt: skip
    doc = json.loads((sweep / "map" / "map.json").read_text())
    assert len(doc["runs"]) == 6 and not doc["skipped"]
    # Points: 6 runs × checkpoints 1, 2 × 2 explainers, plus 6 shuffled × 2 explainers.
    roles = [p["role"] for p in doc["points"]]
    assert roles.count("main") == 24 and roles.count("null") == 12
    # A point's gap is numpy's Pearson difference on its records.
    p0 = next(p for p in doc["points"] if p["role"] == "main")
    recs = [json.loads(ln) for ln in (Path(p0["path"]) / "sycophancy" / "eval-explain" /
            "predictions.jsonl").read_text().splitlines()]  # fmt: skip
    mine = [r for r in recs if (r["explainer"], r["checkpoint"]) ==
            (p0["explainer"], p0["checkpoint"])]  # fmt: skip
    a, c, y = (np.array([r[k] for r in mine]) for k in ("pred", "current", "label"))
    want = np.corrcoef(a, c)[0, 1] - np.corrcoef(a, y)[0, 1]
    assert p0["gap"] == pytest.approx(want, abs=1e-9)
    # A cell's value is the mean of its points; its interval contains it.
    cell = next(c for c in doc["cells"] if c["explainer"] == "probe" and c["bin"] == [0.9, 1.0])
    pts = [p for p in doc["points"] if p["role"] == "main" and p["explainer"] == "probe"
           and 0.9 <= p["rho"] <= 1.0]  # fmt: skip
    assert cell["n_points"] == len(pts) and cell["n_seeds"] == 3 and cell["n_runs"] == 3
    assert cell["gap"]["value"] == pytest.approx(np.mean([p["gap"] for p in pts]), abs=1e-12)
    assert cell["gap"]["lo"] <= cell["gap"]["value"] <= cell["gap"]["hi"]
    # Endpoints: Holm over those with data, by hand from the stored p-values.
    got = {e["name"]: e for e in doc["endpoints"]}
    with_data = [e for e in doc["endpoints"] if e["p"] is not None]
    assert len(with_data) == 4 and got["nothing there"]["verdict"] == "no data"
    order = sorted(with_data, key=lambda e: e["p"])
    running = 0.0
    for rank, e in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * e["p"]))
        assert e["p_holm"] == pytest.approx(running)
    assert got["tracker high"]["verdict"] == "supported"
    assert got["imitator high"]["verdict"] == "not supported"
    assert got["imitator mid, below"]["verdict"] == "supported"
    assert got["tracker c"]["verdict"] == "supported" and got["tracker c"]["null_value"] == 0.5
    # The null: 6 shuffled-label runs of 3 seeds, enough for a band; noise has no signal.
    assert all(n["enough"] and (n["n_runs"], n["n_seeds"]) == (6, 3) for n in doc["null"])
    assert all(n["self"]["lo"] < 0 < n["self"]["hi"] for n in doc["null"])
    for f in doc["figures"]:
        assert (sweep / "map" / f).stat().st_size > 1000
    assert len(doc["figures"]) == 4
    md = (sweep / "map" / "map.md").read_text()
    assert "| tracker high | sycophancy | explain-only | probe | [0.9, 1] | gap > 0 |" in md
    assert "**supported**" in md and "![figures/gap_vs_rho-sycophancy-probe.png]" in md


@pytest.mark.parametrize(
    ("null", "verdict"),
    [
        (None, "supported"),
        ({"n_runs": 1, "self": {"lo": -0.4, "hi": -0.1}}, "withheld: control failed"),
        ({"n_runs": 5, "self": {"lo": 0.02, "hi": 0.3}}, "withheld: control failed"),
        ({"n_runs": 1, "self": {"lo": -0.4, "hi": 0.1}}, "supported"),
        ({"n_runs": 2, "self": {"lo": None, "hi": None}}, "withheld: control failed"),
    ],
)
def test_a_failed_control_withholds_however_few_its_runs(null, verdict):
    from introspect.experiment.map import MapOptions, _endpoint_verdict

    if null is not None:
        null["enough"] = null["n_runs"] >= 3
    row = {"n_points": 4, "p_holm": 0.01, "null": null}
    assert _endpoint_verdict(row, MapOptions()) == verdict
    assert _endpoint_verdict({**row, "p_holm": 0.2}, MapOptions()).startswith(
        "withheld" if verdict.startswith("withheld") else "not supported"
    )


def test_map_is_deterministic_and_flags_stale_metrics(synthetic_runs):
    from introspect.experiment.map import MapOptions, cells, load_runs

    opts = MapOptions(n_boot=50, seed=3)
    first = cells(load_runs(synthetic_runs), opts)
    data = load_runs(synthetic_runs)
    assert cells(data, opts) == first and not data.mismatches
    assert cells(data, MapOptions(n_boot=50, seed=4)) != first
    edir = synthetic_runs[0] / "sycophancy" / "eval-explain"
    write_jsonl(edir / "metrics.jsonl", [{"checkpoint": 1, "explainer": "probe",
                                          "metric": "gap.pearson", "value": 0.123}])  # fmt: skip
    try:
        stale = load_runs(synthetic_runs)
    finally:
        (edir / "metrics.jsonl").unlink()
    assert any("eval-explain/metrics.jsonl: probe step 1 gap" in m for m in stale.mismatches)
    assert cells(stale, opts) == first  # the map uses the predictions, not the stored metrics


def test_map_input_errors(tmp_path):
    assert main(["experiment", "map", str(tmp_path)]) == 2  # --out needed
    assert main(["experiment", "map", str(tmp_path), "--out", str(tmp_path / "m")]) == 3
