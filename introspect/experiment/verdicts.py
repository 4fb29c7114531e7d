"""The experiment's statistics that decide, from the evaluations' prediction records.

For each evaluated condition and scalar explainer (the probes, and the verbal explainer's scalar
score, so that verbal and probe explainers share one scale):

- per checkpoint: ρ_t = r(current Δ, labels), Self, Orig, the gap and the coupling index c, each
  with its bootstrap interval (:mod:`introspect.evaluation.decide`);
- over the trajectory (every checkpoint after the start): the mean Self, Orig, gap, ρ and c with
  a joint pair bootstrap, the smallest ρ_t, and the verdict. The precondition is the smallest
  ρ_t reaching ``rho_threshold``: the labels stayed correlated with current behaviour at every
  checkpoint the verdict rests on. A condition's verdicts are withheld for an explainer whose
  shuffled-label control (``Condition.control``) has a Self interval that excludes 0.

Everything is recomputed from ``predictions.jsonl`` (or its compressed copy), so a rescore and a
published run give the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from introspect.evaluation.metrics import Estimate

__all__ = [
    "SCALAR_EXPLAINERS",
    "below_chance_caveat",
    "condition_statistics",
    "experiment_verdicts",
]

SCALAR_EXPLAINERS = ("probe", "probe-diff", "verbal-score", "ridge-m0")
METRIC = "pearson"


def _predictions(edir: Path) -> list[dict[str, Any]]:
    from introspect.evaluation import read_jsonl

    path = edir / "predictions.jsonl"
    if not path.is_file() and path.with_suffix(".jsonl.gz").is_file():
        path = path.with_suffix(".jsonl.gz")
    return read_jsonl(path) if path.is_file() else []


def _est(e: Estimate) -> dict[str, Any]:
    return e.row(None, "")


def _per_checkpoint(recs: list[dict[str, Any]], n_boot: int, seed: int) -> list[dict[str, Any]]:
    from introspect.evaluation.decide import coupling_index, rho
    from introspect.evaluation.metrics import coupling

    rows = []
    steps = sorted({r["checkpoint"] for r in recs})
    for step in steps:
        mine = [r for r in recs if r["checkpoint"] == step]
        pred = [r["pred"] for r in mine]
        cur = [r["current"] for r in mine]
        lab = [r["label"] for r in mine]
        est = coupling(pred, cur, lab, metrics=[METRIC], n_boot=n_boot, seed=seed)
        c = coupling_index(pred, cur, lab, n_boot=n_boot, seed=seed)["coupling.c"]
        rows.append(
            {
                "checkpoint": step,
                "rho": _est(rho(cur, lab, n_boot=n_boot, seed=seed)),
                "self": _est(est[f"self.{METRIC}"]),
                "orig": _est(est[f"orig.{METRIC}"]),
                "gap": _est(est[f"gap.{METRIC}"]),
                "c": _est(c),
            }
        )
    return rows


def condition_statistics(edir: Path, *, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """``{explainer: {"checkpoints": [...], "trajectory": {...}}}`` of one evaluation directory
    (scalar explainers only); empty when it holds no predictions."""
    from introspect.evaluation.decide import trajectory

    records = _predictions(edir)
    out: dict[str, dict[str, Any]] = {}
    for expl in SCALAR_EXPLAINERS:
        recs = [r for r in records if r["explainer"] == expl]
        if not recs:
            continue
        steps = sorted({r["checkpoint"] for r in recs})
        later = [s for s in steps if s > 0] or steps
        traj = trajectory(recs, checkpoints=later, metric=METRIC, n_boot=n_boot, seed=seed)
        out[expl] = {
            "checkpoints": _per_checkpoint(recs, n_boot, seed),
            "trajectory": {k.split(".", 1)[1]: _est(v) for k, v in traj.items()},
            "trajectory_steps": later,
        }
    return out


def _as_estimate(row: dict[str, Any] | None, metric: str) -> Estimate | None:
    if not row:
        return None
    nan = float("nan")
    pick = lambda k: nan if row.get(k) is None else float(row[k])
    return Estimate(metric, pick("value"), pick("lo"), pick("hi"), int(row.get("n") or 0))


def experiment_verdicts(out: Path, cfg: Any, stages, state: dict[str, Any]) -> list[dict]:
    """One entry per evaluated (task, condition): its statistics per explainer and, for each
    explainer, the verdict over the trajectory with the precondition it met or missed and its
    control; written to ``verdicts.json`` by the report."""
    from introspect.evaluation.decide import verdict

    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for name, kind, args in stages:
        if kind != "eval" or name not in state.get("completed", []):
            continue
        if state["stages"].get(name, {}).get("skipped"):
            continue
        task, cond = args["task"], args["cond"]
        edir = out / task / f"eval-{cond.name}"
        stats = condition_statistics(edir, n_boot=cfg.n_boot, seed=cfg.seed)
        if stats:
            entries[(task, cond.name)] = {"task": task, "condition": cond.name, "cond": cond,
                                          "explainers": stats}  # fmt: skip
    for (task, _), entry in entries.items():
        cond = entry["cond"]
        control = entries.get((task, cond.control)) if cond.control else None
        pre0 = _rho0(state, task, cond)
        for expl, st in entry["explainers"].items():
            traj = st["trajectory"]
            ctrl = None
            if control is not None and expl in control["explainers"]:
                ctrl = _as_estimate(control["explainers"][expl]["trajectory"][f"self.{METRIC}"],
                                    f"self.{METRIC}")  # fmt: skip
            gap = _as_estimate(traj[f"gap.{METRIC}"], f"gap.{METRIC}")
            rho_min = traj["rho_min"]["value"]
            v = verdict(gap, rho_min, rho_threshold=cfg.rho_threshold, control=ctrl)
            v = below_chance_caveat(v, traj[f"self.{METRIC}"])
            v["rho0"] = pre0
            v["control_condition"] = cond.control if ctrl is not None else None
            st["verdict"] = v
    return [
        {k: v for k, v in e.items() if k != "cond"}
        | {
            "description": e["cond"].description,
            "control_of_others": e["cond"].shuffle,
            "model_trains": e["cond"].concurrent,
        }
        for e in entries.values()
    ]


def below_chance_caveat(v: dict[str, Any], self_row: dict[str, Any] | None) -> dict[str, Any]:
    """A "coupling" verdict whose Self is not above chance (its interval reaches 0) rests on
    Orig below chance, not on tracking: it is called so, and made "inconclusive"."""
    lo = None if not self_row else self_row.get("lo")
    if v["verdict"] == "coupling" and (lo is None or lo <= 0):
        v = dict(v)
        v["verdict"] = "inconclusive"
        v["text"] += "; but Self is not above chance, so the gap comes from Orig below it"
    return v


def _rho0(state: dict[str, Any], task: str, cond: Any) -> dict[str, Any] | None:
    """The precondition measured before training on labels from another model (the labels
    stage) or explaining M0's labels by a later checkpoint (the drift stage)."""
    if cond.labels == "other":
        return state["stages"].get(f"{task}/labels-other", {}).get("precondition")
    if cond.start != "m0":
        got = state["stages"].get(f"{task}/drift", {}).get("reached", {}).get(cond.start)
        return None if got is None else {"rho": got["rho"], "step": got["step"]}
    return None
