"""``introspect experiment sweep``, ``map`` and ``stage0`` (argparse only at import: building
the parser imports no torch)."""

from __future__ import annotations

import argparse

from introspect._args import EXIT_CODES, MODEL_HELP, add_device_argument, add_json_argument

__all__ = ["add_sweep_parsers"]


def add_sweep_parsers(esub) -> None:
    _add_sweep_parser(esub)
    _add_map_parser(esub)
    _add_publish_parser(esub)
    _add_stage0_parser(esub)


def _add_sweep_parser(esub) -> None:
    s = esub.add_parser(
        "sweep",
        help="a grid of coupling runs from a spec (TOML or JSON), each resumable",
        description=(
            "Run every coupling experiment of a spec's grid (tasks x settings x lr x w_reg x "
            "labels x seeds, or any other setting), each in OUT/runs/<name>/ with its "
            "config.json. The spec's endpoints are written to OUT/endpoints.json before the "
            "first run; a resumed sweep whose spec declares other endpoints is refused. "
            "Complete runs are skipped; an interrupted one continues from its last completed "
            "stage (--resume). docs/coupling-map.md describes the spec."
        ),
        epilog="example:\n  introspect experiment sweep docs/results/coupling-map/spec.toml "
        "--out runs/map\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("spec", metavar="SPEC", help="the sweep spec (.toml, or .json)")
    s.add_argument("--out", required=True, help="sweep directory to create (or resume)")
    s.add_argument("--resume", action="store_true", help="continue the sweep in OUT")
    s.add_argument(
        "--dry-run", action="store_true", help="check the spec and list the runs; run nothing"
    )
    s.add_argument(
        "--keep-checkpoints",
        action="store_true",
        help="keep each complete run's model and optimizer checkpoints (by default they are "
        "deleted once the run is complete: the map reads only the runs' JSON)",
    )
    add_device_argument(s)
    add_json_argument(s, "the runs and their status")
    s.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from introspect._args import write_json_output
    from introspect.errors import IntrospectError, UsageError
    from introspect.experiment.spec import load_spec
    from introspect.experiment.sweep import run_sweep, sweep_runs

    spec = load_spec(args.spec)
    if args.dry_run:
        plan = sweep_runs(spec, args.out)
        for _run, rdir, done in plan:
            print(f"{'complete' if done else 'to run  '}  {rdir}")
        print(f"{len(plan)} runs, {len(spec.endpoints)} endpoints")
        write_json_output(args.json, {"runs": [{"name": r.name, "path": str(d), "complete": c}
                                               for r, d, c in plan]})  # fmt: skip
        return 0
    try:
        device = None if args.device == "auto" else args.device  # else the spec's
        doc = run_sweep(
            spec, args.out, resume=args.resume, device=device,
            keep_checkpoints=args.keep_checkpoints,
        )  # fmt: skip
    except UsageError:
        raise
    except IntrospectError:
        from introspect._args import say

        say("  (completed runs and stages are kept: fix the cause and pass --resume)")
        raise
    print(f"sweep done: {len(doc['runs'])} runs in {args.out}; map them with "
          f"`introspect experiment map {args.out}`")  # fmt: skip
    write_json_output(args.json, doc)
    return 0


def _add_map_parser(esub) -> None:
    m = esub.add_parser(
        "map",
        help="aggregate finished coupling runs over rho: figures, cells, endpoint verdicts",
        description=(
            "Aggregate the finished runs of sweeps (or single coupling runs) into the gap and "
            "the coupling index c against rho_t, per task and explainer: every checkpoint a "
            "point, a 95%% band per rho bin from a hierarchical bootstrap (seeds, then pairs "
            "within seed), a grey null band from the shuffled-label runs, the curves of a pure "
            "imitator and a pure tracker; a table of cells; and verdicts on the sweeps' "
            "declared endpoints with Holm's correction. Everything is recomputed from the "
            "runs' predictions; no model is loaded."
        ),
        epilog=EXIT_CODES,
    )
    m.add_argument("runs", nargs="+", metavar="RUN", help="sweep directories or coupling runs")
    m.add_argument("--out", help="where to write the map (default: SWEEP/map for one sweep)")
    m.add_argument("--rho-bins", metavar="E,E,...", help="bin edges of rho (default the spec's, "
                   "else -1,0,0.3,0.5,0.7,0.9,1)")  # fmt: skip
    m.add_argument("--n-boot", type=int, help="bootstrap replicates (default 1000)")
    m.add_argument("--seed", type=int, help="bootstrap seed (default 0)")
    m.add_argument("--alpha", type=float, help="family-wise error rate of the endpoints (0.05)")
    m.add_argument("--null-min-runs", type=int, help="shuffled-label runs a null band needs (3)")
    m.add_argument("--explainers", help="comma-separated (default probe,probe-diff,verbal-score)")
    add_json_argument(m, "the map (map.json's contents)")
    m.set_defaults(func=_cmd_map)


def _cmd_map(args: argparse.Namespace) -> int:
    from pathlib import Path

    from introspect._args import write_json_output
    from introspect.errors import UsageError
    from introspect.experiment.commands import _floats
    from introspect.experiment.map import build_map
    from introspect.experiment.sweep import SWEEP_JSON

    out = args.out
    if out is None:
        if len(args.runs) != 1 or not (Path(args.runs[0]) / SWEEP_JSON).is_file():
            raise UsageError("--out is needed unless one sweep directory is given")
        out = str(Path(args.runs[0]) / "map")
    expl = None if args.explainers is None else tuple(
        e.strip() for e in args.explainers.split(",") if e.strip())  # fmt: skip
    doc = build_map(
        args.runs,
        out,
        rho_bins=_floats(args.rho_bins, "--rho-bins"),
        n_boot=args.n_boot,
        seed=args.seed,
        alpha=args.alpha,
        null_min_runs=args.null_min_runs,
        explainers=expl,
    )
    print(f"map: {out}/map.md")
    write_json_output(args.json, doc)
    return 0


def _add_publish_parser(esub) -> None:
    p = esub.add_parser(
        "publish",
        help="copy a sweep's complete runs' small files (JSON, compressed predictions)",
        description=(
            "Copy the small files of a sweep's complete runs (config.json, state.json, the "
            "report, and per evaluation metrics.jsonl, behaviour.jsonl and the predictions, "
            "gzip-compressed) into DEST, which `introspect experiment map DEST` maps again "
            "without the runs' weights. Runs not yet complete are left out; publishing again "
            "adds the runs finished since."
        ),
        epilog=EXIT_CODES,
    )
    p.add_argument("sweep", metavar="SWEEP", help="the sweep directory")
    p.add_argument("--to", required=True, metavar="DEST", help="the results folder")
    add_json_argument(p, "the runs published and left out")
    p.set_defaults(func=_cmd_publish)


def _cmd_publish(args: argparse.Namespace) -> int:
    from introspect._args import write_json_output
    from introspect.experiment.publish import publish_sweep

    write_json_output(args.json, publish_sweep(args.sweep, args.to))
    return 0


def _add_stage0_parser(esub) -> None:
    z = esub.add_parser(
        "stage0",
        help="per task, before any training: argmax changes, surface R² of delta, rho0",
        description=(
            "Stage 0 of the coupling map (no training): per task, how often the model's most "
            "likely choice changes when the feature is removed, how much of delta surface "
            "metadata explains (out-of-fold ridge R²), and rho0 = r(label model's delta, the "
            "model's delta) of each candidate label model. Writes OUT/stage0.json and "
            "OUT/stage0.md."
        ),
        epilog=EXIT_CODES,
    )
    z.add_argument("--model", required=True, help=MODEL_HELP)
    z.add_argument("--tasks", default="sycophancy,refusal", help="comma-separated tasks")
    z.add_argument("--out", required=True, help="directory for stage0.json and stage0.md")
    z.add_argument("--label-models", default="", help="comma-separated candidate label models")
    z.add_argument("--n", type=int, default=128, help="pairs per task (default 128)")
    z.add_argument("--seed", type=int, default=0, help="seed of the pairs and the bootstrap")
    z.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates of rho0")
    z.add_argument("--rho-threshold", type=float, default=0.5, help="rho0 needed (0.5)")
    add_device_argument(z)
    add_json_argument(z, "stage0.json's contents")
    z.set_defaults(func=_cmd_stage0)


def _cmd_stage0(args: argparse.Namespace) -> int:
    from introspect._args import write_json_output
    from introspect.data.tasks import TASKS
    from introspect.errors import UsageError
    from introspect.experiment.stage0 import run_stage0

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks or args.n < 5:
        raise UsageError(f"--tasks: choose from {', '.join(sorted(TASKS))}; --n at least 5")
    doc = run_stage0(
        args.model,
        tasks,
        args.out,
        label_models=[m.strip() for m in args.label_models.split(",") if m.strip()],
        n=args.n,
        seed=args.seed,
        n_boot=args.n_boot,
        rho_threshold=args.rho_threshold,
        device=args.device,
    )
    print(f"stage 0: {args.out}/stage0.md")
    write_json_output(args.json, doc)
    return 0
