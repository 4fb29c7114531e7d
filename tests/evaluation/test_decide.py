"""ρ, the coupling index, the trajectory and the verdict against numpy computations by hand."""

from __future__ import annotations

import ast
import doctest
import math
from pathlib import Path

import numpy as np
import pytest

from introspect.evaluation import decide
from introspect.evaluation.decide import (
    coupling_index,
    precondition,
    rho,
    trajectory,
    verdict,
)
from introspect.evaluation.metrics import Estimate, bootstrap_indices, coupling

TOL = dict(rel=1e-9, abs=1e-12)  # pytest.approx
NP_TOL = dict(rtol=1e-9, atol=1e-12)  # np.testing


# ------------------------------------------------------------------------------ by hand


def z(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / x.std()


def abc_by_hand(p, c, y):
    """a, b, c by np.linalg.lstsq on the z-scores; NaN where undefined (collinear current and
    labels: rank 1 once singular values below 1e-6 of the largest, rounding, are dropped)."""
    p, c, y = (np.asarray(v, dtype=np.float64) for v in (p, c, y))
    if min(p.std(), c.std(), y.std()) == 0:
        return math.nan, math.nan, math.nan
    coef, _, rank, _ = np.linalg.lstsq(np.column_stack([z(c), z(y)]), z(p), rcond=1e-6)
    if rank < 2:
        return math.nan, math.nan, math.nan
    a, b = coef
    return float(a), float(b), float(a / (a + b)) if a + b != 0 else math.nan


def r_by_hand(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def ranks(a):
    """Ranks of distinct values (the test data has no ties)."""
    out = np.empty(len(a))
    out[np.argsort(a)] = np.arange(1, len(a) + 1)
    return out


def resamples(n, n_boot, seed):
    return np.concatenate(list(bootstrap_indices(n, n_boot, seed)))


def interval_by_hand(reps, level=0.95):
    reps = np.asarray(reps, dtype=np.float64)
    ok = reps[np.isfinite(reps)]
    a = (1 - level) / 2
    return tuple(np.quantile(ok, [a, 1 - a]))


def mixed(n, seed, w_current=0.6, w_labels=0.3):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    c = 0.5 * y + rng.normal(size=n)
    p = w_current * c + w_labels * y + 0.5 * rng.normal(size=n)
    return p, c, y


# ----------------------------------------------------------------------- coupling index


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coupling_index_point_values_are_least_squares_on_z_scores(seed):
    p, c, y = mixed(60 + 17 * seed, seed)
    # Scale and shift each: z-scores make the index blind to both.
    est = coupling_index(3 * p - 1, 0.2 * c + 5, 10 * y, n_boot=0)
    a, b, ratio = abc_by_hand(p, c, y)
    assert est["coupling.a"].value == pytest.approx(a, **TOL)
    assert est["coupling.b"].value == pytest.approx(b, **TOL)
    assert est["coupling.c"].value == pytest.approx(ratio, **TOL)
    assert {k: e.metric for k, e in est.items()} == {
        "coupling.a": "coupling.a",
        "coupling.b": "coupling.b",
        "coupling.c": "coupling.c",
    }
    assert all(e.n == len(p) and math.isnan(e.lo) and math.isnan(e.hi) for e in est.values())


def test_pure_imitation_gives_c_near_0_and_pure_tracking_near_1():
    rng = np.random.default_rng(3)
    y, c = rng.normal(size=(2, 300))
    tiny = 1e-3 * rng.normal(size=300)
    imitate = coupling_index(y + tiny, c, y, n_boot=100)
    track = coupling_index(c + tiny, c, y, n_boot=100)
    assert abs(imitate["coupling.c"].value) < 0.01
    assert abs(imitate["coupling.a"].value) < 0.01 and imitate["coupling.b"].value > 0.99
    assert abs(track["coupling.c"].value - 1) < 0.01
    assert track["coupling.a"].value > 0.99 and abs(track["coupling.b"].value) < 0.01
    assert imitate["coupling.c"].hi < 0.5 < track["coupling.c"].lo


def test_intervals_contain_the_point_on_well_behaved_data():
    p, c, y = mixed(200, 4)
    est = coupling_index(p, c, y, n_boot=200, seed=1)
    for e in [*est.values(), rho(c, y, n_boot=200, seed=1)]:
        assert e.lo < e.value < e.hi, e
        assert e.hi - e.lo < 1.0, e


def test_replicates_are_least_squares_on_the_resampled_pairs():
    p, c, y = mixed(50, 5)
    n_boot, seed = 40, 7
    idx = resamples(len(p), n_boot, seed)
    by_hand = np.array([abc_by_hand(p[i], c[i], y[i]) for i in idx])
    # The first replicates themselves, from the vectorised rows ...
    rows = np.column_stack(decide._fit_rows(p[idx[:5]], c[idx[:5]], y[idx[:5]]))
    np.testing.assert_allclose(rows, by_hand[:5], **NP_TOL)
    # ... and every replicate, through the intervals they make.
    est = coupling_index(p, c, y, n_boot=n_boot, seed=seed)
    for j, k in enumerate("abc"):
        e = est[f"coupling.{k}"]
        assert (e.lo, e.hi) == pytest.approx(interval_by_hand(by_hand[:, j]), **TOL)


def test_undefined_cases_are_nan_and_left_out_of_intervals():
    rng = np.random.default_rng(6)
    p, y = rng.normal(size=(2, 40))
    for current in (np.full(40, 0.1), y.copy(), 2 * y + 1):  # constant; collinear with labels
        est = coupling_index(p, current, y, n_boot=20)
        assert all(math.isnan(e.value) and math.isnan(e.lo) for e in est.values())
    # a + b = 0: pred follows current − labels exactly, with current ⟂ labels.
    cur = np.array([1.0, -1.0, 1.0, -1.0])
    lab = np.array([1.0, 1.0, -1.0, -1.0])
    est = coupling_index(cur - lab, cur, lab, n_boot=0)
    assert est["coupling.a"].value == pytest.approx(math.sqrt(0.5), **TOL)
    assert est["coupling.b"].value == pytest.approx(-math.sqrt(0.5), **TOL)
    assert math.isnan(est["coupling.c"].value)
    # Few pairs: some resamples are constant or collinear, and only they are left out.
    p, c, y = mixed(5, 8)
    n_boot, seed = 300, 2
    idx = resamples(5, n_boot, seed)
    by_hand = np.array([abc_by_hand(p[i], c[i], y[i]) for i in idx])
    assert 0 < np.isnan(by_hand[:, 2]).sum() < n_boot
    est = coupling_index(p, c, y, n_boot=n_boot, seed=seed)
    for j, k in enumerate("abc"):
        e = est[f"coupling.{k}"]
        assert (e.lo, e.hi) == pytest.approx(interval_by_hand(by_hand[:, j]), **TOL)


def test_inputs_are_checked():
    with pytest.raises(ValueError, match="lengths"):
        coupling_index([1.0, 2.0, 3.0], [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="numbers"):
        coupling_index(["away", "toward"], ["away", "away"], ["toward", "away"])
    with pytest.raises(ValueError, match="level"):
        rho([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], level=1.5)


# -------------------------------------------------------------------------------------- ρ


def test_rho_is_corrcoef_with_intervals_on_the_resamples():
    _, c, y = mixed(80, 9)
    n_boot, seed = 100, 3
    est = rho(c, y, n_boot=n_boot, seed=seed)
    assert est.metric == "rho" and est.n == 80
    assert est.value == pytest.approx(np.corrcoef(c, y)[0, 1], **TOL)
    reps = [r_by_hand(c[i], y[i]) for i in resamples(80, n_boot, seed)]
    assert (est.lo, est.hi) == pytest.approx(interval_by_hand(reps), **TOL)


def test_rho_leaves_constant_resamples_out():
    c, y = np.array([0.0, 1.0, 3.0]), np.array([1.0, 0.0, 2.0])
    idx = resamples(3, 200, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = [r_by_hand(c[i], y[i]) for i in idx]
    assert 0 < np.isnan(reps).sum() < 200
    est = rho(c, y, n_boot=200, seed=0)
    assert (est.lo, est.hi) == pytest.approx(interval_by_hand(reps), **TOL)


def test_same_resamples_as_metrics_coupling():
    _, c, y = mixed(70, 10)
    # Self of pred = current against current = labels is r(current, labels): the same statistic
    # on the same draws gives the same interval exactly.
    ours = rho(c, y, n_boot=150, seed=4)
    theirs = coupling(c, y, y, metrics=["pearson"], n_boot=150, seed=4)["self.pearson"]
    assert (ours.value, ours.lo, ours.hi) == (theirs.value, theirs.lo, theirs.hi)


def test_precondition_reports_rho_and_whether_it_is_met():
    _, c, y = mixed(80, 11)
    ok = precondition(c, y, threshold=0.2, n_boot=100, seed=5)
    est = rho(c, y, n_boot=100, seed=5)
    assert (ok["rho"], ok["lo"], ok["hi"], ok["n"]) == (est.value, est.lo, est.hi, 80)
    assert ok["met"] is True and ok["threshold"] == 0.2
    assert f"ρ = {est.value:.3f} ≥ 0.2" in ok["text"]
    low = precondition(c, y, threshold=0.95, n_boot=0)
    assert low["met"] is False and low["lo"] is None and "too weakly" in low["text"]
    assert f"ρ = {est.value:.3f} < 0.95" in low["text"]
    flat = precondition(np.zeros(5), np.arange(5.0), n_boot=0)
    assert flat["met"] is False and flat["rho"] is None and "undefined" in flat["text"]


# ---------------------------------------------------------------------------- trajectory


N_PAIRS = 40


def make_records(checkpoints=(0, 1, 2, 3), explainer="probe", seed=12):
    """Records whose current Δ drifts from the labels; each checkpoint's records in its own
    order. Returns the records and, per checkpoint, (pred, current, label) in id order."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=N_PAIRS)
    ids = [f"pair-{k:02d}" for k in range(N_PAIRS)]
    records, arrays = [], {}
    for t in checkpoints:
        c = y + 0.6 * t * rng.normal(size=N_PAIRS)
        p = 0.7 * y + 0.2 * c + 0.4 * rng.normal(size=N_PAIRS)
        arrays[t] = (p, c, y)
        for k in rng.permutation(N_PAIRS):
            records.append(
                {"checkpoint": t, "explainer": explainer, "id": ids[k], "pred": float(p[k]),
                 "current": float(c[k]), "label": float(y[k])}
            )  # fmt: skip
    return records, arrays


def first_order(records, checkpoint):
    """Pair positions (into id order) of ``checkpoint``'s records, in record order."""
    return np.array([int(r["id"][5:]) for r in records if r["checkpoint"] == checkpoint])


def stats_by_hand(arrays, checkpoints, metric):
    agree = r_by_hand if metric == "pearson" else lambda a, b: r_by_hand(ranks(a), ranks(b))
    s = [agree(arrays[t][0], arrays[t][1]) for t in checkpoints]
    o = [agree(arrays[t][0], arrays[t][2]) for t in checkpoints]
    r = [r_by_hand(arrays[t][1], arrays[t][2]) for t in checkpoints]
    c = [abc_by_hand(*arrays[t])[2] for t in checkpoints]
    return {
        f"trajectory.self.{metric}": np.mean(s),
        f"trajectory.orig.{metric}": np.mean(o),
        f"trajectory.gap.{metric}": np.mean(s) - np.mean(o),
        "trajectory.rho": np.mean(r),
        "trajectory.c": np.mean(c),
        "trajectory.rho_min": np.min(r),
    }


@pytest.mark.parametrize("metric", ["pearson", "spearman"])
def test_trajectory_points_are_means_over_checkpoints_after_0(metric):
    records, arrays = make_records()
    est = trajectory(records, metric=metric, n_boot=0)
    want = stats_by_hand(arrays, [1, 2, 3], metric)
    assert list(est) == list(want)
    for k, v in want.items():
        assert est[k].metric == k and est[k].n == N_PAIRS
        assert est[k].value == pytest.approx(v, **TOL), k
    assert math.isnan(est["trajectory.rho_min"].lo) and math.isnan(est["trajectory.rho_min"].hi)
    # Chosen checkpoints, 0 included (there current = labels + 0 noise: c is undefined).
    est = trajectory(records, checkpoints=[3, 2], metric=metric, n_boot=0)
    for k, v in stats_by_hand(arrays, [3, 2], metric).items():
        assert est[k].value == pytest.approx(v, **TOL), k
    est = trajectory(records, checkpoints=[0, 1], n_boot=0)
    assert math.isnan(est["trajectory.c"].value)
    assert est["trajectory.rho_min"].value == pytest.approx(r_by_hand(*arrays[1][1:]), **TOL)


def test_trajectory_resamples_pairs_jointly_across_checkpoints():
    records, arrays = make_records()
    seed = 21
    # One replicate: its interval is the replicate itself.
    est = trajectory(records, n_boot=1, seed=seed)
    (draw,) = resamples(N_PAIRS, 1, seed)
    pairs = first_order(records, 1)[draw]  # the draw, as pairs, is the same at every checkpoint
    drawn = {t: tuple(v[pairs] for v in arrays[t]) for t in (1, 2, 3)}
    want = stats_by_hand(drawn, [1, 2, 3], "pearson")
    for k in ("self.pearson", "orig.pearson", "gap.pearson", "rho", "c"):
        e = est[f"trajectory.{k}"]
        assert e.lo == e.hi == pytest.approx(want[f"trajectory.{k}"], **TOL), k
    # Drawing each checkpoint on its own would have given other values.
    other = resamples(N_PAIRS, 3, seed + 1)
    apart = {t: tuple(v[first_order(records, 1)[other[j]]] for v in arrays[t])
             for j, t in enumerate((1, 2, 3))}  # fmt: skip
    alone = stats_by_hand(apart, [1, 2, 3], "pearson")["trajectory.self.pearson"]
    assert est["trajectory.self.pearson"].lo != pytest.approx(alone, rel=1e-6)


def test_one_checkpoint_trajectory_is_metrics_coupling_on_its_records():
    records, _ = make_records()
    mine = [r for r in records if r["checkpoint"] == 2]
    args = [np.array([r[k] for r in mine]) for k in ("pred", "current", "label")]
    est = trajectory(records, checkpoints=[2], n_boot=120, seed=3)
    ref = coupling(*args, metrics=["pearson"], n_boot=120, seed=3)
    for side in ("self", "orig", "gap"):
        a, b = est[f"trajectory.{side}.pearson"], ref[f"{side}.pearson"]
        assert (a.value, a.lo, a.hi) == pytest.approx((b.value, b.lo, b.hi), **TOL), side
    r = rho(*args[1:], n_boot=120, seed=3)
    c = coupling_index(*args, n_boot=120, seed=3)["coupling.c"]
    for a, b in ((est["trajectory.rho"], r), (est["trajectory.c"], c)):
        assert (a.value, a.lo, a.hi) == pytest.approx((b.value, b.lo, b.hi), **TOL)


def test_trajectory_checks_its_records():
    records, _ = make_records()
    dropped = [r for r in records if not (r["checkpoint"] == 2 and r["id"] == "pair-07")]
    with pytest.raises(ValueError, match=r"checkpoint 2 .*pair-07"):
        trajectory(dropped, n_boot=0)
    renamed = [dict(r, id="pair-99") if r["checkpoint"] == 3 and r["id"] == "pair-01" else r
               for r in records]  # fmt: skip
    with pytest.raises(ValueError, match="checkpoint 3"):
        trajectory(renamed, n_boot=0)
    twice = [*records, dict(records[-1])]
    with pytest.raises(ValueError, match="repeat"):
        trajectory(twice, n_boot=0)
    other, _ = make_records(checkpoints=(1,), explainer="probe-diff")
    with pytest.raises(ValueError, match="one explainer"):
        trajectory(records + other, n_boot=0)
    with pytest.raises(ValueError, match="checkpoint"):
        trajectory(records, checkpoints=[7], n_boot=0)
    with pytest.raises(ValueError, match="kappa"):
        trajectory(records, metric="kappa", n_boot=0)
    with pytest.raises(ValueError, match="lacks"):
        trajectory([{"checkpoint": 1, "id": "a"}], n_boot=0)
    with pytest.raises(ValueError, match="no checkpoints"):
        trajectory([r for r in records if r["checkpoint"] == 0], n_boot=0)


# ------------------------------------------------------------------------------- verdict


def est(metric, value, lo, hi):
    return Estimate(metric, value, lo, hi, 100)


POSITIVE = est("gap.pearson", 0.12, 0.05, 0.19)
NEGATIVE = est("gap.pearson", -0.2, -0.35, -0.06)
STRADDLE = est("gap.pearson", 0.02, -0.04, 0.08)


@pytest.mark.parametrize(
    ("gap", "name", "words"),
    [
        (POSITIVE, "coupling", "Self exceeds Orig"),
        (NEGATIVE, "no coupling", "Self falls short of Orig"),
        (STRADDLE, "inconclusive", "does not lie clear of 0"),
        (est("gap.pearson", math.nan, math.nan, math.nan), "inconclusive", "undefined"),
    ],
)
def test_verdict_from_the_gap_when_the_precondition_holds(gap, name, words):
    out = verdict(gap, 0.82)
    assert out["verdict"] == name
    assert out["precondition"] == {"rho": 0.82, "threshold": 0.5, "met": True}
    assert out["control"] is None
    assert words in out["text"] and "ρ = 0.820 ≥ 0.5" in out["text"]
    assert set(out) == {"verdict", "precondition", "control", "text"}


def test_low_rho_overrides_a_positive_gap():
    no_interval = est("trajectory.rho_min", 0.364, math.nan, math.nan)
    for r in (0.364, est("rho", 0.364, 0.2, 0.9), no_interval):
        out = verdict(POSITIVE, r)
        assert out["verdict"] == "precondition not met"
        assert out["precondition"] == {"rho": 0.364, "threshold": 0.5, "met": False}
        assert "Not tested" in out["text"] and "too weakly correlated" in out["text"]
        assert "ρ = 0.364 < 0.5" in out["text"]
    # The point value decides, not the interval; the threshold is the caller's.
    assert verdict(POSITIVE, est("rho", 0.6, 0.3, 0.8))["verdict"] == "coupling"
    assert verdict(POSITIVE, 0.6, rho_threshold=0.7)["verdict"] == "precondition not met"
    assert "ρ = 0.600 < 0.7" in verdict(POSITIVE, 0.6, rho_threshold=0.7)["text"]
    assert verdict(NEGATIVE, 0.5)["verdict"] == "no coupling"  # at the threshold: met
    out = verdict(POSITIVE, 0.4996)
    assert out["verdict"] == "precondition not met" and "0.4996 < 0.5" in out["text"]
    for undefined in (math.nan, None, est("rho", math.nan, math.nan, math.nan)):
        out = verdict(POSITIVE, undefined)
        assert out["verdict"] == "precondition not met" and out["precondition"]["rho"] is None
        assert "undefined" in out["text"]


def test_a_failed_control_withholds_the_verdict():
    bad = est("self.pearson", 0.21, 0.10, 0.30)
    out = verdict(POSITIVE, 0.82, control=bad)
    assert out["verdict"] == "withheld: control failed"
    assert out["control"] == {"metric": "self.pearson", "value": 0.21, "lo": 0.10, "hi": 0.30,
                              "passed": False}  # fmt: skip
    assert "excludes 0" in out["text"] and "ρ = 0.820 ≥ 0.5" in out["text"]
    # ... before the precondition is looked at.
    assert verdict(POSITIVE, 0.1, control=bad)["verdict"] == "withheld: control failed"
    assert verdict(POSITIVE, 0.82, control=est("s", -0.3, -0.4, -0.2))["verdict"].startswith(
        "withheld"
    )
    for undefined in (est("s", math.nan, math.nan, math.nan), est("s", 0.01, math.nan, math.nan)):
        out = verdict(POSITIVE, 0.82, control=undefined)
        assert out["verdict"] == "withheld: control failed" and not out["control"]["passed"]
    good = est("self.pearson", 0.02, -0.05, 0.09)
    out = verdict(POSITIVE, 0.82, control=good)
    assert out["verdict"] == "coupling" and out["control"]["passed"] is True
    assert verdict(POSITIVE, 0.3, control=good)["verdict"] == "precondition not met"


def test_verdict_checks_its_arguments():
    with pytest.raises(TypeError):
        verdict(0.1, 0.8)
    with pytest.raises(TypeError):
        verdict(POSITIVE, 0.8, control=0.0)
    with pytest.raises(ValueError, match="finite"):
        verdict(POSITIVE, 0.8, rho_threshold=math.nan)


# --------------------------------------------------------------------- determinism, module


def test_deterministic_for_a_seed():
    p, c, y = mixed(60, 13)
    records, _ = make_records()
    runs = [
        lambda s: coupling_index(p, c, y, n_boot=80, seed=s),
        lambda s: {"rho": rho(c, y, n_boot=80, seed=s)},
        lambda s: trajectory(records, n_boot=80, seed=s),
    ]
    for run in runs:
        first, again, other = run(5), run(5), run(6)
        assert first == again
        assert any(first[k].lo != other[k].lo for k in first if math.isfinite(first[k].lo))


def test_docstring_examples_run():
    result = doctest.testmod(decide, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0


def test_module_exports_and_imports_no_torch_at_top_level():
    assert set(decide.__all__) >= {"coupling_index", "rho", "trajectory", "verdict",
                                   "precondition"}  # fmt: skip
    assert all(hasattr(decide, name) for name in decide.__all__)
    tree = ast.parse(Path(decide.__file__).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and n.module}
    assert "torch" not in names and "numpy" in names
