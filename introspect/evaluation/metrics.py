"""Agreement metrics with paired bootstrap intervals; Self, Orig and their gap.

For an explainer's predictions ``pred`` on N pairs:

- **Self** = agreement of ``pred`` with the *current* model's behaviour (its Δ, re-extracted at
  this checkpoint, or its current categorical label);
- **Orig** = agreement of ``pred`` with the fixed training labels;
- **gap** = Self − Orig. Self > Orig is introspective coupling.

Scalar labels are compared by Pearson (through :func:`introspect.ops.pearson`) and Spearman
(Pearson of average ranks); categorical labels (verbal explanations) by:

- ``exact_match``: the fraction of pairs whose labels are equal;
- ``kappa``: Cohen's kappa (exact match corrected for the agreement the two label distributions
  give by chance: 0 is chance, 1 perfect; undefined when both sides are one and the same constant
  label);
- ``changed_precision``, ``changed_recall``, ``changed_f1`` and ``unchanged_precision``,
  ``unchanged_recall``, ``unchanged_f1``: precision, recall and F1 of each of the two classes. A
  label is *unchanged* when it is ``"unchanged"`` or starts with ``"remain:"``; every other label
  (a choice, ``"toward"``, ``"unparsed"``, ``"change:(B)"``, ...) is *changed*. Precision is
  undefined when ``pred`` has no pair of the class, recall when the target has none, F1 when
  neither has;
- ``content_match``: the fraction of pairs whose label's content equals the target's. Labels of
  the form ``"remain:<choice>"`` / ``"change:<choice>"`` (the verbal explainer's precursor style)
  carry the content ``<choice>`` (the text after the first ``":"``); a pair where either side
  carries none does not match. Undefined when no label on either side carries content.

The default categorical metrics are ``exact_match``, ``kappa`` and ``changed_f1``
(:data:`DEFAULT_CATEGORICAL_METRICS`), and, when any label of the call carries content, every
metric above (:data:`CONTENT_CATEGORICAL_METRICS`). Intervals are percentile
bootstrap intervals over pairs: each replicate draws N pairs with replacement (seeded), and every
statistic of one call — Self, Orig and so the gap — is computed on the same draws (paired).
Replicates where a statistic is undefined (e.g. a constant resample) are left out of its
interval.

Rows for ``metrics.jsonl`` are dicts ``{checkpoint, explainer, metric, value, lo, hi, n}`` with
``metric`` in ``"self.<m>"``, ``"orig.<m>"``, ``"gap.<m>"`` (undefined values are ``None``). The
per-pair records they come from (``prediction_records``) are enough to recompute them exactly
(:func:`recompute_metrics`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BINS",
    "CATEGORICAL_METRICS",
    "CONTENT_CATEGORICAL_METRICS",
    "CONTENT_KINDS",
    "DEFAULT_CATEGORICAL_METRICS",
    "DEFAULT_N_BOOT",
    "METRICS",
    "SCALAR_METRICS",
    "UNCHANGED",
    "Estimate",
    "agreement",
    "bin_delta",
    "bootstrap_indices",
    "changed_f1",
    "cohen_kappa",
    "content_match",
    "coupling",
    "exact_match",
    "label_content",
    "metric_rows",
    "pearson_r",
    "prediction_records",
    "rankdata",
    "read_jsonl",
    "recompute_metrics",
    "spearman_r",
    "write_jsonl",
]

SCALAR_METRICS = ("pearson", "spearman")
CATEGORICAL_METRICS = (
    "exact_match",
    "kappa",
    "changed_precision",
    "changed_recall",
    "changed_f1",
    "unchanged_precision",
    "unchanged_recall",
    "unchanged_f1",
    "content_match",
)
"""Every categorical metric, in the order rows are written."""
DEFAULT_CATEGORICAL_METRICS = ("exact_match", "kappa", "changed_f1")
"""The categorical metrics computed by default for labels that carry no content."""
CONTENT_CATEGORICAL_METRICS = CATEGORICAL_METRICS
"""The categorical metrics computed by default when a label carries content."""
METRICS = SCALAR_METRICS + CATEGORICAL_METRICS
UNCHANGED = "unchanged"
CONTENT_KINDS = ("remain", "change")
"""The kinds of label that carry content: ``"<kind>:<choice>"``."""
_REMAIN = "remain:"
BINS = ("unchanged", "toward", "away")
DEFAULT_N_BOOT = 1000
_CHUNK_ELEMENTS = 1 << 20


# ------------------------------------------------------------------------------------ inputs


def _values(a: Any, what: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().double().numpy()
    if hasattr(a, "align") and hasattr(a, "ids"):
        raise TypeError(
            f"{what}: got labels keyed by pair id; align them to the predictions' ids first "
            "(labels.align(ids)), or use prediction_records"
        )
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be 1-D (one value per pair), got shape {arr.shape}")
    if arr.dtype.kind in "fiu":
        arr = arr.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"{what}: {bad.size} value(s) are not finite (at {bad[:5].tolist()}); "
                "remove those pairs explicitly"
            )
        return arr
    if arr.dtype.kind == "b":
        raise ValueError(f"{what}: boolean values are ambiguous; use labels such as 'changed'")
    items = arr.tolist()
    for i, v in enumerate(items):
        if not isinstance(v, str):
            raise ValueError(
                f"{what}: values must be all numbers or all strings; item {i} is {v!r}"
            )
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _kind(*arrays: np.ndarray) -> str:
    kinds = {"categorical" if a.dtype == object else "scalar" for a in arrays}
    if len(kinds) > 1:
        raise ValueError("cannot compare numbers with strings: give all scalar or all categorical")
    return kinds.pop()


def label_content(label: Any) -> str | None:
    """The content of a label of the form ``"<kind>:<choice>"`` (kind in :data:`CONTENT_KINDS`,
    a non-empty choice): the text after the first ``":"``; None for any other label."""
    if not isinstance(label, str):
        return None
    kind, sep, rest = label.partition(":")
    return rest if sep and kind in CONTENT_KINDS and rest else None


@dataclass(frozen=True)
class _Vocab:
    """Per integer code of a label vocabulary: whether the label is in the unchanged class, and
    the code of its content (-1 where it carries none)."""

    unchanged: np.ndarray
    content: np.ndarray

    @property
    def has_content(self) -> bool:
        return bool((self.content >= 0).any())


def _encode(arrays: Sequence[np.ndarray], unchanged: str) -> tuple[list[np.ndarray], _Vocab]:
    """Integer codes over the union vocabulary (``unchanged`` always in it), and what each code
    stands for: the unchanged class is ``unchanged`` and every label starting ``"remain:"``."""
    vocab = sorted(set().union(*(set(a.tolist()) for a in arrays)) | {unchanged})
    where = {v: i for i, v in enumerate(vocab)}
    codes = [np.fromiter((where[v] for v in a), dtype=np.int64, count=len(a)) for a in arrays]
    contents = [label_content(v) for v in vocab]
    content_vocab = {c: i for i, c in enumerate(sorted({c for c in contents if c is not None}))}
    info = _Vocab(
        unchanged=np.array([v == unchanged or v.startswith(_REMAIN) for v in vocab], dtype=bool),
        content=np.array([-1 if c is None else content_vocab[c] for c in contents], np.int64),
    )
    return codes, info


def _check_lengths(**arrays: np.ndarray) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs must have one value per pair each; lengths {lengths}")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ValueError("no pairs to evaluate")
    return n


# ------------------------------------------------------------------- statistics, batched


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson of each row pair of [B, n] float64 arrays (NaN where a row is constant)."""
    import torch

    from introspect.ops import pearson

    ta, tb = (
        torch.from_numpy(np.ascontiguousarray(a.T)),
        torch.from_numpy(np.ascontiguousarray(b.T)),
    )
    return pearson(ta, tb).numpy().astype(np.float64)


