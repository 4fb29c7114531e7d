"""The coupling map's figures (matplotlib, Agg) and ``map.md``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from introspect.experiment.mapstats import imitator_gap, tracker_gap

__all__ = ["endpoint_lines", "write_figures", "write_markdown"]

_COLOURS = {
    "concurrent": "tab:blue",
    "explain-only": "tab:orange",
    "earlier-checkpoint": "tab:green",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _mean(values: list[float | None]) -> float:
    ok = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(ok)) if ok else math.nan


def _null_band(ax, null_rows: list[dict], key: str, rhos: list[float], label: str) -> None:
    """The grey band: the shuffled-label runs' pooled interval, over the ρ range they cover."""
    rows = [r for r in null_rows if r["enough"] and r[key]["lo"] is not None]
    if not rows:
        return
    lo = min(r[key]["lo"] for r in rows)
    hi = max(r[key]["hi"] for r in rows)
    x0, x1 = (min(rhos), max(rhos)) if rhos else ax.get_xlim()
    if x1 - x0 < 0.02:
        x0, x1 = x0 - 0.01, x1 + 0.01
    ax.fill_between([x0, x1], [lo, lo], [hi, hi], color="0.6", alpha=0.3, lw=0, label=label)


def _panel(ax, stat: str, points, cell_rows, null_rows) -> None:
    settings = list(dict.fromkeys(p["setting"] for p in points))
    for s in settings:
        colour = _COLOURS.get(s, "tab:purple")
        mine = [p for p in points if p["setting"] == s and p["role"] == "main"]
        xs = np.asarray([p["rho"] for p in mine], dtype=np.float64)  # None: NaN, not drawn
        ys = np.asarray([p[stat] for p in mine], dtype=np.float64)
        ax.scatter(xs, ys, s=14, color=colour, alpha=0.7, label=f"{s}: checkpoints")
        for c in (c for c in cell_rows if c["setting"] == s):
            est = c[stat]
            if est["lo"] is None:
                continue
            lo, hi = c["bin"]
            ax.fill_between([lo, hi], [est["lo"]] * 2, [est["hi"]] * 2, color=colour, alpha=0.18)
            ax.plot([lo, hi], [est["value"]] * 2, color=colour, lw=1.5)
    null_pts = [p for p in points if p["role"] == "null"]
    _null_band(ax, null_rows, stat, [p["rho"] for p in null_pts if p["rho"] is not None],
               "shuffled labels (null), 95%")  # fmt: skip
    main = [p for p in points if p["role"] == "main"]
    rho_lo = min([p["rho"] for p in main if p["rho"] is not None] + [0.0])
    grid = np.linspace(rho_lo, 1.0, 50)
    if stat == "gap":
        orig, self_ = _mean([p["orig"] for p in main]), _mean([p["self"] for p in main])
        if math.isfinite(orig):
            ax.plot(grid, imitator_gap(grid, orig), "k--", lw=1,
                    label=f"pure imitator: Orig·(ρ−1), Orig = {orig:.2f}")  # fmt: skip
        if math.isfinite(self_):
            ax.plot(grid, tracker_gap(grid, self_), "k:", lw=1,
                    label=f"pure tracker: Self·(1−ρ), Self = {self_:.2f}")  # fmt: skip
        ax.axhline(0.0, color="0.3", lw=0.6)
        ax.set_ylabel("gap = Self − Orig (Pearson r)")
    else:
        ax.axhline(0.0, color="k", ls="--", lw=1, label="pure imitator: c = 0")
        ax.axhline(1.0, color="k", ls=":", lw=1, label="pure tracker: c = 1")
        ax.axhline(0.5, color="0.3", lw=0.6)
        ax.set_ylabel("coupling index c")
        # c is a ratio: where a + b is near 0 (noise, the null) it is huge. The axis shows the
        # points, not those tails (a band that leaves it is cut at its edge).
        ys = np.asarray([p["c"] for p in main], dtype=np.float64)
        ys = ys[np.isfinite(ys)]
        lo, hi = np.quantile(ys, [0.05, 0.95]) if ys.size else (0.0, 1.0)
        ax.set_ylim(max(min(-0.25, lo - 0.1), -2.0), min(max(1.25, hi + 0.1), 3.0))
    ax.set_xlabel("ρ_t = r(current Δ, labels)")


def write_figures(data, cell_rows, null_rows, opts, out: Path) -> list[str]:
    """Per task and explainer, the gap and c against ρ; returns the paths (relative to
    ``out``)."""
    plt = _pyplot()
    rows = [p.row for p in data.points]
    keys = sorted({(r["task"], r["explainer"]) for r in rows})
    (out / "figures").mkdir(parents=True, exist_ok=True)
    written = []
    for task, expl in keys:
        pts = [r for r in rows if (r["task"], r["explainer"]) == (task, expl)]
        cs = [c for c in cell_rows if (c["task"], c["explainer"]) == (task, expl)]
        ns = [n for n in null_rows if (n["task"], n["explainer"]) == (task, expl)]
        for stat in ("gap", "c"):
            fig, ax = plt.subplots(figsize=(6.5, 4.5))
            _panel(ax, stat, pts, cs, ns)
            for edge in opts.rho_bins[1:-1]:
                ax.axvline(edge, color="0.85", lw=0.6, zorder=0)
            ax.set_title(f"{task}, {expl}: {'gap' if stat == 'gap' else 'c'} against ρ")
            ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            rel = f"figures/{stat}_vs_rho-{task}-{expl}.png"
            fig.savefig(out / rel, dpi=110)
            plt.close(fig)
            written.append(rel)
    return written


