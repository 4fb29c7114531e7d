"""Reduced-precision modes of the extraction engine, and their fidelity measured per run.

Δ is a small difference of two large log-probabilities, so precision matters more for Δ than for
either value. Running the paired forward packed helps: x and x' share their common prefix's
keys and values exactly, so its rounding errors cancel in Δ. What remains is measured, not
assumed: :func:`measure_fidelity` runs the first pairs of the data in float32 and in the chosen
mode and reports the Pearson correlation and the largest error of Δ; ``introspect extract``
writes that into the run's manifest (``info.fidelity``) and warns.

Modes:

``float32``        exact (the reference).
``autocast-fp16``  float32 weights and residual stream; matrix products in float16 (autocast).
``autocast-bf16``  the same with bfloat16 products (wider range, 3 fewer mantissa bits).
``bfloat16``       the whole model cast to bfloat16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

PRECISIONS = ("float32", "autocast-fp16", "autocast-bf16", "bfloat16")
EXACT = "float32"


def autocast_dtype(mode: str) -> torch.dtype | None:
    _check(mode)
    return {"autocast-fp16": torch.float16, "autocast-bf16": torch.bfloat16}.get(mode)


def apply(model, mode: str):
    """Puts ``model`` (float32) into ``mode``; returns the autocast dtype the engine must use."""
    _check(mode)
    if mode == "bfloat16":
        model.to(torch.bfloat16)
    return autocast_dtype(mode)


def _check(mode: str) -> None:
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {mode!r}")


def compare(delta_ref: Sequence[float], delta: Sequence[float]) -> dict:
    """Fidelity of ``delta`` against the float32 ``delta_ref`` of the same pairs."""
    a = np.asarray(delta_ref, dtype=np.float64)
    b = np.asarray(delta, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("need two equally long, non-empty Δ arrays")
    finite = bool(np.isfinite(b).all())
    err = np.abs(a - b) if finite else np.full(a.shape, math.inf)
    if finite and a.size > 1 and a.std() > 0 and b.std() > 0:
        pearson = float(np.corrcoef(a, b)[0, 1])
    else:
        pearson = math.nan
    return {
        "reference": EXACT,
        "pairs": int(a.size),
        "pearson": pearson if finite else math.nan,
        "max_abs_error": float(err.max()) if finite else math.inf,
        "mean_abs_error": float(err.mean()) if finite else math.inf,
        "delta_sd": float(a.std()),
    }


def measure_fidelity(model, tokenizer, pairs, config, mode: str, *, prefix=None) -> dict:
    """Δ of ``pairs`` in float32 and in ``mode`` with the same engine settings, compared.

    ``model`` must be in float32; it is left in float32 (a ``bfloat16`` run works on a copy).
    """
    import copy

    from introspect.engine.stream import extract_pairs

    _check(mode)
    pairs = list(pairs)

    def run(m, autocast):
        res = list(extract_pairs(m, tokenizer, pairs, config, prefix=prefix, autocast=autocast))
        delta = np.concatenate([r.f_mod - r.f_x for r in res])
        hidden = {k: np.concatenate([r.hidden[k] for r in res]) for k in res[0].hidden}
        return delta, hidden

    ref, h_ref = run(model, None)
    if mode == EXACT:
        got, h_got = ref, h_ref
    elif mode == "bfloat16":
        low = copy.deepcopy(model).to(torch.bfloat16)
        got, h_got = run(low, None)
        del low
    else:
        got, h_got = run(model, autocast_dtype(mode))
    if config.behaviour == "none":
        out = {"reference": EXACT, "pairs": len(pairs)}
    else:
        out = compare(ref, got)
    if h_ref:
        out["hidden_max_rel_error"] = max(
            float(np.linalg.norm(h_got[k] - h_ref[k]) / max(np.linalg.norm(h_ref[k]), 1e-30))
            for k in h_ref
        )
    out["mode"] = mode
    return out


def is_faithful(fidelity: dict, *, min_pearson: float = 0.99) -> bool:
    p = fidelity.get("pearson")
    return p is not None and not math.isnan(p) and p >= min_pearson
