"""PNG plots of an evaluation over checkpoints (matplotlib, headless).

- :func:`plot_coupling`: Self and Orig (with their bootstrap intervals) against the training step,
  one panel per metric, one colour per explainer;
- :func:`plot_behaviour`: the current model's mean f(x), f(x') and Δ against the step, and the
  correlation of its Δ with the fixed labels.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_behaviour", "plot_coupling"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def plot_coupling(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Self vs Orig per explainer over checkpoints, from ``metrics.jsonl`` rows."""
    plt = _pyplot()
    rows = list(rows)
    metrics = sorted({r["metric"].split(".", 1)[1] for r in rows})
    explainers = list(dict.fromkeys(r["explainer"] for r in rows))
    fig, axes = plt.subplots(
        1, max(1, len(metrics)), figsize=(5.5 * max(1, len(metrics)), 4), squeeze=False
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, m in zip(axes[0], metrics, strict=False):
        for k, name in enumerate(explainers):
            colour = colours[k % len(colours)]
            for side, style in (("self", "-"), ("orig", "--")):
                sel = sorted(
                    (r for r in rows if r["explainer"] == name and r["metric"] == f"{side}.{m}"),
                    key=lambda r: r["checkpoint"],
                )
                if not sel:
                    continue
                x = [r["checkpoint"] for r in sel]
                v = [_num(r["value"]) for r in sel]
                lo = [_num(r["lo"]) for r in sel]
                hi = [_num(r["hi"]) for r in sel]
                ax.plot(x, v, style, marker="o", color=colour, label=f"{name} {side}")
                ax.fill_between(x, lo, hi, color=colour, alpha=0.12 if side == "self" else 0.06)
        ax.set_title(f"Self vs Orig ({m}, 95% bootstrap intervals)")
        ax.set_xlabel("training step")
        ax.set_ylabel(m)
        ax.axhline(0.0, color="grey", lw=0.5)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_behaviour(rows: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """The behaviour shift over checkpoints, from ``behaviour.jsonl`` rows."""
    plt = _pyplot()
    rows = sorted(rows, key=lambda r: r["checkpoint"])
    x = [r["checkpoint"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("mean_f_x", "mean f(x)"),
        ("mean_f_mod", "mean f(x')"),
        ("mean_delta", "mean Δ"),
        ("objective_logprob", "log p(objective | x)"),
    ):
        vals = [_num(r.get(key)) for r in rows]
        if any(v == v for v in vals):
            a.plot(x, vals, marker="o", label=label)
    a.set_title("behaviour of the current model on held-out pairs")
    a.set_xlabel("training step")
    a.axhline(0.0, color="grey", lw=0.5)
    a.legend(fontsize=8)
    b.plot(x, [_num(r.get("delta_vs_labels")) for r in rows], marker="o")
    b.set_title("Pearson(current Δ, fixed labels)")
    b.set_xlabel("training step")
    b.set_ylim(-1.05, 1.05)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
