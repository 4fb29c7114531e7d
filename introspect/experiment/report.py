"""``report.md`` of a coupling experiment, from the evaluations' ``metrics.jsonl`` rows."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from introspect._io import write_atomic, write_json_atomic

__all__ = ["collect_results", "final_rows", "write_report"]

METRIC = "pearson"
EXPLAINERS = ("probe", "probe-diff", "verbal", "verbal-score", "ridge-m0")
# The metric each explainer is reported with: Pearson r for the scalar probes, Cohen's kappa of
# the three bins for the verbal explainer (0 = chance, as for r; exact match and changed-F1 are
# in metrics.jsonl too).
METRIC_OF = {"verbal": "kappa"}


def metric_of(explainer: str) -> str:
    return METRIC_OF.get(explainer, METRIC)


def final_rows(rows: list[dict[str, Any]], explainer: str) -> dict[str, dict[str, Any]]:
    """The ``self``/``orig``/``gap`` rows of ``explainer`` at its last checkpoint, in the
    explainer's reported metric (:func:`metric_of`)."""
    suffix = f".{metric_of(explainer)}"
    mine = [r for r in rows if r["explainer"] == explainer and r["metric"].endswith(suffix)]
    if not mine:
        return {}
    last = max(r["checkpoint"] for r in mine)
    return {r["metric"].split(".")[0]: r for r in mine if r["checkpoint"] == last}


