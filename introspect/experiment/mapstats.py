"""The statistics of the coupling map: a hierarchical bootstrap over seeds and pairs, one-sided
bootstrap p-values, Holm's correction, and the reference curves of a pure imitator and a pure
tracker.

**Hierarchical bootstrap.** The points pooled in a cell (checkpoints of runs) are grouped in
*units*: the runs of one seed share their held-out pairs (a seed draws the pairs), so a unit is
one seed's pair set with every point measured on it. One replicate draws as many units as there
are, with replacement; each drawn copy of a unit draws its pairs anew, with replacement, and the
same pair draw is used by every point of that unit (the pairs are shared across its runs and
checkpoints). The replicate's statistic is the mean over the points of the drawn copies. The
point value is the mean over all points on all pairs. Per-point statistics (ρ_t, Self, Orig,
gap, c) are the evaluation's own (:mod:`introspect.evaluation.decide`,
:mod:`introspect.evaluation.metrics`), computed on the resampled pairs; replicates where a
statistic is undefined at some point leave that point out of the replicate's mean.

**The coupling index of a set of points** is the ratio of its pooled coefficients, not the mean
of the points' ratios: each point's fit ``z(pred) = a·z(current) + b·z(labels)`` gives ``a`` and
``b``; their means ``A`` and ``B`` (over the points, or over a replicate's drawn copies) give
``c = A / (A + B)``, undefined where ``A + B <= 0`` (the explainer fits neither its labels nor the
current behaviour). A point whose own ``a + b`` is near 0 has an arbitrarily large ratio, which
would dominate a mean of ratios; it adds only its small coefficients to ``A`` and ``B``.

Everything is deterministic for ``seed``: the unit draws come first, then, unit by unit in the
order given and copy by copy, the pair draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from introspect.evaluation.decide import _fit_rows
from introspect.evaluation.metrics import _interval, _pearson_rows, _stat_rows

__all__ = [
    "POINT_STATS",
    "Point",
    "Unit",
    "bootstrap_p",
    "hierarchical_bootstrap",
    "holm",
    "imitator_gap",
    "pooled_c",
    "tracker_gap",
]


@dataclass(frozen=True)
class Point:
    """One checkpoint of one explainer in one run: predictions, current Δ and labels over the
    unit's pairs, in the unit's pair order."""

    pred: np.ndarray
    current: np.ndarray
    label: np.ndarray


@dataclass(frozen=True)
class Unit:
    """The points measured on one pair set (one seed's held-out pairs)."""

    key: str
    points: tuple[Point, ...]

    @property
    def n_pairs(self) -> int:
        return len(self.points[0].pred)


def _self(p, c, y):
    return _stat_rows("pearson", p, c, None)


def _orig(p, c, y):
    return _stat_rows("pearson", p, y, None)


POINT_STATS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "rho": lambda p, c, y: _pearson_rows(c, y),
    "self": _self,
    "orig": _orig,
    "gap": lambda p, c, y: _self(p, c, y) - _orig(p, c, y),
    "a": lambda p, c, y: _fit_rows(p, c, y)[0],
    "b": lambda p, c, y: _fit_rows(p, c, y)[1],
}
"""The per-point statistics, each of [B, n] rows of (pred, current, labels): ρ_t (Pearson of
current and labels), Self and Orig (Pearson), gap = Self − Orig, and the coefficients a and b of
the coupling fit. The coupling index ``c`` of a set of points is derived from the means of a and
b (see the module docstring)."""

STATS = (*POINT_STATS, "c")
"""Every statistic :func:`hierarchical_bootstrap` computes."""