def _ranks_rows(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) along each row of [B, n]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a))
    s = torch.sort(t, dim=1).values
    lo = torch.searchsorted(s, t, right=False)
    hi = torch.searchsorted(s, t, right=True)
    return ((lo + hi + 1).to(torch.float64) / 2).numpy()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den row-wise, NaN where den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _class_rows(metric: str, p_in: np.ndarray, t_in: np.ndarray) -> np.ndarray:
    """Precision, recall or F1 (``metric`` ends in ``_precision``/``_recall``/``_f1``) of each row
    of [B, n] class-membership masks of the predictions and the targets."""
    tp = (p_in & t_in).sum(1)
    fp = (p_in & ~t_in).sum(1)
    fn = (~p_in & t_in).sum(1)
    if metric.endswith("_precision"):
        return _ratio(tp, tp + fp)
    if metric.endswith("_recall"):
        return _ratio(tp, tp + fn)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _stat_rows(metric: str, p: np.ndarray, t: np.ndarray, vocab: _Vocab | None) -> np.ndarray:
    """``metric`` of each row pair of [B, n] arrays (float64 values, or integer codes of the
    label vocabulary ``vocab``)."""
    if metric == "pearson":
        return _pearson_rows(p, t)
    if metric == "spearman":
        return _pearson_rows(_ranks_rows(p), _ranks_rows(t))
    if metric == "exact_match":
        return (p == t).mean(axis=1)
    if metric == "kappa":
        # In integer counts, so that chance-level agreement (e.g. a constant answer) is exactly
        # 0: kappa = (n·agreements − Σ_k cp_k·ct_k) / (n² − Σ_k cp_k·ct_k).
        k = int(max(p.max(), t.max())) + 1
        n = p.shape[1]
        agree = (p == t).sum(axis=1).astype(np.int64)
        rows = np.arange(p.shape[0])[:, None]
        cp = np.zeros((p.shape[0], k), dtype=np.int64)
        ct = np.zeros((p.shape[0], k), dtype=np.int64)
        np.add.at(cp, (rows, p), 1)
        np.add.at(ct, (rows, t), 1)
        chance = (cp * ct).sum(axis=1)
        num, den = n * agree - chance, n * n - chance
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.maximum(den, 1), np.nan)
    if metric in ("changed_precision", "changed_recall", "changed_f1"):
        return _class_rows(metric, ~vocab.unchanged[p], ~vocab.unchanged[t])
    if metric in ("unchanged_precision", "unchanged_recall", "unchanged_f1"):
        return _class_rows(metric, vocab.unchanged[p], vocab.unchanged[t])
    if metric == "content_match":
        cp, ct = vocab.content[p], vocab.content[t]
        match = ((cp == ct) & (ct >= 0)).sum(1)
        carried = ((cp >= 0) | (ct >= 0)).any(1)
        return np.where(carried, match / p.shape[1], np.nan)
    raise ValueError(f"unknown metric {metric!r}; known: {METRICS}")


