"""Deciding whether an explainer is coupled to its model: ρ, the coupling index, the trajectory
and the verdict.

An explainer is trained on fixed labels ``y`` (the starting model's counterfactual effect Δ per
pair). At a checkpoint the current model's effect ``current`` is measured again, and the
explainer's predictions ``pred`` are compared with both: Self = agreement(pred, current),
Orig = agreement(pred, y), gap = Self − Orig (:func:`introspect.evaluation.metrics.coupling`).

**ρ** = Pearson r(current, y) says how much of the labels is still current behaviour. An
explainer that merely imitates its labels scores Self ≈ Orig · ρ, so where ρ is low Self < Orig
is forced and says nothing about coupling: the claim "Self > Orig" is only tested while ρ is
high enough (:func:`rho`, :func:`precondition`).

**The coupling index** standardises ``pred``, ``current`` and ``y`` over the pairs (z-scores:
mean removed, divided by the population standard deviation) and regresses
``z_pred = a · z_current + b · z_y`` by least squares; ``c = a / (a + b)``. c = 0 is pure
imitation of the labels, c = 1 pure tracking of current behaviour, c > 0.5 tracks current
behaviour more than it imitates the labels. c is not bounded to [0, 1]: a negative a or b puts
it outside. It is undefined (NaN) when one of the three is constant, when ``current`` and ``y``
are collinear (1 − ρ² below 1e-4, e.g. at the starting checkpoint or for a frozen model, where
current is the labels up to rounding) and when
a + b = 0 (:func:`coupling_index`).

**The trajectory** summarises one explainer over training checkpoints: the mean over
checkpoints of Self, Orig, gap, ρ and c, and the smallest ρ_t (:func:`trajectory`). Its
bootstrap resamples pairs jointly: one replicate draws the same pair ids at every checkpoint,
so the interval accounts for the pairs being shared across checkpoints.

**The verdict** (:func:`verdict`) applies, in order:

1. a shuffled-label control is given and its Self interval does not contain 0 (or it is
   undefined or has no interval): ``"withheld: control failed"``;
2. ρ (the point value) is below the threshold (default 0.5) or undefined:
   ``"precondition not met"`` (the claim was not tested);
3. the gap's interval lies above 0: ``"coupling"`` (Self > Orig);
4. the gap's interval lies below 0: ``"no coupling"`` (Self < Orig);
5. otherwise ``"inconclusive"``.

Intervals are percentile bootstrap intervals over pairs drawn by
:func:`~introspect.evaluation.metrics.bootstrap_indices`: for the same ``(n, n_boot, seed)``
every function here uses the resamples :func:`~introspect.evaluation.metrics.coupling` uses,
and replicates where a statistic is undefined are left out of its interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from introspect.evaluation.metrics import (
    DEFAULT_N_BOOT,
    Estimate,
    _check_boot,
    _check_lengths,
    _check_metrics,
    _interval,
    _kind,
    _paired,
    _pearson_rows,
    _stat_rows,
    _values,
)

__all__ = [
    "DEFAULT_RHO_THRESHOLD",
    "VERDICTS",
    "coupling_index",
    "precondition",
    "rho",
    "trajectory",
    "verdict",
]

DEFAULT_RHO_THRESHOLD = 0.5
VERDICTS = (
    "withheld: control failed",
    "precondition not met",
    "coupling",
    "no coupling",
    "inconclusive",
)

# A row whose standard deviation is at most this fraction of its largest magnitude is constant
# (to rounding); normal equations whose determinant is at most this fraction of the product of
# their diagonal are singular (current and labels collinear); and a + b is zero when it is at
# most this fraction of |a| + |b|. The determinant's fraction is 1 − ρ²: below 1e-4 (|ρ| above
# 0.99995, e.g. a frozen model, whose current Δ is its labels up to rounding) a and b cannot be
# told apart and c is undefined rather than a ratio of rounding errors.
_FLAT = 1e-12
_SINGULAR = 1e-4
_CANCEL = 1e-12


# ------------------------------------------------------------------------------------ inputs


def _scalar(what: str, **arrays: Any) -> tuple[list[np.ndarray], int]:
    vals = [_values(v, k) for k, v in arrays.items()]
    n = _check_lengths(**dict(zip(arrays, vals, strict=True)))
    if _kind(*vals) != "scalar":
        raise ValueError(f"{what} needs numbers (scalar Δ and predictions), got strings")
    return vals, n


def _shared(fn: Callable[[np.ndarray], Any]) -> Callable[[np.ndarray], Any]:
    """``fn`` computed once per resample: the statistics of one call all read the last result
    while :func:`_paired` hands them the same index array in turn."""
    last: list[Any] = [None, None]

    def get(idx: np.ndarray) -> Any:
        if last[0] is not idx:
            last[0], last[1] = idx, fn(idx)
        return last[1]

    return get


# ------------------------------------------------------------------- statistics, batched


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    """z-scores along each row of [B, n] (population sd); NaN rows where a row is constant."""
    d = x - x.mean(axis=1, keepdims=True)
    sd = np.sqrt(np.mean(d * d, axis=1, keepdims=True))
    varies = sd > _FLAT * np.max(np.abs(x), axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(varies, d / np.where(varies, sd, 1.0), np.nan)


def _fit_rows(
    p: np.ndarray, c: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, c) of ``z(p) = a·z(c) + b·z(y)`` for each row of [B, n] arrays, by the 2×2 normal
    equations; NaN where a row is constant, the system singular, or a + b = 0."""
    zp, zc, zy = _zscore_rows(p), _zscore_rows(c), _zscore_rows(y)
    dot = lambda u, v: np.einsum("ij,ij->i", u, v)
    scc, syy, scy = dot(zc, zc), dot(zy, zy), dot(zc, zy)
    scp, syp = dot(zc, zp), dot(zy, zp)
    det = scc * syy - scy * scy
    ok = det > _SINGULAR * scc * syy  # False for NaN too
    with np.errstate(invalid="ignore", divide="ignore"):
        safe = np.where(ok, det, 1.0)
        a = np.where(ok, (syy * scp - scy * syp) / safe, np.nan)
        b = np.where(ok, (scc * syp - scy * scp) / safe, np.nan)
        s = a + b
        whole = np.abs(s) > _CANCEL * (np.abs(a) + np.abs(b))
        ratio = np.where(whole, a / np.where(whole, s, 1.0), np.nan)
    return a, b, ratio


