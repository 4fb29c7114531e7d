"""Probe explainers: a linear head (or a small MLP) on one or more layers' hidden states.

- ``mode="direct"`` predicts Δ from the hidden states of x alone: the explanation proper (the
  model's state on x says what removing the feature would do).
- ``mode="difference"`` predicts Δ from d = h(x') − h(x): a read-out of the pair, not an
  explanation, useful as an upper reference.

Solvers: ``"ridge"`` (linear head only) fits in closed form from streamed statistics, λ chosen by
k-fold CV; ``"gradient"`` trains with Adam(W) on minibatches through the fused
:func:`introspect.ops.delta_probe` (which is also the MLP's output layer and loss), reading one
shard's selected rows at a time. Both standardise features (and, for gradient training, the
labels) and fold the standardisation back into the saved weights, so a fitted probe predicts
from raw hidden states.

Gradient training order: every epoch visits the blocks (a run's shards) in a seeded random
order and each block's rows in a seeded random order, cut into minibatches of ``batch_size``
inside the block. An in-memory :class:`~introspect.explain.features.ArraySource` cut into the
same blocks trains identically.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from introspect._io import write_atomic
from introspect.explain import base
from introspect.explain.features import FeatureSource, as_source, row_mask
from introspect.explain.ridge import DEFAULT_LAMBDAS, RidgeStats, feature_scale, fold_ids

__all__ = ["ProbeConfig", "ProbeExplainer"]

logger = logging.getLogger(__name__)

_MODES = ("direct", "difference")
_HEADS = ("linear", "mlp")
_SOLVERS = ("ridge", "gradient")


@dataclass(frozen=True)
class ProbeConfig(base.ExplainerConfig):
    """Settings of a probe explainer.

    ``layers``: run layers whose states are concatenated (empty: every captured layer);
    ``position``: the captured position to read (None: the run's first). Ignored for in-memory
    arrays, whose columns are the features.
    """

    mode: str = "direct"
    layers: tuple[int, ...] = ()
    position: str | None = None
    head: str = "linear"
    solver: str = "ridge"
    standardize: bool = True
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS
    cv_folds: int = 5
    hidden_units: int = 64
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-2
    weight_decay: float = 0.0
    seed: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        set_("layers", tuple(int(x) for x in self.layers))
        set_("lambdas", tuple(float(x) for x in self.lambdas))
        problems = []
        if self.mode not in _MODES:
            problems.append(f"mode must be one of {_MODES}, got {self.mode!r}")
        if self.head not in _HEADS:
            problems.append(f"head must be one of {_HEADS}, got {self.head!r}")
        if self.solver not in _SOLVERS:
            problems.append(f"solver must be one of {_SOLVERS}, got {self.solver!r}")
        if self.solver == "ridge" and self.head != "linear":
            problems.append("solver='ridge' fits a linear head; use solver='gradient' for 'mlp'")
        if not self.lambdas or not all(math.isfinite(v) and v > 0 for v in self.lambdas):
            problems.append(f"lambdas must be positive numbers, got {list(self.lambdas)}")
        if self.cv_folds < 2:
            problems.append(f"cv_folds must be >= 2, got {self.cv_folds}")
        for name in ("hidden_units", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if problems:
            raise ValueError("ProbeConfig: " + "; ".join(problems))


def _label_array(labels: Any, src: FeatureSource) -> np.ndarray:
    if hasattr(labels, "align") and hasattr(labels, "ids"):
        if src.ids is None:
            raise ValueError(
                "the labels carry pair ids but the data has none: give the source its ids "
                "(ArraySource(..., ids=...)) or pass labels as an array in row order"
            )
        y = labels.align(src.ids)
    else:
        y = labels.detach().cpu().numpy() if hasattr(labels, "detach") else labels
        y = np.asarray(y)
    if y.dtype.kind not in "fiu":
        raise TypeError(f"a probe regresses scalar labels; got labels of dtype {y.dtype}")
    y = y.astype(np.float64).reshape(-1)
    if y.shape[0] != src.n:
        raise ValueError(f"{y.shape[0]} labels for {src.n} rows")
    return y


def _moments(src: FeatureSource, mask: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of the features of the selected rows (float64)."""
    n, mean, m2 = 0, np.zeros(src.dim), np.zeros(src.dim)
    for _, hx, hm in src.chunks(mask, dtype=np.float64):
        z = hx if mode == "direct" else hm - hx
        c = z.shape[0]
        mc = z.mean(0)
        m2c = ((z - mc) ** 2).sum(0)
        tot = n + c
        d = mc - mean
        mean = mean + d * (c / tot)
        m2 = m2 + m2c + d * d * (n * c / tot)
        n = tot
    sd = np.sqrt(m2 / max(n, 1))
    return mean, feature_scale(sd)


@base.register("probe")
class ProbeExplainer(base.Explainer):
    """A probe on hidden states; see the module docstring. Fitted parameters are float32
    tensors in the raw feature space."""

    config_class = ProbeConfig
    output = "scalar"

    def __init__(self, config: ProbeConfig | None = None, **overrides: Any):
        if config is None:
            config = ProbeConfig(**overrides)
        elif overrides:
            config = dataclasses.replace(config, **overrides)
        super().__init__(config)
        self.params: dict[str, torch.Tensor] | None = None
        self.dim: int | None = None
        self.layers: list[int] | None = None
        self.position: str | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------------------- inputs

    def _source(self, data: Any, *, fitted: bool) -> FeatureSource:
        """The features of ``data``: at the configured layers and position when fitting, at
        the ones resolved by the fit afterwards."""
        cfg = self.config
        layers = self.layers if fitted and self.layers is not None else cfg.layers
        position = self.position if fitted and self.position is not None else cfg.position
        src = as_source(data, layers=layers, position=position, with_mod=cfg.mode == "difference")
        if cfg.mode == "difference" and not src.has_mod:
            raise ValueError("mode='difference' needs the hidden states of x' (h_mod)")
        return src

    # ---------------------------------------------------------------------------------- fit

    def fit(self, data: Any, labels: Any, *, rows: Any = None) -> ProbeExplainer:
        """Fits on ``data`` (a run, a source, an [N, D] array or an ``(h_x, h_mod)`` pair)
        against ``labels`` (a :class:`~introspect.labels.Labels`, aligned by pair id, or an [N]
        array in row order), using only ``rows`` (indices or a mask) when given."""
        src = self._source(data, fitted=False)
        y = _label_array(labels, src)
        mask = row_mask(src.n, rows)
        n_fit = int(mask.sum())
        if n_fit < 2:
            raise ValueError(f"a probe needs at least 2 training rows, got {n_fit}")
        bad = np.flatnonzero(mask & ~np.isfinite(y))
        if bad.size:
            raise ValueError(f"{bad.size} training labels are not finite (rows {bad[:5].tolist()})")
        self.dim = src.dim
        self.layers = list(getattr(src, "layers", self.config.layers))
        self.position = getattr(src, "position", self.config.position)
        if self.config.solver == "ridge":
            self._fit_ridge(src, y, mask)
        else:
            self._fit_gradient(src, y, mask)
        self.info["n_train"] = n_fit
        return self

    def _fit_ridge(self, src: FeatureSource, y: np.ndarray, mask: np.ndarray) -> None:
        cfg = self.config
        cv = len(cfg.lambdas) > 1
        folds = cfg.cv_folds if cv else 1
        sel = np.flatnonzero(mask)
        if cv and folds > sel.size:
            raise ValueError(f"cv_folds = {folds} exceeds the {sel.size} training rows")
        fold = np.full(src.n, -1, dtype=np.int64)
        fold[sel] = fold_ids(sel.size, folds, cfg.seed)
        stats = RidgeStats(src.dim, folds)
        for r, hx, hm in src.chunks(mask, dtype=np.float64):
            stats.add(hx if cfg.mode == "direct" else hm - hx, y[r], fold[r])
        fit = stats.solve(cfg.lambdas, standardize=cfg.standardize)
        self.params = {
            "weight": torch.from_numpy(fit.weight[None, :].astype(np.float32)),
            "bias": torch.tensor([fit.bias], dtype=torch.float32),
        }
        self.info = {
            "solver": "ridge",
            "lambda": fit.lam,
            "cv_mse": None if fit.cv_mse is None else [float(v) for v in fit.cv_mse],
        }
        logger.info("ridge probe: λ = %g (n = %d, D = %d)", fit.lam, fit.n, src.dim)

    def _fit_gradient(self, src: FeatureSource, y: np.ndarray, mask: np.ndarray) -> None:
        """Minibatch AdamW on standardised features and labels, then the head mapped back to
        the raw feature space."""
        mu, sd, ybar, ysd = self._scaling(src, y, mask)
        y_std = ((y - ybar) / ysd).astype(np.float32)
        params = self._initial_params(src.dim)
        history = self._train_gradient(src, y_std, mask, params, mu, sd, ysd)
        final = self._raw_params(params, mu, sd, ybar, ysd)
        self.params = {k: v.float().contiguous() for k, v in final.items()}
        self.info = {"solver": "gradient", "epoch_mse": history}

    def _scaling(
        self, src: FeatureSource, y: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """Feature means and scales, label mean and scale of the training rows (the identity
        without ``standardize``)."""
        if not self.config.standardize:
            return np.zeros(src.dim), np.ones(src.dim), 0.0, 1.0
        mu, sd = _moments(src, mask, self.config.mode)
        ybar = float(y[mask].mean())
        ysd = float(y[mask].std())
        if not ysd > 0:
            ysd = 1.0
        return mu, sd, ybar, ysd

    def _initial_params(self, d: int) -> dict[str, torch.Tensor]:
        """The head's trainable parameters before training: a zero linear head, or an MLP whose
        weights are drawn uniformly in ±1/√fan_in from the seed."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        h = cfg.hidden_units
        if cfg.head == "linear":
            params = {"weight": torch.zeros(1, d), "bias": torch.zeros(1)}
        else:
            params = {
                "w1": (torch.rand(h, d, generator=gen) * 2 - 1) / math.sqrt(d),
                "b1": torch.zeros(h),
                "w2": (torch.rand(1, h, generator=gen) * 2 - 1) / math.sqrt(h),
                "b2": torch.zeros(1),
            }
        for p in params.values():
            p.requires_grad_(True)
        return params

    def _train_gradient(
        self,
        src: FeatureSource,
        y_std: np.ndarray,
        mask: np.ndarray,
        params: dict[str, torch.Tensor],
        mu: np.ndarray,
        sd: np.ndarray,
        ysd: float,
    ) -> list[float]:
        """Trains ``params`` in place over seeded shuffles of blocks and of rows within a block;
        returns the training MSE of each epoch on the label scale."""
        cfg = self.config
        mu_t = torch.from_numpy(mu.astype(np.float32))
        sd_t = torch.from_numpy(sd.astype(np.float32))
        opt = torch.optim.AdamW(params.values(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        rng = np.random.default_rng(cfg.seed)
        blocks = src.blocks()
        history = []
        for epoch in range(cfg.epochs):
            sse, count = 0.0, 0
            for bi in rng.permutation(len(blocks)):
                block = blocks[bi]
                local = np.flatnonzero(mask[block.rows])
                if local.size == 0:
                    continue
                local = rng.permutation(local)
                for s in range(0, local.size, cfg.batch_size):
                    sel = np.sort(local[s : s + cfg.batch_size])
                    hx, hm = block.take(sel, np.float32)
                    target = torch.from_numpy(y_std[block.rows[sel]])
                    out = self._train_forward(hx, hm, params, mu_t, sd_t, target)
                    opt.zero_grad(set_to_none=True)
                    out.loss.backward()
                    opt.step()
                    sse += float(out.loss.detach()) * sel.size
                    count += sel.size
            history.append(sse / max(count, 1) * ysd * ysd)
            logger.debug("probe epoch %d: train MSE %.6g", epoch, history[-1])
        return history

    def _train_forward(self, hx, hm, params, mu_t, sd_t, target):
        """The head's output and loss on a batch of raw features, standardised on the way."""
        x_t = torch.from_numpy(hx)
        m_t = torch.from_numpy(hm) if hm is not None else None
        if self.config.head == "linear":
            if self.config.mode == "direct":
                return self._op((x_t - mu_t) / sd_t, None, params, target)
            return self._op((x_t + mu_t) / sd_t, m_t / sd_t, params, target)
        z = (x_t if self.config.mode == "direct" else m_t - x_t) - mu_t
        return self._mlp(z / sd_t, params, target)

    @torch.no_grad()
    def _raw_params(
        self,
        params: dict[str, torch.Tensor],
        mu: np.ndarray,
        sd: np.ndarray,
        ybar: float,
        ysd: float,
    ) -> dict[str, torch.Tensor]:
        """The trained head in float64 on raw features and labels (the standardisation folded
        into its first layer and its output)."""
        p64 = {k: v.detach().double() for k, v in params.items()}
        mu64, sd64 = torch.from_numpy(mu), torch.from_numpy(sd)
        if self.config.head == "linear":
            w = p64["weight"] / sd64
            b = p64["bias"] - w @ mu64
            return {"weight": w * ysd, "bias": b * ysd + ybar}
        w1 = p64["w1"] / sd64
        return {
            "w1": w1,
            "b1": p64["b1"] - w1 @ mu64,
            "w2": p64["w2"] * ysd,
            "b2": p64["b2"] * ysd + ybar,
        }

    def _op(self, hx, hm, params, target=None):
        from introspect.ops import delta_probe

        return delta_probe(
            hx,
            params["weight"],
            params["bias"],
            target,
            h_mod=hm,
            mode=self.config.mode,
            backend=self.config.backend,
        )

    def _mlp(self, z, params, target=None):
        from introspect.ops import delta_probe

        a = torch.nn.functional.gelu(torch.addmm(params["b1"], z, params["w1"].t()))
        return delta_probe(a, params["w2"], params["b2"], target, backend=self.config.backend)

    # ------------------------------------------------------------------------------ predict

    def predict(self, data: Any, *, rows: Any = None) -> np.ndarray:
        """Predicted Δ (float64) for every row of ``data``, or for ``rows`` in that order."""
        if self.params is None:
            raise RuntimeError("this probe is not fitted: call fit() or load() first")
        src = self._source(data, fitted=True)
        if src.dim != self.dim:
            raise ValueError(
                f"the data has {src.dim} features; this probe was fitted on {self.dim}"
            )
        mask = row_mask(src.n, rows)
        out = np.full(src.n, np.nan)
        with torch.no_grad():
            for r, hx, hm in src.chunks(mask, dtype=np.float32):
                x_t = torch.from_numpy(hx)
                m_t = torch.from_numpy(hm) if hm is not None else None
                if self.config.head == "linear":
                    pred = self._op(x_t, m_t, self.params).pred
                else:
                    pred = self._mlp(x_t if m_t is None else m_t - x_t, self.params).pred
                out[r] = pred[:, 0].double().numpy()
        return out if rows is None else out[np.asarray(rows)]

    # -------------------------------------------------------------------------------- files

    def _state(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "layers": self.layers,
            "position": self.position,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Writes ``explainer.json`` and ``weights.safetensors`` into the directory ``path``."""
        from safetensors.torch import save

        if self.params is None:
            raise RuntimeError("this probe is not fitted; nothing to save")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        blob = save({k: v.contiguous() for k, v in self.params.items()}, {"explainer": self.name})
        write_atomic(path / base.WEIGHTS_FILE, blob)
        base.write_meta(path, self.config, self._state())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> ProbeExplainer:
        from safetensors.torch import load

        path = Path(path)
        config, state = base.read_saved(path, ProbeConfig)
        probe = cls(config)
        try:
            params = load((path / base.WEIGHTS_FILE).read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path / base.WEIGHTS_FILE}: file is missing") from None
        want = {"weight", "bias"} if config.head == "linear" else {"w1", "b1", "w2", "b2"}
        if set(params) != want:
            raise ValueError(
                f"{path / base.WEIGHTS_FILE}: tensors {sorted(params)}, expected {sorted(want)}"
            )
        probe.params = {k: v.float().contiguous() for k, v in params.items()}
        probe.dim = int(probe.params["weight" if config.head == "linear" else "w1"].shape[1])
        probe.layers = state.get("layers")
        probe.position = state.get("position")
        probe.info = state.get("info") or {}
        return probe