# ----------------------------------------------------------------------------------- markdown


def _ci(est: dict[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "undefined"
    if est.get("lo") is None or est.get("hi") is None:
        return f"{est['value']:+.3f} (no interval)"
    return f"{est['value']:+.3f} [{est['lo']:+.2f}, {est['hi']:+.2f}]"


def _p(v: float | None) -> str:
    return "–" if v is None else f"{v:.4f}"


def endpoint_lines(doc: dict[str, Any]) -> list[str]:
    o = doc["options"]
    lines = [
        "## Endpoints (declared before the runs)",
        "",
        f"Each endpoint pools the main condition's checkpoints whose ρ_t lies in its region. "
        f"p: one-sided hierarchical-bootstrap p-value ({o['n_boot']} replicates, seed "
        f"{o['seed']}): (1 + replicates on the null's side) / (1 + replicates). Holm: Holm's "
        f"step-down adjustment over the {sum(1 for e in doc['endpoints'] if e['p'] is not None)}"
        f" endpoints with data; *supported* where it is at most α = {o['alpha']:g}. Withheld "
        "where the shuffled-label runs' Self (pooled) has an interval excluding 0.",
        "",
        "| endpoint | task | setting | explainer | ρ region | tested | runs | seeds | points | "
        "mean ρ | estimate | p | Holm p | verdict |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for e in doc["endpoints"]:
        sign = ">" if e["direction"] == "greater" else "<"
        rho = "–" if e["rho_mean"] is None else f"{e['rho_mean']:+.3f}"
        lines.append(
            f"| {e['name']} | {e['task']} | {e['setting']} | {e['explainer']} | "
            f"[{e['rho'][0]:g}, {e['rho'][1]:g}] | {e['statistic']} {sign} {e['null_value']:g} | "
            f"{e['n_runs']} | {e['n_seeds']} | {e['n_points']} | {rho} | {_ci(e['estimate'])} | "
            f"{_p(e['p'])} | {_p(e['p_holm'])} | **{e['verdict']}** |"
        )
    return lines if doc["endpoints"] else ["## Endpoints", "", "No endpoints were declared."]


def write_markdown(doc: dict[str, Any], path: Path) -> Path:
    o = doc["options"]
    lines = [
        "# Coupling map",
        "",
        f"{len(doc['runs'])} finished runs, {len(doc['points'])} points (checkpoints after the "
        f"start; explainers {', '.join(o['explainers'])}). Intervals: 95% hierarchical bootstrap "
        f"(seeds, then pairs within seed; {o['n_boot']} replicates, seed {o['seed']}). Every "
        "number is recomputed from the runs' predictions. A cell of fewer than 3 seeds has a "
        "seed level with little to resample: its interval is too narrow.",
        "",
        *endpoint_lines(doc),
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in doc["figures"]],
        "",
        "## Cells (main conditions)",
        "",
        "| task | explainer | setting | ρ bin | runs | seeds | points | ρ | Self | Orig | gap "
        "| c |",
        "|---|---|---|---|---:|---:|---:|---|---|---|---|---|",
    ]
    for c in doc["cells"]:
        lines.append(
            f"| {c['task']} | {c['explainer']} | {c['setting']} | [{c['bin'][0]:g}, "
            f"{c['bin'][1]:g}] | {c['n_runs']} | {c['n_seeds']} | {c['n_points']} | "
            f"{_ci(c['rho'])} | {_ci(c['self'])} | {_ci(c['orig'])} | {_ci(c['gap'])} | "
            f"{_ci(c['c'])} |"
        )
    lines += [
        "",
        f"## Null: shuffled-label runs (band drawn with at least {o['null_min_runs']} runs)",
        "",
        "| task | explainer | setting | runs | seeds | ρ | Self | gap | c |",
        "|---|---|---|---:|---:|---|---|---|---|",
    ]
    for n in doc["null"]:
        lines.append(
            f"| {n['task']} | {n['explainer']} | {n['setting']} | {n['n_runs']} | "
            f"{n['n_seeds']} | {_ci(n['rho'])} | {_ci(n['self'])} | {_ci(n['gap'])} | "
            f"{_ci(n['c'])} |"
        )
    lines += ["", "## Runs", "", "| run | setting | seed | lr | w_reg | labels |",
              "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for r in doc["runs"]:
        lines.append(
            f"| {r['run']} | {r['setting']} | {r['seed']} | {r['lr']:g} | {r['w_reg']:g} | "
            f"{r['label_source']} |"
        )
    for s in doc["skipped"]:
        lines.append(f"\nNot included: {s['run']} ({s['why']}).")
    if doc["metrics_mismatches"]:
        lines.append(
            f"\n{len(doc['metrics_mismatches'])} value(s) in metrics.jsonl differ from those "
            "recomputed from the predictions (the map uses the latter; `introspect experiment "
            "rescore` updates a run)."
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
