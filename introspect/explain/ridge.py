"""Closed-form ridge regression from streamed sufficient statistics, with k-fold CV over λ.

The objective, for standardised features z = (x − μ) / σ (μ, σ of the training rows)::

    (1/n) Σ (y − z·β − b)²  +  λ ‖β‖²          (the intercept b is not penalised)

solved in float64 through one eigendecomposition of the standardised covariance per fit, which
gives the solution for every λ of the grid at once. Statistics are accumulated per fold
(count, Σx, Σy, ΣxxT, Σxy, Σy², shifted by a reference point for accuracy), so data of any N is
read once, in chunks, and held in O(k·D²) memory; the training statistics of a fold are the
total minus that fold's, and its validation error follows from its own statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["DEFAULT_LAMBDAS", "RidgeFit", "RidgeStats", "feature_scale", "fit_ridge", "fold_ids"]

DEFAULT_LAMBDAS: tuple[float, ...] = tuple(float(10.0**e) for e in np.arange(-6.0, 3.5, 0.5))
"""λ grid on the mean-squared-error scale with standardised features: 1e-6 … 1e3."""


def fold_ids(n: int, k: int, seed: int = 0) -> np.ndarray:
    """Balanced, seeded fold index in [0, k) for each of n rows (sizes differ by at most 1)."""
    if k < 1:
        raise ValueError(f"the number of folds must be >= 1, got {k}")
    out = np.empty(n, dtype=np.int64)
    out[np.random.default_rng(seed).permutation(n)] = np.arange(n) % k
    return out


@dataclass
class RidgeFit:
    """A fitted ridge model in the raw feature space: ``pred = x · weight + bias``."""

    weight: np.ndarray
    """[D] float64 slopes on the raw (unstandardised) features."""
    bias: float
    lam: float
    """The λ used (chosen by CV when several were given)."""
    lambdas: tuple[float, ...]
    cv_mse: np.ndarray | None
    """Pooled k-fold validation MSE per λ (None when a single λ was given)."""
    mean: np.ndarray
    """[D] feature means of the training rows."""
    scale: np.ndarray
    """[D] feature scales used for standardisation (ones without it)."""
    n: int

    def predict(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x @ self.weight + self.bias


def feature_scale(sd: np.ndarray) -> np.ndarray:
    """The scales that standardise features with standard deviations ``sd``: ``sd`` itself, and 1
    for columns that are constant (below 1e-10 of the largest)."""
    tiny = 1e-10 * sd.max() if sd.size else 0.0
    return np.where(sd > tiny, sd, 1.0)


class _Moments:
    """Raw moments of shifted data for one fold."""

    _FIELDS = ("n", "sx", "sy", "sxx", "sxy", "syy")

    def __init__(self, d: int):
        self.n = 0
        self.sx = np.zeros(d)
        self.sy = 0.0
        self.sxx = np.zeros((d, d))
        self.sxy = np.zeros(d)
        self.syy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += float(y.sum())
        self.sxx += x.T @ x
        self.sxy += x.T @ y
        self.syy += float(y @ y)

    def minus(self, other: _Moments) -> _Moments:
        out = _Moments(0)
        for f in self._FIELDS:
            setattr(out, f, getattr(self, f) - getattr(other, f))
        return out

    @staticmethod
    def total(parts: list[_Moments]) -> _Moments:
        out = _Moments(0)
        for f in _Moments._FIELDS:
            setattr(out, f, sum(getattr(p, f) for p in parts))
        return out


def _solve_grid(m: _Moments, lambdas: np.ndarray, standardize: bool):
    """Slopes [L, D] and intercepts [L] (shifted coordinates) for each λ, plus μ and σ."""
    n = m.n
    mu = m.sx / n
    ybar = m.sy / n
    cov = m.sxx / n - np.outer(mu, mu)
    cov = (cov + cov.T) / 2
    cxy = m.sxy / n - mu * ybar
    if standardize:
        var = np.clip(np.diag(cov), 0.0, None)
        sd = np.sqrt(var)
        scale = feature_scale(sd)
    else:
        scale = np.ones_like(mu)
    cs = cov / np.outer(scale, scale)
    bs = cxy / scale
    evals, evecs = np.linalg.eigh(cs)
    evals = np.clip(evals, 0.0, None)
    proj = evecs.T @ bs
    beta = (proj[None, :] / (evals[None, :] + lambdas[:, None])) @ evecs.T
    slopes = beta / scale
    intercepts = ybar - slopes @ mu
    return slopes, intercepts, mu, scale


def _sse(m: _Moments, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Σ (y − x·a − b)² over the rows of ``m``, for each (a, b) pair, from the moments alone."""
    quad = np.einsum("ld,de,le->l", slopes, m.sxx, slopes)
    return (
        m.syy
        - 2.0 * slopes @ m.sxy
        - 2.0 * intercepts * m.sy
        + quad
        + 2.0 * intercepts * (slopes @ m.sx)
        + m.n * intercepts**2
    )


