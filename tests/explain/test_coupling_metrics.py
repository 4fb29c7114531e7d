"""Self / Orig / gap and their paired bootstrap intervals against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from explain_synth import pearson_by_hand
from hypothesis import given
from hypothesis import strategies as st

from introspect.evaluation import (
    BINS,
    CATEGORICAL_METRICS,
    DEFAULT_CATEGORICAL_METRICS,
    agreement,
    bin_delta,
    bootstrap_indices,
    changed_f1,
    cohen_kappa,
    content_match,
    coupling,
    exact_match,
    label_content,
    metric_rows,
    pearson_r,
    prediction_records,
    rankdata,
    read_jsonl,
    recompute_metrics,
    spearman_r,
    write_jsonl,
)
from introspect.labels import Labels


def ranks_by_hand(a):
    a = [float(v) for v in a]
    order = sorted(range(len(a)), key=lambda i: a[i])
    ranks = [0.0] * len(a)
    i = 0
    while i < len(a):
        j = i
        while j + 1 < len(a) and a[order[j + 1]] == a[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_by_hand(a, b):
    return pearson_by_hand(ranks_by_hand(a), ranks_by_hand(b))


def percentile_by_hand(values, q):
    v = sorted(values)
    h = (len(v) - 1) * q
    lo = math.floor(h)
    return v[lo] + (h - lo) * (v[min(lo + 1, len(v) - 1)] - v[lo])


def f1_by_hand(pred, target):
    tp = sum(p != "unchanged" and t != "unchanged" for p, t in zip(pred, target, strict=True))
    fp = sum(p != "unchanged" and t == "unchanged" for p, t in zip(pred, target, strict=True))
    fn = sum(p == "unchanged" and t != "unchanged" for p, t in zip(pred, target, strict=True))
    return 2 * tp / (2 * tp + fp + fn)


def scalar_triplet(n=30, seed=0):
    rng = np.random.default_rng(seed)
    cur = rng.normal(size=n)
    lab = 0.6 * cur + 0.8 * rng.normal(size=n)
    pred = np.round(0.8 * cur + 0.2 * lab + 0.4 * rng.normal(size=n), 1)  # ties for Spearman
    return pred, cur, lab


def test_point_values_match_hand_computation():
    pred, cur, lab = scalar_triplet()
    est = coupling(pred, cur, lab, n_boot=0)
    assert est["self.pearson"].value == pytest.approx(pearson_by_hand(pred, cur), abs=1e-12)
    assert est["orig.pearson"].value == pytest.approx(pearson_by_hand(pred, lab), abs=1e-12)
    gap = pearson_by_hand(pred, cur) - pearson_by_hand(pred, lab)
    assert est["gap.pearson"].value == pytest.approx(gap, abs=1e-12)
    assert est["self.spearman"].value == pytest.approx(spearman_by_hand(pred, cur), abs=1e-12)
    assert est["orig.spearman"].value == pytest.approx(spearman_by_hand(pred, lab), abs=1e-12)
    assert est["self.pearson"].value > est["orig.pearson"].value
    assert all(e.n == 30 for e in est.values())
    assert math.isnan(est["self.pearson"].lo)
    assert rankdata(pred).tolist() == ranks_by_hand(pred)
    assert pearson_r(pred, cur) == pytest.approx(pearson_by_hand(pred, cur), abs=1e-12)
    assert spearman_r(pred, lab) == pytest.approx(spearman_by_hand(pred, lab), abs=1e-12)


def test_paired_bootstrap_intervals_match_hand_resampling():
    pred, cur, lab = scalar_triplet(n=25, seed=1)
    est = coupling(pred, cur, lab, n_boot=40, seed=3, level=0.9)
    idx = np.concatenate(list(bootstrap_indices(25, 40, 3)))
    assert idx.shape == (40, 25)
    reps = {"self": [], "orig": [], "self_s": [], "orig_s": []}
    for row in idx:
        reps["self"].append(pearson_by_hand(pred[row], cur[row]))
        reps["orig"].append(pearson_by_hand(pred[row], lab[row]))
        reps["self_s"].append(spearman_by_hand(pred[row], cur[row]))
        reps["orig_s"].append(spearman_by_hand(pred[row], lab[row]))
    gap = [a - b for a, b in zip(reps["self"], reps["orig"], strict=True)]
    gap_s = [a - b for a, b in zip(reps["self_s"], reps["orig_s"], strict=True)]
    for key, values in [
        ("self.pearson", reps["self"]),
        ("orig.pearson", reps["orig"]),
        ("gap.pearson", gap),
        ("self.spearman", reps["self_s"]),
        ("gap.spearman", gap_s),
    ]:
        assert est[key].lo == pytest.approx(percentile_by_hand(values, 0.05), abs=1e-10), key
        assert est[key].hi == pytest.approx(percentile_by_hand(values, 0.95), abs=1e-10), key
    again = coupling(pred, cur, lab, n_boot=40, seed=3, level=0.9)
    assert again == est
    other = coupling(pred, cur, lab, n_boot=40, seed=4, level=0.9)
    assert other["self.pearson"].lo != est["self.pearson"].lo


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40))
def test_ranks_with_ties_match_hand_ranks(values):
    assert rankdata(values).tolist() == ranks_by_hand(values)


@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=30), st.integers(0, 2**31))
def test_spearman_is_invariant_to_monotone_maps(values, seed):
    if len(set(values)) < 2:
        values = [*values, max(values) + 1]
    y = np.random.default_rng(seed).normal(size=len(values))
    x = np.asarray(values, dtype=np.float64)
    r = spearman_r(x, y)
    assert r == pytest.approx(spearman_by_hand(x, y), abs=1e-9)
    assert spearman_r(np.exp(x / 100), y) == pytest.approx(r, abs=1e-9)
    assert spearman_r(-x, y) == pytest.approx(-r, abs=1e-9)


def test_interval_covers_the_truth_on_a_large_sample():
    rng = np.random.default_rng(5)
    x = rng.normal(size=2000)
    y = 0.5 * x + math.sqrt(1 - 0.25) * rng.normal(size=2000)
    e = agreement(x, y, "pearson", n_boot=300, seed=0)
    assert e.lo < 0.5 < e.hi and e.lo < e.value < e.hi and e.hi - e.lo < 0.1


def test_categorical_metrics_match_hand_computation():
    rng = np.random.default_rng(2)
    vocab = np.array(["unchanged", "changed", "toward", "away"], dtype=object)
    cur = vocab[rng.integers(0, 4, size=40)]
    lab = vocab[rng.integers(0, 4, size=40)]
    pred = np.where(rng.random(40) < 0.7, cur, lab)
    est = coupling(pred, cur, lab, n_boot=30, seed=1)
    assert set(est) == {f"{s}.{m}" for s in ("self", "orig", "gap")
                        for m in ("exact_match", "kappa", "changed_f1")}  # fmt: skip
    assert est["self.kappa"].value == pytest.approx(kappa_by_hand(pred, cur))
    assert est["orig.kappa"].value == pytest.approx(kappa_by_hand(pred, lab))
    em_self = sum(p == c for p, c in zip(pred, cur, strict=True)) / 40
    assert est["self.exact_match"].value == pytest.approx(em_self)
    assert est["self.changed_f1"].value == pytest.approx(f1_by_hand(pred, cur))
    assert est["orig.changed_f1"].value == pytest.approx(f1_by_hand(pred, lab))
    assert exact_match(pred, lab) == pytest.approx(
        sum(p == t for p, t in zip(pred, lab, strict=True)) / 40
    )
    assert changed_f1(pred, cur) == pytest.approx(f1_by_hand(pred, cur))
    idx = np.concatenate(list(bootstrap_indices(40, 30, 1)))
    reps = [f1_by_hand(pred[r], cur[r]) - f1_by_hand(pred[r], lab[r]) for r in idx]
    assert est["gap.changed_f1"].lo == pytest.approx(percentile_by_hand(reps, 0.025))
    assert est["gap.changed_f1"].hi == pytest.approx(percentile_by_hand(reps, 0.975))


def kappa_by_hand(pred, target) -> float:
    n = len(pred)
    observed = sum(p == t for p, t in zip(pred, target, strict=True)) / n
    labels = set(pred) | set(target)
    chance = sum(
        (sum(p == k for p in pred) / n) * (sum(t == k for t in target) / n) for k in labels
    )
    return (observed - chance) / (1 - chance)


def test_cohen_kappa_by_hand_and_at_its_limits():
    # 10 pairs: 7 agree; pred has 6 "toward" 4 "unchanged", target 5 and 5:
    # chance = 0.6 * 0.5 + 0.4 * 0.5 = 0.5, kappa = (0.7 - 0.5) / 0.5 = 0.4.
    pred = ["toward"] * 6 + ["unchanged"] * 4
    target = ["toward"] * 4 + ["unchanged"] * 2 + ["unchanged"] * 3 + ["toward"]
    assert cohen_kappa(pred, target) == pytest.approx(0.4)
    assert cohen_kappa(pred, pred) == pytest.approx(1.0)
    # A constant answer agrees with the majority but carries no information: kappa 0.
    target = ["unchanged"] * 8 + ["away"] * 2
    assert cohen_kappa(["unchanged"] * 10, target) == 0.0  # exactly, not merely close
    assert cohen_kappa(["toward"] * 7, ["away", "toward", "unchanged"] * 2 + ["away"]) == 0.0
    assert math.isnan(cohen_kappa(["away"] * 4, ["away"] * 4))


def test_changed_f1_is_undefined_without_changed_pairs():
    assert math.isnan(changed_f1(["unchanged"] * 3, ["unchanged"] * 3))
    assert changed_f1(["changed", "unchanged"], ["unchanged", "changed"]) == 0.0


def test_bin_delta():
    d = np.array([-0.5, -0.1, 0.0, 0.1, 0.1000001, 2.0])
    assert bin_delta(d, 0.1).tolist() == ["away", "unchanged", "unchanged", "unchanged",
                                          "toward", "toward"]  # fmt: skip
    assert set(bin_delta(d, 0.0).tolist()) <= set(BINS)
    with pytest.raises(ValueError, match="threshold"):
        bin_delta(d, -1.0)


def test_rows_recompute_exactly_from_saved_predictions(tmp_path):
    ids = [f"p{i}" for i in range(30)]
    rows, records = [], []
    for step in (0, 100):
        pred, cur, lab = scalar_triplet(seed=step)
        rows += metric_rows(pred, cur, lab, checkpoint=step, explainer="probe", n_boot=50, seed=2)
        order = np.random.default_rng(step).permutation(30)
        cur_labels = Labels(tuple(ids[i] for i in order), cur[order])
        records += prediction_records(
            ids, pred, cur_labels, lab, checkpoint=step, explainer="probe"
        )
    path = write_jsonl(tmp_path / "predictions.jsonl", records[:30])
    write_jsonl(path, records[30:], append=True)
    again = recompute_metrics(path, n_boot=50, seed=2)
    assert again == rows
    assert len(rows) == 12
    assert set(rows[0]) == {"checkpoint", "explainer", "metric", "value", "lo", "hi", "n"}
    assert [r["metric"] for r in rows[:3]] == ["self.pearson", "orig.pearson", "gap.pearson"]
    write_jsonl(tmp_path / "metrics.jsonl", rows)
    assert read_jsonl(tmp_path / "metrics.jsonl") == rows


def test_bad_inputs_are_refused_clearly(tmp_path):
    pred, cur, lab = scalar_triplet()
    bad = cur.copy()
    bad[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"current: 2 value\(s\) are not finite \(at \[3, 7\]\)"):
        coupling(pred, bad, lab)
    with pytest.raises(TypeError, match="align them"):
        coupling(pred, Labels(tuple(map(str, range(30))), cur), lab)
    with pytest.raises(ValueError, match="cannot compare numbers with strings"):
        coupling(pred, cur, ["changed"] * 30)
    with pytest.raises(ValueError, match="lengths"):
        coupling(pred, cur[:-1], lab)
    with pytest.raises(ValueError, match="do not apply"):
        coupling(pred, cur, lab, metrics=["exact_match"])
    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2"):
        read_jsonl(tmp_path / "broken.jsonl")


# ------------------------------------------------------------- classes and content (precursor)

ALL_CATEGORICAL = (
    "exact_match", "kappa", "changed_precision", "changed_recall", "changed_f1",
    "unchanged_precision", "unchanged_recall", "unchanged_f1", "content_match",
)  # fmt: skip


def unchanged_by_hand(label) -> bool:
    return label == "unchanged" or label.startswith("remain:")


def class_by_hand(metric, pred, target) -> float:
    """Precision, recall or F1 of the class ``metric`` names, by counting (NaN when undefined)."""
    want = metric.startswith("unchanged")
    p = [unchanged_by_hand(v) == want for v in pred]
    t = [unchanged_by_hand(v) == want for v in target]
    tp = sum(a and b for a, b in zip(p, t, strict=True))
    fp = sum(a and not b for a, b in zip(p, t, strict=True))
    fn = sum(b and not a for a, b in zip(p, t, strict=True))
    num, den = {"precision": (tp, tp + fp), "recall": (tp, tp + fn),
                "f1": (2 * tp, 2 * tp + fp + fn)}[metric.rsplit("_", 1)[1]]  # fmt: skip
    return num / den if den else math.nan


def content_by_hand(pred, target) -> float:
    def content(v):
        kind, _, rest = v.partition(":")
        return rest if kind in ("remain", "change") and rest else None

    cp, ct = [content(v) for v in pred], [content(v) for v in target]
    if all(c is None for c in cp + ct):
        return math.nan
    return sum(a is not None and a == b for a, b in zip(cp, ct, strict=True)) / len(pred)


def by_hand(metric, pred, target) -> float:
    if metric == "exact_match":
        return sum(a == b for a, b in zip(pred, target, strict=True)) / len(pred)
    if metric == "kappa":
        return kappa_by_hand(pred, target)
    if metric == "content_match":
        return content_by_hand(pred, target)
    return class_by_hand(metric, pred, target)


PRED = ["remain:(A)", "change:(B)", "change:(A)", "remain:(B)", "unparsed", "change:(B)"]
GOLD = ["remain:(A)", "change:(A)", "remain:(A)", "remain:(B)", "change:(B)", "change:(B)"]


def test_class_and_content_metrics_on_a_small_example():
    # changed: pred [0 1 1 0 1 1], target [0 1 0 0 1 1]: tp 3, fp 1, fn 0.
    # unchanged: pred [1 0 0 1 0 0], target [1 0 1 1 0 0]: tp 2, fp 0, fn 1.
    # content: (A)=(A), (B)≠(A), (A)=(A), (B)=(B), none≠(B), (B)=(B): 4 of 6.
    want = {
        "exact_match": 3 / 6,
        "changed_precision": 3 / 4,
        "changed_recall": 1.0,
        "changed_f1": 6 / 7,
        "unchanged_precision": 1.0,
        "unchanged_recall": 2 / 3,
        "unchanged_f1": 4 / 5,
        "content_match": 4 / 6,
    }
    for metric, value in want.items():
        assert agreement(PRED, GOLD, metric, n_boot=0).value == pytest.approx(value), metric
    assert content_match(PRED, GOLD) == pytest.approx(4 / 6)
    assert changed_f1(PRED, GOLD) == pytest.approx(6 / 7)
    assert label_content("remain:(A)") == "(A)" and label_content("change:a:b") == "a:b"
    assert [label_content(v) for v in ("unchanged", " (A)", "remain:", "stay:(A)", "12:30")] == [
        None, None, None, None, None,
    ]  # fmt: skip
    # Undefined: precision without predicted members, recall without target members.
    assert math.isnan(agreement(["change:(A)"] * 3, ["remain:(A)", "change:(B)", "change:(A)"],
                                "unchanged_precision", n_boot=0).value)  # fmt: skip
    assert math.isnan(agreement(["remain:(A)"] * 2, ["remain:(A)"] * 2, "changed_recall",
                                n_boot=0).value)  # fmt: skip
    assert math.isnan(content_match(["unchanged", " (A)"], [" (A)", " (A)"]))
    assert content_match(["unparsed"], ["remain:(A)"]) == 0.0


def test_default_metric_sets_by_content():
    rng = np.random.default_rng(3)
    plain = np.array(["unchanged", " (A)", " (B)", "unparsed", "12:30", "remain:"], dtype=object)
    p, c, y = (plain[rng.integers(0, 6, 20)] for _ in range(3))
    est = coupling(p, c, y, n_boot=0)
    assert DEFAULT_CATEGORICAL_METRICS == ("exact_match", "kappa", "changed_f1")
    assert list(est) == [f"{s}.{m}" for m in ("exact_match", "kappa", "changed_f1")
                         for s in ("self", "orig", "gap")]  # fmt: skip
    y = y.copy()
    y[4] = "change:(A)"
    est = coupling(p, c, y, n_boot=0)
    assert CATEGORICAL_METRICS == ALL_CATEGORICAL
    assert list(est) == [f"{s}.{m}" for m in ALL_CATEGORICAL for s in ("self", "orig", "gap")]
    asked = coupling(p, c, plain[rng.integers(0, 6, 20)], metrics=["content_match"], n_boot=5)
    assert all(math.isnan(e.value) and math.isnan(e.lo) for e in asked.values())


def test_class_and_content_bootstrap_rows_equal_hand_values_on_the_resamples():
    from introspect.evaluation.metrics import _encode, _stat_rows

    rng = np.random.default_rng(4)
    vocab = np.array(["remain:(A)", "remain:(B)", "change:(A)", "change:(B)", "unparsed",
                      "unchanged"], dtype=object)  # fmt: skip
    n = 7  # small: some resamples lack a class, so some values are undefined
    cur = vocab[rng.integers(0, 6, n)]
    lab = vocab[rng.integers(0, 6, n)]
    pred = np.where(rng.random(n) < 0.6, cur, vocab[rng.integers(0, 6, n)])
    idx = np.concatenate(list(bootstrap_indices(n, 60, 2)))
    (p, c), info = _encode([pred, cur], "unchanged")
    nan_seen = set()
    for m in ALL_CATEGORICAL:
        rows = _stat_rows(m, p[idx], c[idx], info)
        hand = np.array([by_hand(m, list(pred[r]), list(cur[r])) for r in idx])
        np.testing.assert_allclose(rows, hand, rtol=0, atol=1e-12, equal_nan=True, err_msg=m)
        if np.isnan(hand).any():
            nan_seen.add(m)
    assert nan_seen  # undefined values are compared too

    est = coupling(pred, cur, lab, n_boot=60, seed=2, level=0.9)
    for m in ALL_CATEGORICAL:
        assert est[f"self.{m}"].value == pytest.approx(
            by_hand(m, list(pred), list(cur)), nan_ok=True
        )
        assert est[f"orig.{m}"].value == pytest.approx(
            by_hand(m, list(pred), list(lab)), nan_ok=True
        )
        gaps = [by_hand(m, list(pred[r]), list(cur[r])) - by_hand(m, list(pred[r]), list(lab[r]))
                for r in idx]  # fmt: skip
        gaps = [g for g in gaps if not math.isnan(g)]
        assert est[f"gap.{m}"].lo == pytest.approx(percentile_by_hand(gaps, 0.05)), m
        assert est[f"gap.{m}"].hi == pytest.approx(percentile_by_hand(gaps, 0.95)), m
