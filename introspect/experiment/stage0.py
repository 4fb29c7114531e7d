"""Stage 0 of the coupling map: what each task's pairs give before any training.

Per task, on ``n`` generated pairs (the seed's, as a coupling run draws them):

- **argmax changes**: how often the model's most likely choice on x differs from that on x'
  (the feature changes the answer, not only its probability);
- **surface R²**: how much of Δ simple surface metadata explains, as the out-of-fold R² of a
  ridge regression (5 outer folds; λ chosen by 5-fold CV inside each training fold,
  :func:`introspect.explain.ridge.fit_ridge`) on: the rendered prompt's length in characters
  and tokens, the removed span's length, the number of choices, the target's position, and the
  pair's ``meta`` fields (numbers and booleans as they are, strings with 2 to 10 distinct
  values one-hot). A high R² means an explainer can predict Δ from the surface alone;
- **ρ0** of each candidate label model: r(its Δ, the model's Δ) on the same pairs, with its
  bootstrap interval and whether it meets the threshold
  (:func:`introspect.evaluation.decide.precondition`, as the experiment measures it before
  training on another model's labels).

Δ and the answers come from the choices' log-probabilities in the engine's packed forwards
(:func:`introspect.engine.continuations.continuation_logprobs`: each prompt once, its choices as
branches, the LM head only on the positions read), which equal plain forwards
(:mod:`introspect.behaviour`, the definition of f) within float32 rounding; a test compares them.
Writes ``stage0.json``, ``stage0.md`` and ``stage0_values.jsonl.gz`` (every pair's choice
log-probabilities, from which :func:`stage0_row` recomputes each row without a model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from introspect._io import write_json_atomic
from introspect._progress import say_stderr

__all__ = [
    "argmax_changes",
    "recompute_rows",
    "run_stage0",
    "stage0_row",
    "stage0_table",
    "surface_features",
    "surface_r2",
]

_MAX_LEVELS = 10
VALUES = "stage0_values.jsonl.gz"


def _logps(
    model, tok, pairs, batch_tokens: int = 2048
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """log p(choice) of every choice on x and on x' of every pair."""
    import torch

    from introspect.behaviour import encode
    from introspect.engine.continuations import continuation_logprobs

    enc = [e for p in pairs for e in (encode(tok, p.x, p.choices), encode(tok, p.x_mod, p.choices))]
    with torch.no_grad():
        got = continuation_logprobs(
            model, [e.prompt_ids for e in enc], [e.choice_ids for e in enc],
            batch_tokens=batch_tokens,
        )  # fmt: skip
    return [g.numpy() for g in got[0::2]], [g.numpy() for g in got[1::2]]


def _delta(pairs, xs, mods) -> np.ndarray:
    import torch

    from introspect.behaviour import behaviour_value

    out = []
    for p, a, b in zip(pairs, xs, mods, strict=True):
        t = p.choices.index(p.target)
        f_x, f_mod = (behaviour_value(torch.from_numpy(v), t) for v in (a, b))
        out.append(f_mod - f_x)
    return np.asarray(out, dtype=np.float64)


def argmax_changes(xs: Sequence[np.ndarray], mods: Sequence[np.ndarray]) -> float:
    """The fraction of pairs whose most likely choice on x differs from that on x'."""
    changed = [int(np.argmax(a)) != int(np.argmax(b)) for a, b in zip(xs, mods, strict=True)]
    return float(np.mean(changed))


def surface_features(pairs, tok) -> tuple[np.ndarray, list[str]]:
    """[N, D] surface features of the pairs and their names (see the module docstring)."""
    from introspect.models import format_prompt

    cols: dict[str, list[float]] = {
        "prompt_chars": [], "prompt_tokens": [], "removed_chars": [], "n_choices": [],
        "target_index": [],
    }  # fmt: skip
    for p in pairs:
        text, text_mod = format_prompt(tok, p.x), format_prompt(tok, p.x_mod)
        cols["prompt_chars"].append(len(text))
        cols["prompt_tokens"].append(len(tok(text, add_special_tokens=False)["input_ids"]))
        cols["removed_chars"].append(len(text) - len(text_mod))
        cols["n_choices"].append(len(p.choices))
        cols["target_index"].append(p.choices.index(p.target))
    keys = sorted({k for p in pairs for k in p.meta})
    for k in keys:
        vals = [p.meta.get(k) for p in pairs]
        if all(isinstance(v, bool | int | float) for v in vals):
            cols[f"meta.{k}"] = [float(v) for v in vals]
            continue
        if not all(isinstance(v, str) for v in vals):
            continue
        levels = sorted(set(vals))
        if 2 <= len(levels) <= _MAX_LEVELS:
            for lev in levels[1:]:
                cols[f"meta.{k}={lev}"] = [float(v == lev) for v in vals]
    names = list(cols)
    return np.asarray([cols[n] for n in names], dtype=np.float64).T, names


