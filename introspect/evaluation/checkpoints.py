"""Evaluation of a training run, checkpoint by checkpoint: Self, Orig and the coupling gap.

For each checkpoint of a training directory (and for the starting model, as step 0), the
*current* model's f(x), f(x'), Δ and hidden states are re-extracted on held-out pairs with the
extraction engine; each explainer predicts Δ from those hidden states, and
:func:`introspect.evaluation.recompute_metrics` scores the predictions against the current Δ (Self)
and against the fixed labels (Orig). Explainers:

- ``probe``: the probe trained alongside the model, as saved in the checkpoint;
- ``probe-diff``: the difference probe (on h(x') − h(x)) trained alongside it, where the
  checkpoint has one;
- ``ridge-m0``: a ridge probe fitted once on the starting model's hidden states (frozen), applied
  to each checkpoint's hidden states;
- ``verbal`` (where the run trained one): the checkpoint's model itself, asked after x and the
  answer M0 gave how its answer would change without the feature; its answer is the binned
  sentence with the highest log-probability. Categorical: it is scored against the current Δ and
  the labels binned at the training run's threshold (exact match and changed-F1).

Output files in ``out``: ``predictions.jsonl`` (one record per checkpoint × explainer × pair:
``pred``, ``current``, ``label``), ``metrics.jsonl`` (one row per checkpoint × explainer ×
metric, recomputable from the predictions), ``behaviour.jsonl`` (the behaviour shift),
``eval.json`` (settings and timings) and the PNGs ``self_vs_orig.png`` and ``behaviour.png``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from introspect.errors import IntrospectError
from introspect.evaluation.metrics import (
    DEFAULT_N_BOOT,
    bin_delta,
    pearson_r,
    prediction_records,
    recompute_metrics,
    write_jsonl,
)

__all__ = ["EvalError", "evaluate_training"]

logger = logging.getLogger(__name__)


class EvalError(IntrospectError, ValueError):
    """Evaluation inputs that do not fit together."""


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _extract(lm, pairs, layer: int, batch_tokens: int):
    """f(x), f(x') and the layer's hidden states of x and of x' on ``pairs`` (pair order)."""
    from dataclasses import replace

    from introspect.engine import ExtractConfig, extract_pairs
    from introspect.engine.stream import check_tree_layout

    config = ExtractConfig(layers=(layer,), batch_tokens=batch_tokens)
    if check_tree_layout(lm.model, lm.tokenizer, pairs[0]) is not None:
        config = replace(config, layout="paths")
    f_x, f_mod, hs, hms, ids = [], [], [], [], []
    for res in extract_pairs(lm.model, lm.tokenizer, pairs, config):
        ids.extend(res.ids)
        f_x.append(res.f_x)
        f_mod.append(res.f_mod)
        hs.append(res.hidden[(layer, "last", "x")])
        hms.append(res.hidden[(layer, "last", "mod")])
    if ids != [p.id for p in pairs]:
        raise RuntimeError("the extraction returned the pairs in another order")
    return np.concatenate(f_x), np.concatenate(f_mod), np.concatenate(hs), np.concatenate(hms)


def evaluate_training(
    train_dir: str | os.PathLike,
    pairs_path: str | os.PathLike,
    labels_run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    include_start: bool = True,
    batch_tokens: int = 4096,
    plots: bool = True,
    device: str = "auto",
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Evaluates every checkpoint of ``train_dir`` on the held-out pairs of ``pairs_path``
    against the fixed labels of ``labels_run`` (an extract run holding every held-out pair);
    writes the files listed in the module docstring into ``out`` and returns the summary.
    ``device``: where the models run (``"auto"``: a GPU if one is visible)."""
    from introspect import explain
    from introspect.data import read_pairs
    from introspect.explain import ArraySource
    from introspect.labels import labels_from_run, load_labels
    from introspect.models import load_model, resolve_device
    from introspect.training import checkpoint as ck

    t_start = time.perf_counter()
    device = resolve_device(device)
    train_dir, out = Path(train_dir), Path(out)
    if not (train_dir / ck.TRAIN_JSON).is_file():
        raise EvalError(f"{train_dir}: no {ck.TRAIN_JSON} here (not a training directory)")
    doc = ck.read_json(train_dir / ck.TRAIN_JSON)
    layer = int(doc["layer"])
    base_spec = doc["model"]["spec"]
    model_trains = bool(doc["model_trains"])
    checkpoints = ck.list_checkpoints(train_dir)
    if not checkpoints:
        raise EvalError(f"{train_dir}: no checkpoints to evaluate")
    if not os.path.exists(pairs_path):
        raise EvalError(f"pair file {pairs_path} does not exist")
    pairs, _ = read_pairs(pairs_path)
    if not pairs:
        raise EvalError(f"{pairs_path}: no pairs")
    ids = [p.id for p in pairs]
    if not os.path.isdir(labels_run):
        raise EvalError(f"labels run {labels_run} is not a directory (give an extract run)")
    labels = labels_from_run(labels_run, ids=ids)
    y = labels.align(ids)
    if not np.isfinite(y).all():
        raise EvalError(f"{labels_run}: some held-out labels are not finite")
    if (train_dir / "labels.json").is_file():
        seen = set(load_labels(train_dir / "labels.json").ids)
        overlap = sum(i in seen for i in ids)
        if overlap:
            say(f"warning: {overlap} of the {len(ids)} held-out pairs were training pairs")

    verbal_doc = None
    if doc.get("verbal"):
        verbal_doc = ck.read_json(train_dir / doc["verbal"])
        threshold = float(verbal_doc["threshold"])
        y_bins = bin_delta(y, threshold)
        verbal_answers = _base_answers(base_spec, pairs, verbal_doc, device)

    ridge = explain.load(train_dir / "ridge-m0")
    plan: list[tuple[int, str, list[tuple[str, Any]]]] = []
    if include_start:
        plan.append((0, base_spec, [("ridge-m0", ridge)]))
    for step, path in checkpoints:
        spec = str(path / "model") if model_trains else base_spec
        trained = [("probe", explain.load(path / "probe"))]
        if (path / "probe-diff").is_dir():
            trained.append(("probe-diff", explain.load(path / "probe-diff")))
        plan.append((step, spec, [*trained, ("ridge-m0", ridge)]))
    with_verbal = {step for step, _ in checkpoints} if verbal_doc is not None else set()

    objective = doc.get("behaviour_objective", "none")
    records: list[dict[str, Any]] = []
    behaviour: list[dict[str, Any]] = []
    cache: dict[str, tuple] = {}
    timings = []
    for step, spec, explainers in plan:
        t0 = time.perf_counter()
        if spec not in cache:
            lm = load_model(spec, dtype="float32", device=device)
            f_x, f_mod, h, h_mod = _extract(lm, pairs, layer, batch_tokens)
            obj = None
            if objective != "none":
                from introspect.training.objectives import TrainError, objective_logprob

                try:
                    obj = objective_logprob(lm.model, lm.tokenizer, pairs, objective)
                except TrainError as exc:
                    say(f"note: no objective log-probability on the held-out pairs ({exc})")
            said = None
            if step in with_verbal:
                from introspect.training.loop import verbal_explainer

                ex = verbal_explainer(lm.model, lm.tokenizer, verbal_doc)
                said = ex.predict(pairs, answers=verbal_answers)
            cache = {spec: (f_x, f_mod, h, h_mod, obj, said)}
            del lm
        f_x, f_mod, h, h_mod, obj, said = cache[spec]
        delta = f_mod - f_x
        for name, expl in explainers:
            diff = getattr(getattr(expl, "config", None), "mode", "direct") == "difference"
            pred = expl.predict(ArraySource(h, h_mod if diff else None, ids=ids))
            records.extend(prediction_records(ids, pred, delta, y, checkpoint=step, explainer=name))
        if said is not None and step in with_verbal:
            records.extend(
                prediction_records(
                    ids, said, bin_delta(delta, threshold), y_bins, checkpoint=step,
                    explainer="verbal",
                )
            )  # fmt: skip
        behaviour.append(
            {
                "checkpoint": step,
                "model": spec,
                "n": len(ids),
                "mean_f_x": float(f_x.mean()),
                "mean_f_mod": float(f_mod.mean()),
                "mean_delta": float(delta.mean()),
                "sd_delta": float(delta.std()),
                "frac_target_x": float((f_x > 0).mean()),
                "objective": objective,
                "objective_logprob": obj,
                "delta_vs_labels": _finite(pearson_r(delta, y)),
            }
        )
        dt = time.perf_counter() - t0
        timings.append({"checkpoint": step, "seconds": dt})
        say(
            f"checkpoint {step}: mean Δ {delta.mean():+.3f}, mean f(x) {f_x.mean():+.3f}, "
            f"r(Δ, labels) {_fmt(behaviour[-1]['delta_vs_labels'])} ({dt:.1f} s)"
        )

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "predictions.jsonl", records)
    rows = recompute_metrics(records, n_boot=n_boot, seed=seed)
    write_jsonl(out / "metrics.jsonl", rows)
    write_jsonl(out / "behaviour.jsonl", behaviour)
    files = ["predictions.jsonl", "metrics.jsonl", "behaviour.jsonl"]
    if plots:
        try:
            from introspect.evaluation.plots import plot_behaviour, plot_coupling

            plot_coupling(rows, out / "self_vs_orig.png")
            plot_behaviour(behaviour, out / "behaviour.png")
            files += ["self_vs_orig.png", "behaviour.png"]
        except ImportError as exc:
            say(f"warning: no plots ({exc}); pip install matplotlib")
    summary = {
        "train_dir": str(train_dir),
        "pairs": str(pairs_path),
        "labels": str(labels_run),
        "n": len(ids),
        "layer": layer,
        "n_boot": n_boot,
        "seed": seed,
        "checkpoints": [s for s, _, _ in plan],
        "timings": timings,
        "wall_s": time.perf_counter() - t_start,
        "files": files,
    }
    ck.write_json(out / "eval.json", summary)
    summary["metrics"] = rows
    summary["behaviour"] = behaviour
    return summary


def _base_answers(spec: str, pairs, verbal_doc: dict[str, Any], device: str) -> list[str]:
    """The starting model's answers on x of the held-out pairs (what the verbal follow-up shows,
    as in training)."""
    import torch

    from introspect.models import load_model
    from introspect.training.loop import verbal_explainer

    lm = load_model(spec, dtype="float32", device=device)
    with torch.no_grad():
        return verbal_explainer(lm.model, lm.tokenizer, verbal_doc).answers(pairs)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