# --------------------------------------------------------------------------------- single


def coupling_index(
    pred: Any,
    current: Any,
    labels: Any,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """The coupling index: ``z(pred) = a·z(current) + b·z(labels)`` by least squares over the
    pairs, ``c = a / (a + b)`` (0: imitates the labels, 1: tracks current behaviour), keyed
    ``"coupling.a"``, ``"coupling.b"``, ``"coupling.c"``, with paired bootstrap intervals on the
    resamples :func:`~introspect.evaluation.metrics.coupling` uses. Undefined values are NaN.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y, now = rng.normal(size=200), rng.normal(size=200)
    >>> est = coupling_index(now + 0.01 * rng.normal(size=200), now, y, n_boot=50)
    >>> round(est["coupling.c"].value, 2)
    1.0
    """
    _check_boot(n_boot, level)
    (p, c, y), n = _scalar("coupling_index", pred=pred, current=current, labels=labels)
    fit = _shared(lambda i: _fit_rows(p[i], c[i], y[i]))
    stats = {f"coupling.{k}": (lambda i, j=j: fit(i)[j]) for j, k in enumerate("abc")}
    point, reps = _paired(stats, n, n_boot, seed)
    return {k: Estimate(k, point[k], *_interval(reps[k], level), n) for k in stats}


def rho(
    current: Any,
    labels: Any,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """ρ = Pearson r(current, labels), metric ``"rho"``, with a bootstrap interval on the
    resamples :func:`~introspect.evaluation.metrics.coupling` uses for the same pairs.

    >>> round(rho([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 4.0], n_boot=0).value, 3)
    0.983
    """
    _check_boot(n_boot, level)
    (c, y), n = _scalar("rho", current=current, labels=labels)
    point, reps = _paired({"rho": lambda i: _pearson_rows(c[i], y[i])}, n, n_boot, seed)
    return Estimate("rho", point["rho"], *_interval(reps["rho"], level), n)


def precondition(
    current: Any,
    labels: Any,
    *,
    threshold: float = DEFAULT_RHO_THRESHOLD,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Whether the claim can be tested on these labels: ρ0 = r(current, labels) with its
    interval, and ``met`` (the point ρ0 ≥ ``threshold``). For reporting before a run trains an
    explainer on labels from another model or checkpoint. Returns ``{"rho", "lo", "hi", "n",
    "threshold", "met", "text"}``; undefined numbers are ``None``.

    >>> precondition([0.0, 1.0, 2.0, 3.0], [3.0, 1.0, 2.0, 0.0], n_boot=0)["met"]
    False
    """
    t = _threshold(threshold)
    est = rho(current, labels, n_boot=n_boot, seed=seed, level=level)
    met = _met(est.value, t)
    if met:
        text = f"The precondition holds: {_rho_clause(est.value, t)}."
    else:
        text = (
            "The precondition does not hold: the labels are too weakly correlated with current "
            f"behaviour for the claim to be tested ({_rho_clause(est.value, t)})."
        )
    return {
        "rho": _clean(est.value),
        "lo": _clean(est.lo),
        "hi": _clean(est.hi),
        "n": est.n,
        "threshold": t,
        "met": met,
        "text": text,
    }


# ----------------------------------------------------------------------------- trajectory


def _by_checkpoint(
    records: Iterable[dict[str, Any]], checkpoints: Sequence[Any] | None
) -> tuple[list[Any], dict[Any, list[dict[str, Any]]]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    explainers: set[str] = set()
    for k, rec in enumerate(records):
        missing = {"checkpoint", "explainer", "id", "pred", "current", "label"} - set(rec)
        if missing:
            raise ValueError(f"prediction record {k} lacks {sorted(missing)}")
        explainers.add(str(rec["explainer"]))
        groups.setdefault(rec["checkpoint"], []).append(rec)
    if len(explainers) > 1:
        raise ValueError(f"trajectory takes the records of one explainer, got {sorted(explainers)}")
    if checkpoints is None:
        try:
            checkpoints = sorted(ck for ck in groups if ck > 0)
        except TypeError:
            raise ValueError(
                f"checkpoints {list(groups)} are not all numbers: pass checkpoints=[...]"
            ) from None
    else:
        checkpoints = list(checkpoints)
        absent = [ck for ck in checkpoints if ck not in groups]
        if absent:
            raise ValueError(f"no records at checkpoint(s) {absent}; present: {list(groups)}")
        if len(set(checkpoints)) != len(checkpoints):
            raise ValueError(f"checkpoints repeat: {checkpoints}")
    if not checkpoints:
        raise ValueError(f"no checkpoints to summarise (present: {list(groups)})")
    return checkpoints, groups


def _aligned_checkpoints(
    checkpoints: list[Any], groups: dict[Any, list[dict[str, Any]]]
) -> tuple[list[str], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Per checkpoint (pred, current, label) in one pair order: the first checkpoint's."""
    ids: list[str] = []
    arrays = []
    for ck in checkpoints:
        recs = groups[ck]
        order = [str(r["id"]) for r in recs]
        if len(set(order)) != len(order):
            dup = sorted({i for i in order if order.count(i) > 1})
            raise ValueError(f"checkpoint {ck!r}: pair ids repeat: {dup[:5]}")
        if not ids:
            ids = order
        elif set(order) != set(ids):
            lack = sorted(set(ids) - set(order))
            extra = sorted(set(order) - set(ids))
            raise ValueError(
                f"checkpoint {ck!r} has other pairs than checkpoint {checkpoints[0]!r}: "
                f"{len(lack)} missing (e.g. {lack[:3]}), {len(extra)} extra (e.g. {extra[:3]}); "
                "the trajectory needs the same pairs at every checkpoint"
            )
        where = {i: k for k, i in enumerate(order)}
        recs = [recs[where[i]] for i in ids]
        (p, c, y), _ = _scalar(
            f"trajectory (checkpoint {ck!r})",
            pred=[r["pred"] for r in recs],
            current=[r["current"] for r in recs],
            labels=[r["label"] for r in recs],
        )
        arrays.append((p, c, y))
    return ids, arrays


def trajectory(
    records: Iterable[dict[str, Any]],
    *,
    checkpoints: Sequence[Any] | None = None,
    metric: str = "pearson",
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Estimate]:
    """One explainer over training checkpoints, from its prediction records
    (``{checkpoint, explainer, id, pred, current, label}``, as
    :func:`~introspect.evaluation.metrics.prediction_records` makes them; scalar predictions).

    Over ``checkpoints`` (default: every checkpoint > 0 present, ascending) the mean over
    checkpoints of Self, Orig and the gap (by ``metric``: ``"pearson"`` or ``"spearman"``), of
    ρ_t and of the coupling index c_t (both always on values, by Pearson / least squares), keyed
    ``"trajectory.self.<metric>"``, ``"trajectory.orig.<metric>"``, ``"trajectory.gap.<metric>"``,
    ``"trajectory.rho"``, ``"trajectory.c"``; and ``"trajectory.rho_min"``, the smallest point ρ_t
    (no interval), the conservative ρ to hand :func:`verdict`. Every checkpoint must hold the
    same pair ids. The bootstrap draws pair ids once per replicate and uses them at every
    checkpoint, in the pair order of the first checkpoint's records (so one checkpoint gives the
    values and intervals :func:`~introspect.evaluation.metrics.coupling` gives on its records). A
    mean is undefined where one of its checkpoints is.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(size=50)
    >>> recs = [
    ...     {"checkpoint": t, "explainer": "probe", "id": str(i), "pred": float(p),
    ...      "current": float(c), "label": float(v)}
    ...     for t in (0, 1, 2)
    ...     for i, (p, c, v) in enumerate(zip(y + 0.1 * rng.normal(size=50),
    ...                                       y + t * rng.normal(size=50), y))
    ... ]
    >>> est = trajectory(recs, n_boot=20)
    >>> est["trajectory.gap.pearson"].value < 0 < est["trajectory.rho_min"].value
    True
    """
    _check_boot(n_boot, level)
    (metric,) = _check_metrics([metric], "scalar")
    checkpoints, groups = _by_checkpoint(records, checkpoints)
    ids, arrays = _aligned_checkpoints(checkpoints, groups)
    n = len(ids)

    def rows(i: np.ndarray) -> dict[str, np.ndarray]:
        per: dict[str, list[np.ndarray]] = {"self": [], "orig": [], "rho": [], "c": []}
        for p, c, y in arrays:
            pi, ci, yi = p[i], c[i], y[i]
            per["self"].append(_stat_rows(metric, pi, ci, -1))
            per["orig"].append(_stat_rows(metric, pi, yi, -1))
            per["rho"].append(_pearson_rows(ci, yi))
            per["c"].append(_fit_rows(pi, ci, yi)[2])
        return {k: np.mean(np.stack(v), axis=0) for k, v in per.items()}

    shared = _shared(rows)
    names = {
        f"trajectory.self.{metric}": "self",
        f"trajectory.orig.{metric}": "orig",
        "trajectory.rho": "rho",
        "trajectory.c": "c",
    }
    stats = {key: (lambda i, s=s: shared(i)[s]) for key, s in names.items()}
    point, reps = _paired(stats, n, n_boot, seed)
    est = lambda key, value, r: Estimate(key, value, *_interval(r, level), n)
    s_key, o_key = f"trajectory.self.{metric}", f"trajectory.orig.{metric}"
    g_key = f"trajectory.gap.{metric}"
    out = {
        s_key: est(s_key, point[s_key], reps[s_key]),
        o_key: est(o_key, point[o_key], reps[o_key]),
        g_key: est(g_key, point[s_key] - point[o_key], reps[s_key] - reps[o_key]),
        "trajectory.rho": est("trajectory.rho", point["trajectory.rho"], reps["trajectory.rho"]),
        "trajectory.c": est("trajectory.c", point["trajectory.c"], reps["trajectory.c"]),
    }
    rho_t = [float(_pearson_rows(c[None, :], y[None, :])[0]) for _, c, y in arrays]
    out["trajectory.rho_min"] = Estimate(
        "trajectory.rho_min", float(np.min(rho_t)), math.nan, math.nan, n
    )
    return out


# -------------------------------------------------------------------------------- verdict


def _clean(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _threshold(t: float) -> float:
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"rho_threshold must be a finite number, got {t}")
    return t


def _met(r: float, t: float) -> bool:
    return math.isfinite(r) and r >= t


def _num(v: float, near: float | None = None) -> str:
    """Three decimals; more where three would make ``v`` read as equal to ``near``."""
    s = f"{v:.3f}"
    if near is not None and v != near and float(s) == near:
        s = f"{v:.6g}"
    return s


def _rho_clause(r: float, t: float) -> str:
    if not math.isfinite(r):
        return f"ρ is undefined, threshold {t:g}"
    return f"ρ = {_num(r, t)} {'≥' if r >= t else '<'} {t:g}"


def _est_text(e: Estimate) -> str:
    if not math.isfinite(e.value):
        return "undefined"
    if not (math.isfinite(e.lo) and math.isfinite(e.hi)):
        return f"{_num(e.value)} (no interval)"
    return f"{_num(e.value)} [{_num(e.lo)}, {_num(e.hi)}]"


def _rho_value(r: Estimate | float | None) -> float:
    if r is None:
        return math.nan
    if isinstance(r, Estimate):
        return float(r.value)
    return float(r)


def verdict(
    gap: Estimate,
    rho: Estimate | float | None,
    *,
    rho_threshold: float = DEFAULT_RHO_THRESHOLD,
    control: Estimate | None = None,
) -> dict[str, Any]:
    """The verdict on Self > Orig from a gap estimate, ρ (an :class:`Estimate`, whose point value
    is used, or a number; for a :func:`trajectory`, its ``"trajectory.rho_min"``) and optionally
    the shuffled-label control's Self estimate. Rules, in order: control given and its interval
    not containing 0 (or undefined) → ``"withheld: control failed"``; ρ < ``rho_threshold`` or
    undefined → ``"precondition not met"``; gap.lo > 0 → ``"coupling"``; gap.hi < 0 →
    ``"no coupling"``; else ``"inconclusive"``.

    Returns ``{"verdict", "precondition": {"rho", "threshold", "met"}, "control": {"metric",
    "value", "lo", "hi", "passed"} or None, "text"}``, undefined numbers as ``None``.

    >>> from introspect.evaluation.metrics import Estimate
    >>> verdict(Estimate("gap.pearson", 0.12, 0.05, 0.19, 200), 0.82)["verdict"]
    'coupling'
    >>> verdict(Estimate("gap.pearson", -0.2, -0.35, -0.06, 192), 0.364)["verdict"]
    'precondition not met'
    """
    if not isinstance(gap, Estimate):
        raise TypeError(f"gap must be an Estimate, got {type(gap).__name__}")
    if control is not None and not isinstance(control, Estimate):
        raise TypeError(f"control must be an Estimate or None, got {type(control).__name__}")
    t = _threshold(rho_threshold)
    r = _rho_value(rho)
    met = _met(r, t)
    pre = {"rho": _clean(r), "threshold": t, "met": met}
    clause = _rho_clause(r, t)
    gap_text = f"Self − Orig = {_est_text(gap)}"

    ctrl = None
    if control is not None:
        passed = (
            math.isfinite(control.value)
            and math.isfinite(control.lo)
            and math.isfinite(control.hi)
            and control.lo <= 0.0 <= control.hi
        )
        ctrl = {
            "metric": control.metric,
            "value": _clean(control.value),
            "lo": _clean(control.lo),
            "hi": _clean(control.hi),
            "passed": passed,
        }
        if not passed:
            why = (
                "is undefined"
                if not math.isfinite(control.value)
                else "has no interval"
                if not (math.isfinite(control.lo) and math.isfinite(control.hi))
                else "excludes 0"
            )
            text = (
                f"Withheld: the shuffled-label control's Self ({_est_text(control)}) {why}, "
                f"where it should be indistinguishable from 0, so {gap_text} is not interpreted "
                f"({clause})."
            )
            return {"verdict": VERDICTS[0], "precondition": pre, "control": ctrl, "text": text}

    if not met:
        name, text = (
            VERDICTS[1],
            (
                "Not tested: the labels are too weakly correlated with current behaviour for the "
                f"claim to apply ({clause}), so {gap_text} says nothing about coupling."
            ),
        )
    elif gap.lo > 0:
        name, text = (
            VERDICTS[2],
            (
                f"Coupling: Self exceeds Orig, {gap_text} lies above 0, with the precondition met "
                f"({clause})."
            ),
        )
    elif gap.hi < 0:
        name, text = (
            VERDICTS[3],
            (
                f"No coupling: Self falls short of Orig, {gap_text} lies below 0, with the "
                f"precondition met ({clause})."
            ),
        )
    else:
        name, text = (
            VERDICTS[4],
            (
                f"Inconclusive: {gap_text} does not lie clear of 0, with the precondition met "
                f"({clause})."
            ),
        )
    return {"verdict": name, "precondition": pre, "control": ctrl, "text": text}
