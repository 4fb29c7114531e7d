"""The coupling map: finished coupling runs (of one or several sweeps, or single runs)
aggregated over ρ, without loading a model.

Every checkpoint after the start of every run's main condition is a point (x = ρ_t, y = the
gap Self − Orig, or the coupling index c), per task, setting and scalar explainer; the values
are recomputed from the evaluation's ``predictions.jsonl`` (or ``.jsonl.gz``) by
:func:`introspect.experiment.verdicts.condition_statistics` (the report's own functions), and
checked against its ``metrics.jsonl``. The points are pooled in cells (task, explainer,
setting, ρ bin) with a hierarchical bootstrap over seeds and pairs
(:mod:`introspect.experiment.mapstats`); the null is the runs' shuffled-label conditions,
pooled the same way. The declared endpoints of the sweeps are tested with one-sided bootstrap
p-values and Holm's correction over the endpoints.

Writes ``map.json`` (runs, points, cells, null, endpoints), ``map.md`` and, per task and
explainer, ``figures/gap_vs_rho-<task>-<explainer>.png`` and ``figures/c_vs_rho-...png``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from introspect._io import write_json_atomic
from introspect._progress import say_stderr
from introspect.errors import BadInputError
from introspect.experiment.mapstats import (
    Point,
    Unit,
    bootstrap_p,
    hierarchical_bootstrap,
    holm,
    interval,
)
from introspect.experiment.spec import DEFAULT_RHO_BINS, Endpoint, parse_spec

__all__ = ["MapOptions", "build_map", "load_runs"]

STATS = ("rho", "self", "orig", "gap", "c")
ROLES = ("main", "null")


@dataclass(frozen=True)
class MapOptions:
    rho_bins: tuple[float, ...] = DEFAULT_RHO_BINS
    n_boot: int = 1000
    seed: int = 0
    alpha: float = 0.05
    null_min_runs: int = 3
    explainers: tuple[str, ...] = ("probe", "probe-diff", "verbal-score")
    level: float = 0.95

    def __post_init__(self) -> None:
        from introspect.errors import UsageError
        from introspect.experiment.verdicts import SCALAR_EXPLAINERS

        edges = self.rho_bins
        problems = []
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            problems.append(f"rho bins must be at least 2 increasing edges, got {list(edges)}")
        bad = [e for e in self.explainers if e not in SCALAR_EXPLAINERS]
        if bad or not self.explainers:
            problems.append(f"explainers {bad} unknown; choose from {', '.join(SCALAR_EXPLAINERS)}")
        if self.n_boot < 0 or self.null_min_runs < 1 or not 0 < self.alpha < 1:
            problems.append("n_boot >= 0, null_min_runs >= 1 and 0 < alpha < 1 are needed")
        if problems:
            raise UsageError("; ".join(problems))


@dataclass
class MapPoint:
    """One checkpoint of one explainer in one run's main or shuffled-label condition."""

    row: dict[str, Any]
    unit: str
    arrays: Point


@dataclass
class MapData:
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    points: list[MapPoint] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)
    spec_map: dict[str, Any] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ loading


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path}: cannot be read as JSON ({exc})") from None


def _run_dirs(paths: Sequence[str | Path], data: MapData) -> list[Path]:
    """The coupling run directories named by ``paths`` (sweep directories stand for their
    runs); the sweeps' endpoints and map defaults are collected into ``data``."""
    from introspect.experiment.sweep import ENDPOINTS_JSON, RUNS_DIR, SWEEP_JSON

    out: list[Path] = []
    seen: dict[str, Endpoint] = {}
    for p in map(Path, paths):
        if (p / SWEEP_JSON).is_file():
            doc = _read_json(p / SWEEP_JSON)
            spec = parse_spec(doc["spec"] | {"endpoints": []}, source=f"{p / SWEEP_JSON} spec")
            data.spec_map = {**spec.map, **data.spec_map}
            ends = _read_json(p / ENDPOINTS_JSON)["endpoints"]
            for e in ends:
                ep = Endpoint(**{**e, "rho": tuple(e["rho"])})
                if ep.name in seen and seen[ep.name] != ep:
                    raise BadInputError(
                        f"{p / ENDPOINTS_JSON}: endpoint {ep.name!r} is declared differently "
                        "by another sweep"
                    )
                if ep.name not in seen:
                    seen[ep.name] = ep
                    data.endpoints.append(ep)
            out.extend(p / RUNS_DIR / name for name in doc["runs"])
        elif (p / "state.json").is_file():
            out.append(p)
        else:
            raise BadInputError(f"{p}: neither a sweep (no sweep.json) nor a coupling run")
    return out


