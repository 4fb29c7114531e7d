"""Fixed training labels: Δ from a source run, aligned by pair id; label noise and shuffling.

The labels an explainer trains on come from a *source* model (the model before concurrent
training, an earlier checkpoint, or another family) and stay fixed while the current model
changes. They are tied to pair ids, never to row positions, so a run whose rows come in another
order (or hold more pairs) still gets the right label for each pair::

    labels = labels_from_run("runs/m0", ids=open_run("runs/m1").ids)   # Δ of m0 per pair id
    noisy = apply_noise(labels, p=0.3, seed=0)                        # 30% resampled
    control = shuffle_labels(labels, seed=0)                          # no signal left

Labels are scalar (float64, e.g. Δ) or categorical (strings, e.g. "changed"/"unchanged").
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from introspect._io import write_json_atomic
from introspect.errors import IntrospectError

__all__ = [
    "LabelError",
    "Labels",
    "NoisyLabels",
    "apply_noise",
    "labels_from_run",
    "load_labels",
    "save_labels",
    "shuffle_labels",
]

_FIELDS = ("delta", "f_x", "f_mod")
_SHOW = 5


class LabelError(IntrospectError, ValueError):
    """Labels that do not fit the pairs they are used with (messages name the pair ids)."""


def _show(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:_SHOW])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > _SHOW else "")


def _as_values(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise LabelError(f"labels must be one value per pair (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "fiu":
        return arr.astype(np.float64)
    if arr.dtype.kind == "b":
        raise LabelError("boolean labels are ambiguous: use strings such as 'changed'")
    out = np.empty(arr.shape[0], dtype=object)
    for i, v in enumerate(arr.tolist()):
        if not isinstance(v, str):
            raise LabelError(
                f"labels must be all numbers or all strings; item {i} is {type(v).__name__}"
            )
        out[i] = v
    return out


@dataclass(frozen=True, eq=False)
class Labels:
    """One label per pair id. ``values`` is float64 (scalar) or an object array of str
    (categorical); ``source`` describes where the labels come from."""

    ids: tuple[str, ...]
    values: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.ids)
        values = _as_values(self.values)
        if len(ids) != values.shape[0]:
            raise LabelError(f"{len(ids)} ids but {values.shape[0]} label values")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = [i for i in ids if i in seen or seen.add(i)]
            raise LabelError(f"duplicate pair ids in the labels: {_show(dup)}")
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "source", dict(self.source))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        """``"scalar"`` or ``"categorical"``."""
        return "categorical" if self.values.dtype == object else "scalar"

    def index(self) -> dict[str, int]:
        return {i: k for k, i in enumerate(self.ids)}

    def positions(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each of ``ids`` in these labels; :class:`LabelError` names ids without one."""
        where = self.index()
        missing = [i for i in ids if i not in where]
        if missing:
            src = self.source.get("path") or self.source.get("model") or "the labels"
            raise LabelError(f"{len(missing)} pair id(s) have no label in {src}: {_show(missing)}")
        return np.fromiter((where[i] for i in ids), dtype=np.int64, count=len(ids))

    def align(self, ids: Sequence[str]) -> np.ndarray:
        """The label values in the order of ``ids`` (a new array)."""
        return self.values[self.positions(list(ids))]

    def select(self, ids: Sequence[str]) -> Labels:
        """These labels restricted to (and ordered like) ``ids``."""
        ids = list(ids)
        return Labels(tuple(ids), self.align(ids), self.source)

    def replace(self, values: Any) -> Labels:
        """The same ids with new values."""
        return Labels(self.ids, values, self.source)


def labels_from_run(run: Any, ids: Sequence[str] | None = None, *, field: str = "delta") -> Labels:
    """Labels from a source run (a ``Run`` or its path): Δ per pair id (or ``f_x``/``f_mod``),
    in the run's order, or aligned to ``ids`` (every one of them must be in the run)."""
    from introspect.run import open_run

    if field not in _FIELDS:
        raise ValueError(f"field must be one of {_FIELDS}, got {field!r}")
    if isinstance(run, str | os.PathLike):
        run = open_run(run)
    source = {
        "path": str(run.path),
        "model": run.model_id,
        "weights_hash": run.weights_hash,
        "field": field,
    }
    labels = Labels(tuple(run.ids), np.asarray(getattr(run, field), dtype=np.float64), source)
    return labels if ids is None else labels.select(ids)


class NoisyLabels(NamedTuple):
    labels: Any
    """The labels with ``replaced`` entries resampled (same type as the input)."""
    replaced: np.ndarray
    """Sorted int64 indices of the replaced entries."""


def _unwrap(labels: Any) -> tuple[np.ndarray, Labels | None]:
    if isinstance(labels, Labels):
        return labels.values, labels
    return _as_values(labels), None


def apply_noise(labels: Any, p: float, seed: int) -> NoisyLabels:
    """Replaces ``round(p·N)`` labels (halves round up), chosen without replacement, by draws
    from the empirical label distribution (uniform over all N original labels, with
    replacement). Deterministic for a seed; a draw may coincide with the value it replaces."""
    values, wrapped = _unwrap(labels)
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"the noise fraction p must lie in [0, 1], got {p}")
    n = values.shape[0]
    k = int(np.floor(float(p) * n + 0.5))
    rng = np.random.default_rng(seed)
    replaced = np.sort(rng.choice(n, size=k, replace=False)) if k else np.empty(0, np.int64)
    out = values.copy()
    if k:
        out[replaced] = values[rng.integers(0, n, size=k)]
    noisy = wrapped.replace(out) if wrapped is not None else out
    if wrapped is not None:
        noisy.source.update(noise={"p": float(p), "seed": int(seed), "replaced": int(k)})
    return NoisyLabels(noisy, replaced.astype(np.int64))


def shuffle_labels(labels: Any, seed: int) -> Any:
    """A seeded permutation of the label values over the same ids (a no-signal control)."""
    values, wrapped = _unwrap(labels)
    out = values[np.random.default_rng(seed).permutation(values.shape[0])]
    if wrapped is None:
        return out
    shuffled = wrapped.replace(out)
    shuffled.source.update(shuffled={"seed": int(seed)})
    return shuffled


def save_labels(labels: Labels, path: str | os.PathLike) -> Path:
    """Writes labels as JSON (``source``, ``kind``, ``ids``, ``values``), atomically."""
    path = Path(path)
    values = labels.values.tolist()
    if labels.kind == "scalar" and not np.isfinite(labels.values).all():
        values = [v if np.isfinite(v) else None for v in values]
    doc = {"source": labels.source, "kind": labels.kind, "ids": list(labels.ids), "values": values}
    write_json_atomic(path, doc)
    return path


def load_labels(path: str | os.PathLike) -> Labels:
    """Reads labels written by :func:`save_labels`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such labels file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LabelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or not {"ids", "values"} <= set(doc):
        raise LabelError(f"{path}: not a labels file (needs 'ids' and 'values')")
    values = doc["values"]
    if doc.get("kind") == "scalar":
        values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    try:
        return Labels(tuple(doc["ids"]), values, doc.get("source") or {})
    except LabelError as e:
        raise LabelError(f"{path}: {e}") from None