def surface_r2(x: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0) -> float:
    """Out-of-fold R² of ridge regression of ``y`` on ``x``: 1 − Σ(y − ŷ)² / Σ(y − ȳ)², with
    ŷ predicted for each of ``folds`` folds by a ridge fitted on the others (λ by inner CV)."""
    from introspect.explain.ridge import fit_ridge, fold_ids

    y = np.asarray(y, dtype=np.float64)
    fid = fold_ids(len(y), folds, seed)
    pred = np.empty_like(y)
    for k in range(folds):
        tr, te = fid != k, fid == k
        inner = max(2, min(5, int(tr.sum())))
        fit = fit_ridge(x[tr], y[tr], folds=inner, seed=seed)
        pred[te] = fit.predict(x[te])
    sst = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if sst == 0 else 1.0 - float(np.sum((y - pred) ** 2)) / sst


def _finite(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _r2(v: float | None) -> str:
    return "undefined" if v is None else f"{v:+.3f}"


def stage0_row(task, pairs, tok, xs, mods, others, cfg) -> dict[str, Any]:
    """The Stage 0 row of ``task`` from the choices' log-probabilities (``xs``, ``mods``: per
    pair, on x and on x'; ``others``: ``{label model: (xs, mods)}``); no model is run, so the
    committed values reproduce every published number."""
    from introspect.evaluation.decide import precondition

    delta = _delta(pairs, xs, mods)
    x, names = surface_features(pairs, tok)
    row = {
        "task": task,
        "n": len(pairs),
        "argmax_change": argmax_changes(xs, mods),
        "delta_mean": float(delta.mean()),
        "delta_sd": float(delta.std()),
        "surface_r2": _finite(surface_r2(x, delta, seed=cfg["seed"])),
        "surface_r2_no_meta": _finite(surface_r2(x[:, :5], delta, seed=cfg["seed"])),
        "features": names,
        "rho0": {},
    }
    for name, (oxs, omods) in others.items():
        row["rho0"][name] = precondition(
            delta, _delta(pairs, oxs, omods), threshold=cfg["rho_threshold"],
            n_boot=cfg["n_boot"], seed=cfg["seed"],
        )  # fmt: skip
    return row


def recompute_rows(folder: str | Path, tokenizer) -> list[dict[str, Any]]:
    """The rows of ``folder/stage0.json`` recomputed from ``folder/stage0_values.jsonl.gz``
    and the task generators (``tokenizer``: the studied model's, for the token counts); no
    model is run."""
    import json

    from introspect.data.tasks import generate
    from introspect.evaluation import read_jsonl
    from introspect.models import with_chat_template

    folder = Path(folder)
    doc = json.loads((folder / "stage0.json").read_text(encoding="utf-8"))
    cfg = doc["config"]
    values = read_jsonl(folder / VALUES)
    tok, _ = with_chat_template(tokenizer, "auto")
    rows = []
    for task in cfg["tasks"]:
        pairs = generate(task, cfg["n"], seed=cfg["seed"])
        recs = {r["id"]: r for r in values if r["task"] == task}
        per = [recs[p.id] for p in pairs]
        xs = [np.asarray(r["logp_x"]) for r in per]
        mods = [np.asarray(r["logp_mod"]) for r in per]
        others = {m: ([np.asarray(r["other"][m]["logp_x"]) for r in per],
                      [np.asarray(r["other"][m]["logp_mod"]) for r in per])
                  for m in cfg["label_models"]}  # fmt: skip
        rows.append(stage0_row(task, pairs, tok, xs, mods, others, cfg))
    return json.loads(json.dumps(rows))


def _values(task, pairs, xs, mods, others) -> list[dict[str, Any]]:
    """Per pair, the log-probabilities a row is computed from (``stage0_values.jsonl.gz``)."""
    out = []
    for i, p in enumerate(pairs):
        rec = {"task": task, "id": p.id, "logp_x": xs[i].tolist(), "logp_mod": mods[i].tolist()}
        rec["other"] = {m: {"logp_x": o[0][i].tolist(), "logp_mod": o[1][i].tolist()}
                        for m, o in others.items()}  # fmt: skip
        out.append(rec)
    return out


def _task_stage0(task, lm, labellers, cfg, say) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from introspect.data.tasks import generate
    from introspect.models import with_chat_template

    pairs = generate(task, cfg["n"], seed=cfg["seed"])
    tok, _ = with_chat_template(lm.tokenizer, "auto")
    xs, mods = _logps(lm.model, tok, pairs)
    others = {}
    for name, other in labellers:
        otok, _ = with_chat_template(other.tokenizer, "auto")
        others[name] = _logps(other.model, otok, pairs)
    row = stage0_row(task, pairs, tok, xs, mods, others, cfg)
    say(f"  {task}: argmax changes {row['argmax_change']:.3f}, surface R² {_r2(row['surface_r2'])}")
    for name, pre in row["rho0"].items():
        say(f"  {task}: ρ0 of {name}: {pre['text']}")
    return row, _values(task, pairs, xs, mods, others)


def run_stage0(
    model: str,
    tasks: Sequence[str],
    out: str | Path,
    *,
    label_models: Sequence[str] = (),
    n: int = 128,
    seed: int = 0,
    n_boot: int = 1000,
    rho_threshold: float = 0.5,
    device: str = "auto",
    say: Callable[[str], None] = say_stderr,
) -> dict[str, Any]:
    """Stage 0 of every task (see the module docstring) into ``out``; returns ``stage0.json``'s
    contents."""
    from introspect.models import load_model, resolve_device

    dev = resolve_device(device)
    lm = load_model(model, dtype="float32", device=dev)
    labellers = [(m, load_model(m, dtype="float32", device=dev)) for m in label_models]
    cfg = {"model": model, "tasks": list(tasks), "label_models": list(label_models), "n": n,
           "seed": seed, "n_boot": n_boot, "rho_threshold": rho_threshold}  # fmt: skip
    done = [_task_stage0(t, lm, labellers, cfg, say) for t in tasks]
    doc = {"config": cfg, "tasks": [row for row, _ in done]}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_values(out / VALUES, [v for _, values in done for v in values])
    write_json_atomic(out / "stage0.json", doc)
    _write_md(doc, out / "stage0.md")
    return doc


def _write_values(path: Path, records: list[dict[str, Any]]) -> None:
    import gzip
    import json

    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r) + "\n")
    tmp.replace(path)