def _by_point(records: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, Any]]:
    """(explainer, checkpoint) -> arrays of pred, current, label over the pairs sorted by id."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((str(r["explainer"]), r["checkpoint"]), []).append(r)
    out = {}
    for key, recs in groups.items():
        recs = sorted(recs, key=lambda r: str(r["id"]))
        out[key] = {"ids": [str(r["id"]) for r in recs]} | {
            k: np.asarray([r[k] for r in recs]) for k in ("pred", "current", "label")
        }
    return out


def _check_metrics(edir: Path, stats: dict[str, Any], data: MapData) -> None:
    """Notes where ``metrics.jsonl`` disagrees with the values recomputed from the predictions
    (a run scored by another version: ``introspect experiment rescore`` updates it)."""
    from introspect.evaluation import read_jsonl

    path = edir / "metrics.jsonl"
    if not path.is_file():
        return
    stored = {(r["explainer"], r["checkpoint"], r["metric"]): r["value"] for r in read_jsonl(path)}
    for expl, st in stats.items():
        for row in st["checkpoints"]:
            for s in ("self", "orig", "gap"):
                have = stored.get((expl, row["checkpoint"], f"{s}.pearson"))
                want = row[s]["value"]
                if have is None and want is None:
                    continue
                if have is None or want is None or abs(have - want) > 1e-9:
                    data.mismatches.append(f"{path}: {expl} step {row['checkpoint']} {s}")


def _load_run(rdir: Path, data: MapData, explainers: Sequence[str]) -> None:
    from introspect.evaluation import read_jsonl
    from introspect.experiment.coupling import _config_from_json, plan_stages
    from introspect.experiment.verdicts import condition_statistics

    state = _read_json(rdir / "state.json")
    if not state.get("complete"):
        data.skipped.append({"run": str(rdir), "why": "not complete"})
        return
    cfg = _config_from_json(state["config"])
    info = _read_json(rdir / "config.json") if (rdir / "config.json").is_file() else {}
    run = {
        "run": info.get("name", rdir.name),
        "path": str(rdir),
        "setting": cfg.setting,
        "seed": cfg.seed,
        "lr": cfg.lr,
        "w_reg": cfg.w_reg,
        "label_source": cfg.labels,
        "model": cfg.model,
        "values": info.get("values", {}),
    }
    data.runs.append(run)
    for name, kind, args in plan_stages(cfg):
        cond = args.get("cond")
        if kind != "eval" or not (cond.trajectory or cond.shuffle):
            continue
        if name not in state["completed"] or state["stages"][name].get("skipped"):
            continue
        edir = rdir / args["task"] / f"eval-{cond.name}"
        stats = condition_statistics(edir, n_boot=0, seed=cfg.seed)
        _check_metrics(edir, stats, data)
        preds = edir / "predictions.jsonl"
        arrays = _by_point(read_jsonl(preds)) if stats else {}
        for expl in explainers:
            for row in stats.get(expl, {}).get("checkpoints", []):
                if row["checkpoint"] == 0:  # the start: the explainer has not trained
                    continue
                a = arrays[(expl, row["checkpoint"])]
                digest = hashlib.sha1("\n".join(a["ids"]).encode()).hexdigest()[:10]
                values = {s: row[s]["value"] for s in STATS}
                data.points.append(
                    MapPoint(
                        row={
                            **run,
                            "task": args["task"],
                            "condition": cond.name,
                            "role": "null" if cond.shuffle else "main",
                            "explainer": expl,
                            "checkpoint": row["checkpoint"],
                            **values,
                        },
                        unit=f"{args['task']}/seed-{cfg.seed}/{digest}",
                        arrays=Point(a["pred"], a["current"], a["label"]),
                    )
                )


def load_runs(paths: Sequence[str | Path], *, explainers: Sequence[str] | None = None) -> MapData:
    """Every finished run under ``paths`` (sweep or coupling run directories) as map points,
    with the sweeps' declared endpoints. Reads JSON files only: no model is loaded."""
    data = MapData()
    dirs = _run_dirs(paths, data)
    if explainers is None:
        explainers = data.spec_map.get("explainers") or MapOptions.explainers
    for rdir in dirs:
        if not (rdir / "state.json").is_file():
            data.skipped.append({"run": str(rdir), "why": "not started"})
            continue
        try:
            _load_run(rdir, data, explainers)
        except (KeyError, ValueError) as exc:
            if isinstance(exc, BadInputError):
                raise
            raise BadInputError(f"{rdir}: not a readable coupling run ({exc})") from exc
    return data


