"""Closed-form ridge: against an independent normal-equation solve, and λ by brute-force CV."""

from __future__ import annotations

import numpy as np
import pytest
from explain_synth import linear_data

from introspect.explain import RidgeStats, fit_ridge, fold_ids


def solve_by_hand(x, y, lam, standardize=True):
    """(1/n)‖y − zβ − b‖² + λ‖β‖² via the augmented normal equations [z 1]; raw-space (a, b)."""
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    mu = x.mean(0)
    sd = x.std(0) if standardize else np.ones(d)
    a_mat = np.hstack([(x - mu) / sd, np.ones((n, 1))])
    pen = np.diag([lam * n] * d + [0.0])
    theta = np.linalg.solve(a_mat.T @ a_mat + pen, a_mat.T @ y)
    slope = theta[:d] / sd
    return slope, theta[d] - mu @ slope


@pytest.mark.parametrize("standardize", [True, False])
@pytest.mark.parametrize("lam", [1e-4, 0.3, 20.0])
def test_single_lambda_matches_normal_equations(standardize, lam):
    x, y, _ = linear_data(40, 5, seed=1)
    fit = fit_ridge(x, y, lambdas=(lam,), standardize=standardize)
    w, b = solve_by_hand(x, y, lam, standardize)
    np.testing.assert_allclose(fit.weight, w, rtol=1e-9, atol=1e-11)
    assert fit.bias == pytest.approx(b, rel=1e-9, abs=1e-11)
    assert fit.lam == lam and fit.cv_mse is None and fit.n == 40
    np.testing.assert_allclose(fit.predict(x), x.astype(np.float64) @ w + b, rtol=1e-9, atol=1e-9)


def test_cv_error_and_choice_match_brute_force():
    x, y, _ = linear_data(60, 6, seed=2, noise=1.0)
    lambdas = (1e-3, 0.05, 0.3, 2.0, 50.0)
    fit = fit_ridge(x, y, lambdas=lambdas, folds=4, seed=5)
    folds = fold_ids(60, 4, 5)
    sse = np.zeros(len(lambdas))
    for j, lam in enumerate(lambdas):
        for f in range(4):
            tr, va = folds != f, folds == f
            w, b = solve_by_hand(x[tr], y[tr], lam)
            sse[j] += ((y[va] - x[va].astype(np.float64) @ w - b) ** 2).sum()
    np.testing.assert_allclose(fit.cv_mse, sse / 60, rtol=1e-8)
    assert fit.lam == lambdas[int(np.argmin(sse))]
    w, b = solve_by_hand(x, y, fit.lam)
    np.testing.assert_allclose(fit.weight, w, rtol=1e-9, atol=1e-11)


def test_cv_prefers_little_shrinkage_for_signal_and_much_for_noise():
    x, y, _ = linear_data(400, 8, seed=3, noise=0.1)
    assert fit_ridge(x, y).lam <= 1e-2
    noise = np.random.default_rng(0).normal(size=400)
    assert fit_ridge(x, noise).lam >= 1.0


def test_folds_are_balanced_and_seeded():
    f = fold_ids(103, 5, seed=7)
    assert sorted(np.bincount(f).tolist()) == [20, 20, 21, 21, 21]
    assert np.array_equal(f, fold_ids(103, 5, seed=7))
    assert not np.array_equal(f, fold_ids(103, 5, seed=8))


def test_chunking_does_not_change_the_fit():
    x, y, _ = linear_data(300, 7, seed=4)
    a = fit_ridge(x, y, chunk_rows=300)
    b = fit_ridge(x, y, chunk_rows=13)
    assert a.lam == b.lam
    np.testing.assert_allclose(a.cv_mse, b.cv_mse, rtol=1e-9)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-8, atol=1e-12)


def test_constant_feature_gets_no_weight_and_large_offsets_stay_accurate():
    x, y, _ = linear_data(80, 4, seed=5)
    x = np.hstack([x.astype(np.float64) + 1e4, np.full((80, 1), 3.0)])
    fit = fit_ridge(x, y, lambdas=(0.01,))
    assert np.isfinite(fit.weight).all() and abs(fit.weight[-1]) < 1e-9
    w, b = solve_by_hand(x[:, :4], y, 0.01)
    np.testing.assert_allclose(fit.weight[:4], w, rtol=1e-7)
    np.testing.assert_allclose(fit.predict(x), x[:, :4] @ w + b, rtol=1e-7, atol=1e-7)


def test_errors_are_clear():
    x, y, _ = linear_data(10, 3)
    with pytest.raises(ValueError, match="positive"):
        fit_ridge(x, y, lambdas=(-1.0, 1.0))
    with pytest.raises(ValueError, match="folds"):
        fit_ridge(x, y, folds=11)
    with pytest.raises(ValueError, match="finite"):
        RidgeStats(3).add(np.full((2, 3), np.nan), [0.0, 1.0])
    with pytest.raises(ValueError, match="fold"):
        RidgeStats(3, folds=2).add(x, y)