def _rho0_text(p: dict[str, Any]) -> str:
    if p["rho"] is None:
        return "undefined"
    met = "met" if p["met"] else "not met"
    if p["lo"] is None:
        return f"{p['rho']:+.3f} ({met})"
    return f"{p['rho']:+.3f} [{p['lo']:+.2f}, {p['hi']:+.2f}] ({met})"


def stage0_table(doc: dict[str, Any]) -> list[str]:
    """The Markdown table of ``stage0.json``'s rows (as ``stage0.md`` and the docs show it)."""
    c = doc["config"]
    lines = [
        "| task | pairs | argmax changes | mean Δ | sd Δ | surface R² | R² without meta | "
        + " | ".join(f"ρ0 {m}" for m in c["label_models"])
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---|" * len(c["label_models"]),
    ]
    for r in doc["tasks"]:
        rho0 = [r["rho0"][m] for m in c["label_models"]]
        cells = [_rho0_text(p) for p in rho0]
        lines.append(
            f"| {r['task']} | {r['n']} | {r['argmax_change']:.3f} | {r['delta_mean']:+.3f} | "
            f"{r['delta_sd']:.3f} | {_r2(r['surface_r2'])} | {_r2(r['surface_r2_no_meta'])} | "
            + " | ".join(cells)
            + (" |" if cells else "")
        )
    return lines


def _write_md(doc: dict[str, Any], path: Path) -> None:
    c = doc["config"]
    lines = [
        "# Stage 0: the tasks before training",
        "",
        f"Model {c['model']}, {c['n']} pairs per task (seed {c['seed']}). Surface R²: "
        "out-of-fold R² of ridge on surface features (with and without the meta fields).",
        "",
        *stage0_table(doc),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