# ------------------------------------------------------------------------------- statistics


def _units(points: Sequence[MapPoint]) -> list[Unit]:
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(p.unit, []).append(p.arrays)
    return [Unit(k, tuple(v)) for k, v in sorted(groups.items())]


def _clean(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def pooled(
    points: Sequence[MapPoint], opts: MapOptions, stats: Sequence[str] = STATS
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]]:
    """Per statistic ``{value, lo, hi}`` of the mean over ``points`` with its hierarchical
    bootstrap interval, and the replicates."""
    units = _units(points)
    point, reps = hierarchical_bootstrap(units, stats, n_boot=opts.n_boot, seed=opts.seed)
    out = {}
    for s in stats:
        lo, hi = interval(reps[s], opts.level)
        out[s] = {"value": _clean(point[s]), "lo": _clean(lo), "hi": _clean(hi)}
    return out, reps


def _counts(points: Sequence[MapPoint]) -> dict[str, int]:
    return {
        "n_points": len(points),
        "n_runs": len({p.row["path"] for p in points}),
        "n_seeds": len({p.unit for p in points}),
    }


def _bin_of(rho: float | None, edges: Sequence[float]) -> int | None:
    if rho is None or not math.isfinite(rho) or not edges[0] <= rho <= edges[-1]:
        return None
    return min(int(np.searchsorted(edges, rho, side="right")) - 1, len(edges) - 2)


def cells(data: MapData, opts: MapOptions) -> tuple[list[dict], list[dict]]:
    """The cells (task, explainer, setting, ρ bin) of the main points and the null rows (task,
    explainer, setting) of the shuffled-label points, each with intervals."""
    groups: dict[tuple, list[MapPoint]] = {}
    nulls: dict[tuple, list[MapPoint]] = {}
    for p in data.points:
        r = p.row
        key = (r["task"], r["explainer"], r["setting"])
        if r["role"] == "null":
            nulls.setdefault(key, []).append(p)
            continue
        b = _bin_of(r["rho"], opts.rho_bins)
        if b is not None:
            groups.setdefault((*key, b), []).append(p)
    out = []
    for (task, expl, setting, b), pts in sorted(groups.items()):
        est, _ = pooled(pts, opts)
        lo, hi = opts.rho_bins[b], opts.rho_bins[b + 1]
        out.append({"task": task, "explainer": expl, "setting": setting, "bin": [lo, hi],
                    **_counts(pts), **est})  # fmt: skip
    null_rows = []
    for (task, expl, setting), pts in sorted(nulls.items()):
        est, _ = pooled(pts, opts)
        n = _counts(pts)
        null_rows.append({"task": task, "explainer": expl, "setting": setting, **n, **est,
                          "enough": n["n_runs"] >= opts.null_min_runs})  # fmt: skip
    return out, null_rows