class RidgeStats:
    """Accumulates ridge statistics chunk by chunk; :meth:`solve` fits.

    ``folds`` is the number of CV folds; every :meth:`add` then gives each row's fold.
    """

    def __init__(self, dim: int, folds: int = 1):
        if folds < 1:
            raise ValueError(f"folds must be >= 1, got {folds}")
        self.dim = int(dim)
        self.folds = int(folds)
        self._parts = [_Moments(self.dim) for _ in range(self.folds)]
        self._shift_x: np.ndarray | None = None
        self._shift_y = 0.0

    @property
    def n(self) -> int:
        return sum(p.n for p in self._parts)

    def add(self, x: Any, y: Any, fold: Any = None) -> None:
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be [rows, {self.dim}], got {x.shape}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
        if x.shape[0] == 0:
            return
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("ridge: features and labels must be finite")
        if self._shift_x is None:
            self._shift_x = x.mean(0)
            self._shift_y = float(y.mean())
        xs = x - self._shift_x
        ys = y - self._shift_y
        if self.folds == 1:
            self._parts[0].add(xs, ys)
            return
        if fold is None:
            raise ValueError(f"add: give each row's fold (0..{self.folds - 1})")
        fold = np.asarray(fold).reshape(-1)
        if fold.shape[0] != x.shape[0] or fold.min() < 0 or fold.max() >= self.folds:
            raise ValueError(f"fold must hold one index in [0, {self.folds}) per row")
        for f in range(self.folds):
            sel = fold == f
            if sel.any():
                self._parts[f].add(xs[sel], ys[sel])

    def solve(self, lambdas: Any = DEFAULT_LAMBDAS, *, standardize: bool = True) -> RidgeFit:
        """Fits on all rows with the λ of the grid that has the lowest pooled CV error (with a
        single λ, no CV is run). Ties go to the larger λ."""
        lams = np.asarray(list(lambdas), dtype=np.float64).reshape(-1)
        if lams.size == 0 or not (np.isfinite(lams).all() and (lams > 0).all()):
            raise ValueError(f"lambdas must be a non-empty list of positive numbers, got {lambdas}")
        total = _Moments.total(self._parts)
        if total.n < 2:
            raise ValueError(f"ridge needs at least 2 rows, got {total.n}")
        cv_mse = None
        best = 0
        if lams.size > 1:
            if self.folds < 2:
                raise ValueError("choosing λ by cross-validation needs folds >= 2")
            sizes = [p.n for p in self._parts]
            if min(sizes) < 1 or total.n - max(sizes) < 2:
                raise ValueError(f"every fold needs rows (and 2 outside it); fold sizes {sizes}")
            sse = np.zeros(lams.size)
            for part in self._parts:
                slopes, intercepts, _, _ = _solve_grid(total.minus(part), lams, standardize)
                sse += _sse(part, slopes, intercepts)
            cv_mse = sse / total.n
            best = int(np.flatnonzero(cv_mse <= cv_mse.min())[-1])
        slopes, intercepts, mu, scale = _solve_grid(total, lams[best : best + 1], standardize)
        weight = slopes[0]
        shift = self._shift_x if self._shift_x is not None else np.zeros(self.dim)
        bias = float(intercepts[0] + self._shift_y - shift @ weight)
        return RidgeFit(
            weight=weight,
            bias=bias,
            lam=float(lams[best]),
            lambdas=tuple(float(v) for v in lams),
            cv_mse=cv_mse,
            mean=mu + shift,
            scale=scale,
            n=total.n,
        )


def fit_ridge(
    x: Any,
    y: Any,
    *,
    lambdas: Any = DEFAULT_LAMBDAS,
    folds: int = 5,
    seed: int = 0,
    standardize: bool = True,
    chunk_rows: int = 65536,
) -> RidgeFit:
    """Ridge regression of ``y`` [N] on ``x`` [N, D] (arrays or tensors), λ by ``folds``-fold
    CV over ``lambdas`` (folds from :func:`fold_ids` with ``seed``), solved in float64."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    if hasattr(y, "detach"):
        y = y.detach().cpu().double().numpy()
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D [N, D], got shape {x.shape}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows, x has {x.shape[0]}")
    n_lams = len(list(lambdas))
    k = folds if n_lams > 1 else 1
    if n_lams > 1 and not 2 <= folds <= x.shape[0]:
        raise ValueError(f"folds must lie in [2, N = {x.shape[0]}], got {folds}")
    stats = RidgeStats(x.shape[1], k)
    fid = fold_ids(x.shape[0], k, seed)
    for lo in range(0, x.shape[0], chunk_rows):
        stats.add(x[lo : lo + chunk_rows], y[lo : lo + chunk_rows], fid[lo : lo + chunk_rows])
    return stats.solve(lambdas, standardize=standardize)
