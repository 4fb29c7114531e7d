"""The ``introspect eval`` command line (argparse only at import: building the parser imports
no torch)."""

from __future__ import annotations

import argparse

from introspect._args import EXIT_CODES, add_device_argument, add_json_argument


def _cmd_eval(args: argparse.Namespace) -> int:
    from introspect._args import write_json_output
    from introspect.evaluation.checkpoints import evaluate_training
    from introspect.models import resolve_device

    resolve_device(args.device)
    if args.n_boot < 0:
        from introspect.errors import UsageError

        raise UsageError(f"--n-boot must be >= 0, got {args.n_boot}")
    summary = evaluate_training(
        args.train_dir,
        args.pairs,
        args.labels,
        args.out,
        n_boot=args.n_boot,
        seed=args.seed,
        include_start=not args.no_start,
        batch_tokens=args.batch_tokens,
        plots=not args.no_plots,
        device=args.device,
    )
    write_json_output(args.json, summary)
    print(
        f"evaluated {len(summary['checkpoints'])} checkpoint(s) on {summary['n']} held-out "
        f"pairs in {summary['wall_s']:.1f} s; wrote {', '.join(summary['files'])} to "
        f"{args.out}"
    )
    print(f"  {'step':>6} {'explainer':<10} {'metric':<8} {'self':>22} {'orig':>22} {'gap':>22}")
    table: dict[tuple, dict] = {}
    for r in summary["metrics"]:
        table.setdefault((r["checkpoint"], r["explainer"]), {})[r["metric"]] = r

    def cell(r):
        if r is None or r["value"] is None:
            return f"{'n/a':>22}"
        ci = "" if r["lo"] is None else f" [{r['lo']:+.2f},{r['hi']:+.2f}]"
        return f"{r['value']:+.3f}{ci:>16}"

    for (step, name), ms in table.items():
        # Scalar explainers by Pearson r, the verbal one (categorical) by Cohen's kappa.
        metric = "pearson" if "self.pearson" in ms else "kappa"
        print(
            f"  {step:>6} {name:<10} {metric:<8} "
            + " ".join(cell(ms.get(f"{s}.{metric}")) for s in ("self", "orig", "gap"))
        )
    return 0


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="Self, Orig and the coupling gap of a training run's explainers, per checkpoint",
        description=(
            "For the starting model and each checkpoint of --train-dir, re-extract the current "
            "model's delta and hidden states on held-out pairs, predict delta with each "
            "explainer (the probe trained alongside the model, and a ridge probe fitted once "
            "on the starting model), and score the predictions against the current delta "
            "(Self) and the fixed labels of --labels (Orig): Pearson and Spearman with paired "
            "bootstrap 95% intervals, and the gap Self - Orig. Writes predictions.jsonl, "
            "metrics.jsonl (recomputable from the predictions), behaviour.jsonl, eval.json, "
            "self_vs_orig.png and behaviour.png."
        ),
        epilog=EXIT_CODES,
    )
    p.add_argument("--train-dir", required=True, help="directory written by introspect train")
    p.add_argument("--pairs", required=True, help="held-out pair file (JSONL)")
    p.add_argument(
        "--labels",
        required=True,
        metavar="RUN",
        help="extract run of the source model holding every held-out pair",
    )
    p.add_argument("--out", required=True, help="output directory")
    add_device_argument(p)
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument(
        "--no-start", action="store_true", help="do not evaluate the starting model as step 0"
    )
    p.add_argument("--no-plots", action="store_true", help="write no PNGs")
    p.add_argument("--batch-tokens", type=int, default=4096, help="positions per forward")
    add_json_argument(p, "the summary (metrics and behaviour rows)")
    p.set_defaults(func=_cmd_eval)
    return p