def decide_endpoints(data: MapData, null_rows: list[dict], opts: MapOptions) -> list[dict]:
    """Each declared endpoint: its statistic pooled over the main points in its ρ region with
    the hierarchical bootstrap, the one-sided p-value, Holm's adjusted p-value over all
    endpoints with data, and the verdict."""
    rows = []
    for e in data.endpoints:
        lo, hi = e.rho
        pts = [
            p
            for p in data.points
            if p.row["role"] == "main"
            and (p.row["task"], p.row["setting"], p.row["explainer"])
            == (e.task, e.setting, e.explainer)
            and p.row["rho"] is not None
            and lo <= p.row["rho"] <= hi
        ]
        row = {**e.to_json(), "null_value": e.null_value, **_counts(pts)}
        if pts:
            est, reps = pooled(pts, opts, stats=("rho", e.statistic))
            row |= {"estimate": est[e.statistic], "rho_mean": est["rho"]["value"]}
            r = reps[e.statistic]
            if e.statistic == "c":  # a replicate without a positive fit shows no tracking
                r = np.where(np.isfinite(r), r, e.null_value)
            row["p"] = bootstrap_p(r, e.null_value, e.direction)
        else:
            row |= {"estimate": None, "rho_mean": None, "p": math.nan}
        row["null"] = next(
            (n for n in null_rows if (n["task"], n["explainer"], n["setting"])
             == (e.task, e.explainer, e.setting)), None,
        )  # fmt: skip
        rows.append(row)
    for row, adj in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = _clean(adj)
        row["p"] = _clean(row["p"])
        row["verdict"] = _endpoint_verdict(row, opts)
    return rows


def _endpoint_verdict(row: dict[str, Any], opts: MapOptions) -> str:
    null = row["null"]
    if not row["n_points"] or row["p_holm"] is None:
        return "no data"
    # A control that finds signal withholds the verdict however few its runs; their number
    # (``null_min_runs``) decides only whether a band is drawn.
    if null:
        s = null["self"]
        if s["lo"] is None or s["hi"] is None or not s["lo"] <= 0.0 <= s["hi"]:
            return "withheld: control failed"
    return "supported" if row["p_holm"] <= opts.alpha else "not supported"


def options_for(data: MapData, **given: Any) -> MapOptions:
    """The map's options: those given (not None), else the sweeps' ``[map]`` table, else the
    defaults."""
    merged = {**data.spec_map, **{k: v for k, v in given.items() if v is not None}}
    for k in ("rho_bins", "explainers"):
        if k in merged:
            merged[k] = tuple(merged[k])
    return MapOptions(**merged)


def build_map(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    say: Callable[[str], None] = say_stderr,
    **options: Any,
) -> dict[str, Any]:
    """Aggregates the finished runs under ``paths`` into ``out`` (``map.json``, ``map.md`` and
    the figures); returns ``map.json``'s contents. ``options``: :class:`MapOptions` fields
    (None: the sweeps' ``[map]`` table, else the default). No model is loaded."""
    from introspect.experiment.mapreport import write_figures, write_markdown

    explainers = options.get("explainers")
    data = load_runs(paths, explainers=explainers)
    opts = options_for(data, **options)
    say(f"map: {len(data.runs)} finished runs, {len(data.points)} points")
    for s in data.skipped:
        say(f"  skipped {s['run']}: {s['why']}")
    if data.mismatches:
        say(f"  {len(data.mismatches)} metrics.jsonl value(s) differ from the predictions' "
            "(the map uses the predictions'); first: " + data.mismatches[0])  # fmt: skip
    cell_rows, null_rows = cells(data, opts)
    ends = decide_endpoints(data, null_rows, opts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = write_figures(data, cell_rows, null_rows, opts, out)
    doc = {
        "options": opts.__dict__
        | {"rho_bins": list(opts.rho_bins), "explainers": list(opts.explainers)},
        "runs": data.runs,
        "skipped": data.skipped,
        "metrics_mismatches": data.mismatches,
        "endpoints": ends,
        "cells": cell_rows,
        "null": null_rows,
        "points": [p.row for p in data.points],
        "figures": figures,
    }
    write_json_atomic(out / "map.json", doc)
    write_markdown(doc, out / "map.md")
    say(f"map written: {out / 'map.md'}")
    return doc