def pooled_c(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """``A / (A + B)`` of pooled coefficients, NaN where ``A + B <= 0`` or either is NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, a / np.where(s > 0, s, 1.0), np.nan)


def _unit_sums(
    unit: Unit, idx: np.ndarray, stats: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per statistic, the sum over the unit's points of its value in each row of ``idx`` [B,
    n], and how many of them are defined."""
    out = {}
    for s in stats:
        f = POINT_STATS[s]
        vals = np.stack([f(pt.pred[idx], pt.current[idx], pt.label[idx]) for pt in unit.points])
        ok = np.isfinite(vals)
        out[s] = (np.where(ok, vals, 0.0).sum(axis=0), ok.sum(axis=0))
    return out


def hierarchical_bootstrap(
    units: Sequence[Unit],
    stats: Sequence[str] = ("rho", "self", "orig", "gap", "c"),
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(point, replicates)``: per statistic, the mean over every point of every unit, and its
    ``n_boot`` hierarchical-bootstrap replicates (NaN where no point was defined)."""
    units = [u for u in units if u.points]
    if not units:
        raise ValueError("no points to bootstrap")
    bad = [s for s in stats if s not in STATS]
    if bad:
        raise ValueError(f"unknown statistics {bad}; known: {list(STATS)}")
    wanted = tuple(stats)
    if "c" in wanted:  # derived from the pooled coefficients
        stats = tuple(dict.fromkeys(s for s in (*wanted, "a", "b") if s != "c"))
    point = {}
    for s in stats:
        vals = np.concatenate(
            [
                POINT_STATS[s](*(np.asarray(a, dtype=np.float64)[None, :] for a in (
                    pt.pred, pt.current, pt.label)))
                for u in units
                for pt in u.points
            ]
        )  # fmt: skip
        ok = np.isfinite(vals)
        point[s] = float(vals[ok].mean()) if ok.any() else math.nan
    if "c" in wanted:
        point["c"] = float(pooled_c(point["a"], point["b"]))
    if n_boot <= 0:
        return point, {s: np.empty(0) for s in (*stats, *(("c",) if "c" in wanted else ()))}
    rng = np.random.default_rng(seed)
    k = len(units)
    draws = rng.integers(0, k, size=(n_boot, k))
    copies = np.stack([(draws == u).sum(axis=1) for u in range(k)])  # [k, B]
    total = {s: np.zeros(n_boot) for s in stats}
    count = {s: np.zeros(n_boot) for s in stats}
    for u, unit in enumerate(units):
        for r in range(int(copies[u].max())):
            idx = rng.integers(0, unit.n_pairs, size=(n_boot, unit.n_pairs))
            use = copies[u] > r  # replicates that drew this unit more than r times
            for s, (tot, cnt) in _unit_sums(unit, idx, stats).items():
                total[s] += np.where(use, tot, 0.0)
                count[s] += np.where(use, cnt, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = {
            s: np.where(count[s] > 0, total[s] / np.maximum(count[s], 1), np.nan) for s in stats
        }
    if "c" in wanted:
        reps["c"] = pooled_c(reps["a"], reps["b"])
    return point, reps


def interval(reps: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the defined replicates (NaN, NaN when none is)."""
    return _interval(reps, level)


def bootstrap_p(reps: np.ndarray, null: float, direction: str) -> float:
    """One-sided percentile-bootstrap p-value of "the statistic is above ``null``"
    (``direction="greater"``) or below it (``"less"``): (1 + the number of defined replicates
    on the other side of ``null``, or on it) / (1 + the number of defined replicates). It is
    the smallest α at which the one-sided percentile interval of level 1 − α excludes ``null``
    (up to the +1s, which keep it above 0). NaN when no replicate is defined."""
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return math.nan
    if direction == "greater":
        against = int(np.sum(ok <= null))
    elif direction == "less":
        against = int(np.sum(ok >= null))
    else:
        raise ValueError(f"direction is 'greater' or 'less', got {direction!r}")
    return (1 + against) / (1 + ok.size)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: with the m p-values sorted
    ascending, p̃_(i) = max over j ≤ i of min(1, (m − j + 1)·p_(j)). Rejecting where p̃ ≤ α
    controls the family-wise error rate at α. A NaN p-value (an endpoint without data) is
    left out of m and stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return [float(v) for v in out]


def imitator_gap(rho: np.ndarray | float, orig: float) -> np.ndarray:
    """The gap of an explainer that only imitates its labels: Self ≈ Orig·ρ, so
    gap = Orig·(ρ − 1)."""
    return orig * (np.asarray(rho, dtype=np.float64) - 1.0)


def tracker_gap(rho: np.ndarray | float, self_: float) -> np.ndarray:
    """The gap of an explainer that only tracks current behaviour: Orig ≈ Self·ρ, so
    gap = Self·(1 − ρ)."""
    return self_ * (1.0 - np.asarray(rho, dtype=np.float64))