def collect_results(out: Path, stages, state: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (task, condition): its last-checkpoint rows per explainer, the behaviour
    rows, or why it was skipped."""
    from introspect.evaluation import read_jsonl

    results = []
    for name, kind, args in stages:
        if kind != "eval":
            continue
        task, cond = args["task"], args["cond"]
        entry: dict[str, Any] = {"task": task, "condition": cond.name, "cond": cond}
        info = state["stages"].get(name, {})
        edir = out / task / f"eval-{cond.name}"
        if info.get("skipped"):
            entry["skipped"] = info["skipped"]
        elif (edir / "metrics.jsonl").is_file():
            rows = read_jsonl(edir / "metrics.jsonl")
            entry["rows"] = {e: final_rows(rows, e) for e in EXPLAINERS}
            entry["behaviour"] = read_jsonl(edir / "behaviour.jsonl")
            entry["dir"] = edir.relative_to(out).as_posix()
        else:
            entry["skipped"] = "not evaluated"
        results.append(entry)
    return results


def _summary_plot(results: list[dict[str, Any]], path: Path) -> Path | None:
    """Self and Orig per condition at the last checkpoint: one panel for the direct probe (r) and,
    where the run has one, one for the verbal explainer (κ)."""
    from introspect.evaluation.plots import _pyplot

    panels = []
    for expl in ("probe", "verbal"):
        shown = [e for e in results if "rows" in e and e["rows"].get(expl)]
        if shown:
            panels.append((expl, shown))
    if not panels:
        return None
    plt = _pyplot()
    widest = max(len(shown) for _, shown in panels)
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(max(6.0, 1.3 * widest + 2), 4 * len(panels)), squeeze=False
    )
    width = 0.38
    for ax, (expl, shown) in zip(axes[:, 0], panels, strict=True):
        for k, (side, colour) in enumerate((("self", "C0"), ("orig", "C1"))):
            xs, vs, errs = [], [], [[], []]
            for i, e in enumerate(shown):
                r = e["rows"][expl].get(side) or {}
                v = r.get("value")
                v = float("nan") if v is None else v
                lo = v if r.get("lo") is None else r["lo"]
                hi = v if r.get("hi") is None else r["hi"]
                xs.append(i + (k - 0.5) * width)
                vs.append(v)
                errs[0].append(max(0.0, v - lo))
                errs[1].append(max(0.0, hi - v))
            ax.bar(xs, vs, width, yerr=errs, color=colour, capsize=3, label=side.capitalize())
        ax.set_xticks(range(len(shown)))
        ax.set_xticklabels([f"{e['task']}\n{e['condition']}" for e in shown], fontsize=8)
        ax.axhline(0.0, color="grey", lw=0.5)
        what = "Pearson r" if metric_of(expl) == METRIC else "Cohen's κ"
        ax.set_ylabel(f"{what} ({expl}, last checkpoint)")
        ax.set_title(f"{expl}: Self vs Orig per condition (95% bootstrap intervals)")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _environment() -> dict[str, Any]:
    import torch

    from introspect import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "introspect": __version__,
    }


def _figures(out: Path, results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(title, relative path) of the summary figure and the concurrent runs' figures."""
    figures = []
    try:
        p = _summary_plot(results, out / "figures" / "summary.png")
        if p is not None:
            figures.append(("Self and Orig per condition", p.relative_to(out).as_posix()))
    except ImportError:
        pass
    for e in results:
        if "dir" in e and e["condition"] == "concurrent":
            for fname, what in (
                ("self_vs_orig.png", "Self vs Orig over training"),
                ("behaviour.png", "behaviour shift"),
            ):
                if (out / e["dir"] / fname).is_file():
                    figures.append((f"{e['task']}, concurrent: {what}", f"{e['dir']}/{fname}"))
    return figures


_DEFINITIONS = (
    "Self = agreement of an explainer's prediction of Δ with the *current* model's Δ "
    "(re-extracted at the checkpoint on held-out pairs); Orig = agreement with the fixed "
    "labels it was trained on; gap = Self − Orig. ρ_t = r(current Δ, labels): an explainer "
    "that merely imitates its labels scores Self ≈ Orig·ρ_t, so where ρ_t is low Self < Orig "
    "is forced and the claim is not tested. c = a/(a + b) from regressing the standardised "
    "prediction on the standardised current Δ (a) and labels (b): 0 pure imitation, 1 pure "
    "tracking, above 0.5 tracks more than it imitates. Intervals: paired bootstrap, 95%, over "
    "held-out pairs; trajectory values are means over the checkpoints after the start, with "
    "pairs resampled jointly across them. Explainers: `probe` (linear, on the hidden state of "
    "x, trained alongside), `probe-diff` (linear, on h(x') − h(x)), `verbal` (the model "
    "itself, stating how its answer would change without the feature; Cohen's κ of its "
    "answers against the current Δ binned at the labels' share of unchanged, and the labels "
    "binned at the training threshold), `verbal-score` (the same model's log p(more likely) − "
    "log p(less likely), Pearson r like the probes) and `ridge-m0` (ridge on the starting "
    "model's hidden states, fitted once). Every number is recomputed from the "
    "`predictions.jsonl` of the evaluation directory named."
)


def _header(cfg, state: dict[str, Any], figures) -> list[str]:
    env = _environment()
    lines = [
        "# Introspective coupling experiment",
        "",
        f"Model `{cfg.model}`, setting **{cfg.setting}**, labels `{cfg.labels}`, tasks "
        f"{', '.join(cfg.tasks)}, preset `{cfg.preset}`, seed {cfg.seed}; "
        + (f"started {state['started_utc']}, " if state.get("started_utc") else "")
        + f"report written {env['date']} ({env['machine']}; torch {env['torch']}, "
        f"{env['torch_threads']} threads; introspect {env['introspect']}).",
        "",
        _DEFINITIONS,
        "",
        "## Figures",
        "",
    ]
    for title, rel in figures:
        lines += [f"![{title}]({rel})", ""]
    if not figures:
        lines += ["(no figures: matplotlib is not installed)", ""]
    return lines


def _results_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Self, Orig and the gap at the last checkpoint",
        "",
        "| task | condition | explainer | metric | step | Self | Orig | gap (Self − Orig) | "
        "r(current Δ, labels) | source |",
        "|---|---|---|---|---:|---|---|---|---|---|",
    ]
    for e in results:
        if "skipped" in e:
            what = "not run" if e["skipped"] == "not evaluated" else "skipped"
            lines.append(
                f"| {e['task']} | {e['condition']} | — | — | — | {what} | {what} | "
                f"{e['skipped']} | — | — |"
            )
            continue
        beh = e["behaviour"][-1] if e["behaviour"] else {}
        rdl = beh.get("delta_vs_labels")
        for expl in EXPLAINERS:
            rows = e["rows"].get(expl) or {}
            if not rows:
                continue
            step = rows.get("self", {}).get("checkpoint", "")
            lines.append(
                f"| {e['task']} | {e['condition']} | {expl} | {metric_of(expl)} | {step} | "
                f"{_est(rows.get('self'))} "
                f"| {_est(rows.get('orig'))} | {_est(rows.get('gap'))} | "
                f"{'n/a' if rdl is None else f'{rdl:+.3f}'} | `{e['dir']}/metrics.jsonl` |"
            )
    lines += ["", "Conditions:", ""]
    for e in results:
        lines.append(f"- {e['task']}/{e['condition']}: {e['cond'].description}.")
    return lines