def _check_metrics(
    metrics: Sequence[str] | None, kind: str, content: bool = False
) -> tuple[str, ...]:
    """The metrics to compute (``metrics``, checked; None: the defaults for ``kind``, and for
    categorical labels whether any carries ``content``)."""
    allowed = SCALAR_METRICS if kind == "scalar" else CATEGORICAL_METRICS
    if metrics is None:
        if kind == "scalar":
            metrics = SCALAR_METRICS
        else:
            metrics = CONTENT_CATEGORICAL_METRICS if content else DEFAULT_CATEGORICAL_METRICS
    metrics = tuple(metrics)
    bad = [m for m in metrics if m not in allowed]
    if bad or not metrics:
        raise ValueError(f"metrics {bad or list(metrics)} do not apply to {kind} labels: {allowed}")
    return metrics


# ----------------------------------------------------------------------------- point values


def pearson_r(x: Any, y: Any) -> float:
    """Pearson correlation of two 1-D sequences (NaN when one is constant)."""
    x, y = _values(x, "x"), _values(y, "y")
    _check_lengths(x=x, y=y)
    return float(_pearson_rows(x[None, :], y[None, :])[0])


def rankdata(x: Any) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their ranks)."""
    x = _values(x, "x")
    return _ranks_rows(x[None, :])[0]


def spearman_r(x: Any, y: Any) -> float:
    """Spearman correlation: the Pearson correlation of average ranks."""
    x, y = _values(x, "x"), _values(y, "y")
    _check_lengths(x=x, y=y)
    return float(_stat_rows("spearman", x[None, :], y[None, :], None)[0])


def exact_match(pred: Any, target: Any) -> float:
    """Fraction of pairs whose predicted label equals the target label."""
    (p, t), u = _encode([_values(pred, "pred"), _values(target, "target")], UNCHANGED)
    _check_lengths(pred=p, target=t)
    return float(_stat_rows("exact_match", p[None, :], t[None, :], u)[0])


def cohen_kappa(pred: Any, target: Any) -> float:
    """Cohen's kappa: (observed agreement − chance agreement) / (1 − chance agreement), chance
    from the two label distributions. NaN when both are the same single label."""
    (p, t), u = _encode([_values(pred, "pred"), _values(target, "target")], UNCHANGED)
    _check_lengths(pred=p, target=t)
    return float(_stat_rows("kappa", p[None, :], t[None, :], u)[0])


def changed_f1(pred: Any, target: Any, *, unchanged: str = UNCHANGED) -> float:
    """F1 of the "changed" class: a pair is changed when its label is neither ``unchanged`` nor
    starts with ``"remain:"``. NaN when neither side has a changed pair."""
    (p, t), u = _encode([_values(pred, "pred"), _values(target, "target")], unchanged)
    _check_lengths(pred=p, target=t)
    return float(_stat_rows("changed_f1", p[None, :], t[None, :], u)[0])


def content_match(pred: Any, target: Any) -> float:
    """Fraction of pairs whose label's content (:func:`label_content`) equals the target's;
    NaN when no label carries content."""
    (p, t), u = _encode([_values(pred, "pred"), _values(target, "target")], UNCHANGED)
    _check_lengths(pred=p, target=t)
    return float(_stat_rows("content_match", p[None, :], t[None, :], u)[0])


def bin_delta(delta: Any, threshold: float) -> np.ndarray:
    """Δ → ``"unchanged"`` (|Δ| ≤ threshold), ``"toward"`` (Δ > threshold: without the feature
    the model favours the target more) or ``"away"`` (Δ < −threshold); an object array."""
    d = _values(delta, "delta")
    if d.dtype == object:
        raise ValueError("delta must be numeric")
    if not (math.isfinite(threshold) and threshold >= 0):
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold}")
    out = np.full(d.shape[0], BINS[0], dtype=object)
    out[d > threshold] = BINS[1]
    out[d < -threshold] = BINS[2]
    return out


# -------------------------------------------------------------------------------- bootstrap


def bootstrap_indices(n: int, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The resamples, as [B_chunk, n] int64 index arrays (B_chunk rows per chunk, n_boot rows in
    all). Deterministic for ``(n, n_boot, seed)``."""
    if n < 1:
        raise ValueError("bootstrapping needs at least one pair")
    rng = np.random.default_rng(seed)
    per = max(1, min(n_boot, _CHUNK_ELEMENTS // n))
    done = 0
    while done < n_boot:
        b = min(per, n_boot - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval (``lo``/``hi`` NaN when it has none)."""

    metric: str
    value: float
    lo: float
    hi: float
    n: int

    def row(self, checkpoint: Any, explainer: str) -> dict[str, Any]:
        """A ``metrics.jsonl`` row; undefined numbers become ``None``."""
        clean = lambda v: float(v) if math.isfinite(v) else None
        return {
            "checkpoint": checkpoint,
            "explainer": explainer,
            "metric": self.metric,
            "value": clean(self.value),
            "lo": clean(self.lo),
            "hi": clean(self.hi),
            "n": int(self.n),
        }


def _paired(
    stats: dict[str, Callable[[np.ndarray], np.ndarray]], n: int, n_boot: int, seed: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    ident = np.arange(n)[None, :]
    point = {k: float(f(ident)[0]) for k, f in stats.items()}
    reps: dict[str, list[np.ndarray]] = {k: [] for k in stats}
    if n_boot > 0:
        for idx in bootstrap_indices(n, n_boot, seed):
            for k, f in stats.items():
                reps[k].append(f(idx))
    return point, {k: np.concatenate(v) if v else np.empty(0) for k, v in reps.items()}


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    ok = reps[np.isfinite(reps)]
    if ok.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2
    lo, hi = np.quantile(ok, [a, 1.0 - a])
    return float(lo), float(hi)


def _check_boot(n_boot: int, level: float) -> None:
    if int(n_boot) < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")


def agreement(
    pred: Any,
    target: Any,
    metric: str,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """One agreement statistic between ``pred`` and ``target`` with its bootstrap interval."""
    _check_boot(n_boot, level)
    p, t = _values(pred, "pred"), _values(target, "target")
    n = _check_lengths(pred=p, target=t)
    kind = _kind(p, t)
    (metric,) = _check_metrics([metric], kind)
    u = None
    if kind == "categorical":
        (p, t), u = _encode([p, t], UNCHANGED)
    point, reps = _paired({metric: lambda i: _stat_rows(metric, p[i], t[i], u)}, n, n_boot, seed)
    return Estimate(metric, point[metric], *_interval(reps[metric], level), n)


def coupling(
    pred: Any,
    current: Any,
    labels: Any,
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
    unchanged: str = UNCHANGED,
) -> dict[str, Estimate]:
    """Self (``pred`` vs ``current``), Orig (``pred`` vs ``labels``) and gap = Self − Orig for
    each metric (default: Pearson and Spearman for numbers; for strings exact match, kappa and
    changed-F1, or every categorical metric when any label carries content), keyed
    ``"self.<m>"``, ``"orig.<m>"``, ``"gap.<m>"``, with paired intervals."""
    _check_boot(n_boot, level)
    p = _values(pred, "pred")
    c = _values(current, "current")
    y = _values(labels, "labels")
    n = _check_lengths(pred=p, current=c, labels=y)
    kind = _kind(p, c, y)
    u = None
    if kind == "categorical":
        (p, c, y), u = _encode([p, c, y], unchanged)
    metrics = _check_metrics(metrics, kind, u is not None and u.has_content)
    stats: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for m in metrics:
        stats[f"self.{m}"] = lambda i, m=m: _stat_rows(m, p[i], c[i], u)
        stats[f"orig.{m}"] = lambda i, m=m: _stat_rows(m, p[i], y[i], u)
    point, reps = _paired(stats, n, n_boot, seed)
    out: dict[str, Estimate] = {}
    for m in metrics:
        for side in ("self", "orig"):
            key = f"{side}.{m}"
            out[key] = Estimate(key, point[key], *_interval(reps[key], level), n)
        key = f"gap.{m}"
        gap = point[f"self.{m}"] - point[f"orig.{m}"]
        out[key] = Estimate(key, gap, *_interval(reps[f"self.{m}"] - reps[f"orig.{m}"], level), n)
    return out


def metric_rows(
    pred: Any,
    current: Any,
    labels: Any,
    *,
    checkpoint: Any,
    explainer: str,
    metrics: Sequence[str] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """:func:`coupling` as ``metrics.jsonl`` rows (self, orig, gap for each metric)."""
    est = coupling(pred, current, labels, metrics=metrics, n_boot=n_boot, seed=seed, level=level)
    return [e.row(checkpoint, explainer) for e in est.values()]


# ------------------------------------------------------------------ saved predictions, files


def _aligned(values: Any, ids: Sequence[str], what: str) -> list[Any]:
    if hasattr(values, "align") and hasattr(values, "ids"):
        values = values.align(ids)
    arr = _values(values, what)
    if len(arr) != len(ids):
        raise ValueError(f"{what}: {len(arr)} values for {len(ids)} ids")
    return arr.tolist()


def prediction_records(
    ids: Sequence[str],
    pred: Any,
    current: Any,
    labels: Any,
    *,
    checkpoint: Any,
    explainer: str,
) -> list[dict[str, Any]]:
    """Per-pair records ``{checkpoint, explainer, id, pred, current, label}`` from which
    :func:`recompute_metrics` rebuilds the metric rows. ``current`` and ``labels`` may be
    :class:`~introspect.labels.Labels` (aligned to ``ids`` by pair id) or arrays in ``ids``
    order."""
    ids = [str(i) for i in ids]
    p = _aligned(pred, ids, "pred")
    c = _aligned(current, ids, "current")
    y = _aligned(labels, ids, "labels")
    return [
        {"checkpoint": checkpoint, "explainer": explainer, "id": i, "pred": a, "current": b,
         "label": t}
        for i, a, b, t in zip(ids, p, c, y, strict=True)
    ]  # fmt: skip


def recompute_metrics(
    predictions: str | os.PathLike | Iterable[dict[str, Any]],
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Metric rows recomputed from prediction records (a JSONL file or the records), one group
    per (checkpoint, explainer) in order of first appearance, pairs in record order."""
    if isinstance(predictions, str | os.PathLike):
        predictions = read_jsonl(predictions)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    keys: dict[tuple[str, str], tuple[Any, str]] = {}
    for k, rec in enumerate(predictions):
        missing = {"checkpoint", "explainer", "pred", "current", "label"} - set(rec)
        if missing:
            raise ValueError(f"prediction record {k} lacks {sorted(missing)}")
        key = (json.dumps(rec["checkpoint"]), str(rec["explainer"]))
        groups.setdefault(key, []).append(rec)
        keys[key] = (rec["checkpoint"], str(rec["explainer"]))
    rows: list[dict[str, Any]] = []
    for key, recs in groups.items():
        checkpoint, explainer = keys[key]
        rows.extend(
            metric_rows(
                [r["pred"] for r in recs],
                [r["current"] for r in recs],
                [r["label"] for r in recs],
                checkpoint=checkpoint,
                explainer=explainer,
                metrics=metrics,
                n_boot=n_boot,
                seed=seed,
                level=level,
            )
        )
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *, append: bool = False):
    """Writes (or appends) one JSON object per line; NaN and infinity are refused."""
    path = Path(path)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The objects of a JSONL file; a malformed line is an error naming it. A file whose name
    ends in ``.gz`` is read through gzip, and ``NAME.jsonl`` is read from ``NAME.jsonl.gz`` when
    only the compressed file exists (committed results keep their predictions compressed)."""
    import gzip

    path = Path(path)
    if path.suffix != ".gz" and path.name and not path.exists():
        packed = path.with_name(path.name + ".gz")
        path = packed if packed.is_file() else path
    out = []
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object")
            out.append(obj)
    return out