def _arrow(b0: dict[str, Any], b1: dict[str, Any], key: str) -> str:
    a, b = b0.get(key), b1.get(key)
    return "n/a" if a is None or b is None else f"{a:+.3f} → {b:+.3f}"


def _behaviour_table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Behaviour of the current model on the held-out pairs (start → last step):", ""]
    lines += [
        "| task | condition | mean Δ | mean f(x) | log p(objective \\| x) |",
        "|---|---|---|---|---|",
    ]
    for e in results:
        if "behaviour" not in e or not e["behaviour"]:
            continue
        b0, b1 = e["behaviour"][0], e["behaviour"][-1]
        lines.append(
            f"| {e['task']} | {e['condition']} | {_arrow(b0, b1, 'mean_delta')} | "
            f"{_arrow(b0, b1, 'mean_f_x')} | {_arrow(b0, b1, 'objective_logprob')} |"
        )
    return lines


def _est(r: dict[str, Any] | None, digits: int = 3) -> str:
    if not r or r.get("value") is None:
        return "n/a"
    s = f"{r['value']:+.{digits}f}"
    if r.get("lo") is not None and r.get("hi") is not None:
        s += f" [{r['lo']:+.2f}, {r['hi']:+.2f}]"
    return s


SHOWN = ("probe", "verbal-score", "probe-diff")


def _checkpoint_tables(entries: list[dict[str, Any]]) -> list[str]:
    """Per condition: ρ_t, Self, Orig, the gap and c at every checkpoint, per explainer."""
    lines = ["", "## Per checkpoint: ρ_t, Self, Orig, gap and c", ""]
    for e in entries:
        lines += [
            f"**{e['task']} / {e['condition']}** ({e['description']})",
            "",
            "| step | explainer | ρ_t | Self | Orig | gap | c |",
            "|---:|---|---|---|---|---|---|",
        ]
        for expl in SHOWN:
            st = e["explainers"].get(expl)
            for row in st["checkpoints"] if st else []:
                lines.append(
                    f"| {row['checkpoint']} | {expl} | {_est(row['rho'])} | {_est(row['self'])} "
                    f"| {_est(row['orig'])} | {_est(row['gap'])} | {_est(row['c'], 2)} |"
                )
        lines.append("")
    return lines


def _verdicts_section(cfg, entries: list[dict[str, Any]]) -> list[str]:
    """Verdicts over each trajectory, each naming the precondition it met or missed."""
    lines = [
        "## Verdicts over the trajectory",
        "",
        f"A claim is tested only where the smallest ρ_t over the checkpoints the verdict rests "
        f"on reaches {cfg.rho_threshold:g}; below it the verdict is *precondition not met* "
        "(not evidence either way). An explainer whose shuffled-label control finds signal "
        "(its Self interval excludes 0) has its verdicts withheld.",
        "",
        "| task | condition | explainer | mean gap | mean ρ | min ρ_t | mean c | ρ0 | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        for expl, st in e["explainers"].items():
            t, v = st["trajectory"], st["verdict"]
            if e["control_of_others"]:  # the shuffled-label control: its Self should be 0
                self_ = t["self.pearson"]
                ok = self_.get("lo") is not None and self_["lo"] <= 0 <= self_["hi"]
                lines.append(
                    f"| {e['task']} | {e['condition']} | {expl} | Self {_est(self_)} | "
                    f"{_est(t['rho'])} | {_est(t['rho_min'])} | — | — | control "
                    f"**{'passed' if ok else 'failed'}** (Self should be consistent with 0) |"
                )
                continue
            if not e.get("model_trains", True):  # Self = Orig by construction
                lines.append(
                    f"| {e['task']} | {e['condition']} | {expl} | {_est(t['gap.pearson'])} | "
                    f"{_est(t['rho'])} | {_est(t['rho_min'])} | — | — | control: the model "
                    "does not train, so Self = Orig (no verdict) |"
                )
                continue
            pre = v.get("rho0")
            rho0 = "—" if not pre or pre.get("rho") is None else f"{pre['rho']:+.3f}"
            lines.append(
                f"| {e['task']} | {e['condition']} | {expl} | {_est(t['gap.pearson'])} | "
                f"{_est(t['rho'])} | {_est(t['rho_min'])} | {_est(t['c'], 2)} | {rho0} | "
                f"**{v['verdict']}**: {v['text']} |"
            )
    return [*lines, ""]


def _wall_time_section(state: dict[str, Any], stages) -> list[str]:
    lines = ["", "## Wall time per stage", "", "| stage | seconds | note |", "|---|---:|---|"]
    total = 0.0
    for name, _kind, _ in stages:
        info = state["stages"].get(name)
        if info is None:
            continue
        total += float(info.get("seconds", 0.0))
        note = f"skipped: {info['skipped']}" if info.get("skipped") else ""
        lines.append(f"| {name} | {info.get('seconds', 0.0):.1f} | {note} |")
    return [
        *lines,
        f"| all stages before the report | {total:.1f} | |",
        "",
        "Stages completed in an earlier, interrupted invocation keep the time they took then.",
    ]


def _drift_section(cfg, state: dict[str, Any]) -> list[str]:
    """Where each ρ target's M1 was saved, jumped over or not reached, and r along the way."""
    lines: list[str] = []
    for task in cfg.tasks:
        info = state["stages"].get(f"{task}/drift")
        if not info or "history" not in info:
            continue
        lines += ["", f"## From M0 to M1: {task}", "", "| ρ target | M1 | step | r(Δ_M1, Δ_M0) |"]
        lines.append("|---:|---|---:|---:|")
        rows = [(v["target"], k, v["step"], f"{v['rho']:+.3f}") for k, v in info["reached"].items()]
        rows += [
            (v["target"], f"jumped over (from {v['before']:+.3f})", v["step"], f"{v['rho']:+.3f}")
            for v in info.get("jumped", {}).values()
        ]
        rows += [(t, "not reached", "—", "—") for t in info.get("not_reached", [])]
        lines += [f"| {t:g} | {m} | {k} | {r} |" for t, m, k, r in sorted(rows, reverse=True)]
        trace = ", ".join(f"{h['step']}: {h['rho']:+.2f}" for h in info["history"])
        lines += ["", f"r by step (learning rate {cfg.drift_lr:g}): {trace}."]
    return lines


def write_report(out: Path, cfg, state: dict[str, Any], stages) -> Path:
    """Writes ``report.md``, ``results.json`` and ``figures/summary.png`` into ``out``."""
    out = Path(out)
    from introspect.experiment.verdicts import experiment_verdicts

    results = collect_results(out, stages, state)
    entries = experiment_verdicts(out, cfg, stages, state)
    write_json_atomic(out / "verdicts.json", entries)
    lines = _header(cfg, state, _figures(out, results))
    lines += _verdicts_section(cfg, entries)
    lines += _results_table(results)
    lines += _behaviour_table(results)
    lines += _checkpoint_tables(entries)
    lines += _drift_section(cfg, state)
    lines += _wall_time_section(state, stages)
    lines += ["", "## Configuration", "", "```json", json.dumps(cfg.to_json(), indent=2), "```", ""]
    path = out / "report.md"
    write_atomic(path, "\n".join(lines).encode("utf-8"))
    write_json_atomic(
        out / "results.json",
        [
            {k: v for k, v in e.items() if k not in ("cond", "behaviour")}
            | {"description": e["cond"].description}
            for e in results
        ],
    )
    return path
