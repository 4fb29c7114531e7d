"""The ``introspect experiment`` command line (argparse only at import: building the parser
imports no torch)."""

from __future__ import annotations

import argparse
import sys

from introspect._args import add_device_argument

EXIT_BAD_INPUT = 3


def _error(message: str) -> None:
    print(f"introspect: error: {message}", file=sys.stderr)


def _pair_files(items: list[str] | None) -> dict[str, tuple[str, str]]:
    out = {}
    for item in items or []:
        task, sep, rest = item.partition("=")
        train, sep2, held = rest.partition(",")
        if not (sep and sep2 and task and train and held):
            raise ValueError(f"--pairs expects TASK=TRAIN.jsonl,HELD.jsonl, got {item!r}")
        out[task] = (train, held)
    return out


def _cmd_coupling(args: argparse.Namespace) -> int:
    import time

    from introspect.data import PairError
    from introspect.evaluation.checkpoints import EvalError
    from introspect.experiment.coupling import ExperimentConfig, ExperimentError, run_coupling
    from introspect.labels import LabelError
    from introspect.models import ModelLoadError, NoChatTemplateError
    from introspect.run import RunError
    from introspect.training.objectives import TrainError

    tasks = [t.strip() for t in (args.tasks or args.task).split(",") if t.strip()]
    try:
        cfg = ExperimentConfig.from_preset(
            args.preset,
            model=args.model,
            out=args.out,
            tasks=tuple(tasks),
            seed=args.seed,
            label_model=args.label_model,
            n_train=args.n_train,
            n_held=args.n_held,
            steps=args.steps,
            checkpoint_every=args.checkpoint_every,
            n_boot=args.n_boot,
            layer=args.layer,
            pair_files=_pair_files(args.pairs),
            device=args.device,
            batch_tokens=args.batch_tokens,
            verbal=False if args.no_verbal else None,
        )
    except (ExperimentError, ValueError) as exc:
        _error(str(exc))
        return 2
    t0 = time.perf_counter()
    try:
        run_coupling(cfg, resume=args.resume)
    except ExperimentError as exc:
        _error(str(exc))
        return 2
    except (
        EvalError,
        LabelError,
        PairError,
        RunError,
        ModelLoadError,
        NoChatTemplateError,
        TrainError,
        OSError,
    ) as exc:
        _error(f"{exc} (completed stages are kept: fix the cause and pass --resume)")
        return EXIT_BAD_INPUT
    print(
        f"coupling experiment done in {time.perf_counter() - t0:.1f} s; report: "
        f"{args.out}/report.md"
    )
    return 0


def add_experiment_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "experiment",
        help="run a whole experiment protocol (extract, train, eval, report)",
        description="Run a whole experiment protocol from the library's extract, train and "
        "eval functions, with a resumable state and a markdown report.",
    )
    esub = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)
    c = esub.add_parser(
        "coupling",
        help="introspective coupling: Self vs Orig under concurrent post-training",
        description=(
            "Generate training and held-out pairs, extract the starting model's delta (the "
            "fixed labels), train two probe explainers on them (on h(x), and on h(x') - h(x)) "
            "and the model itself as a verbal explainer (it states, after x and its answer, "
            "whether its answer would become more or less likely or stay the same without the "
            "feature) while the model trains on a "
            "behaviour-shifting objective (anti-sycophancy for sycophancy and hint, "
            "refusal-shift for refusal), and as controls with the model frozen and with "
            "shuffled labels, with label noise and with labels from another model; at every "
            "checkpoint re-extract the current delta on the held-out pairs and score Self and "
            "Orig with bootstrap intervals. Writes OUT/report.md (figures, the table of Self, "
            "Orig and the gap per condition, wall time per stage, and which claims held). "
            "OUT/state.json lists the completed stages; --resume skips them."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "presets:\n"
            "  quick  64 training / 64 held-out pairs, 8 steps, noise 0.5 only; all conditions\n"
            "         on the first task, concurrent + frozen on the others (6.6 min for one\n"
            "         task on 2 CPU cores, 135M; `make demo` runs it)\n"
            "  full   384 / 192 pairs, 48 steps, noise 0.2 and 0.5, all conditions on every\n"
            "         task (84 min for sycophancy,refusal with --label-model gemma3-270m on 2\n"
            "         CPU cores)\n"
            "\nexample:\n"
            "  introspect experiment coupling --model smollm2-135m --task sycophancy \\\n"
            "      --out runs/coupling --preset quick\n"
            f"\nexit codes: 0 done, 2 bad command line or settings, {EXIT_BAD_INPUT} invalid "
            "input data"
        ),
    )
    c.add_argument("--model", required=True, help="alias, model directory, .gguf or hub id")
    c.add_argument("--task", default="sycophancy", help="task (default sycophancy)")
    c.add_argument(
        "--tasks", help="comma-separated tasks, e.g. sycophancy,refusal (overrides --task)"
    )
    c.add_argument("--out", required=True, help="experiment directory to create (or resume)")
    c.add_argument("--preset", choices=("quick", "full"), default="quick", help="sizes")
    c.add_argument("--seed", type=int, default=0, help="seed of pairs, training and bootstrap")
    c.add_argument(
        "--label-model",
        help="also train on the delta of this model (another family); skipped with the reason "
        "when it cannot be loaded",
    )
    c.add_argument("--resume", action="store_true", help="skip the stages already completed")
    add_device_argument(c)
    c.add_argument("--n-train", type=int, help="training pairs per task (preset's by default)")
    c.add_argument("--n-held", type=int, help="held-out pairs per task")
    c.add_argument("--steps", type=int, help="training steps per condition")
    c.add_argument("--checkpoint-every", type=int, metavar="K", help="checkpoint every K steps")
    c.add_argument("--n-boot", type=int, help="bootstrap replicates")
    c.add_argument("--layer", type=int, help="probe layer (default: the middle layer)")
    c.add_argument(
        "--batch-tokens",
        type=int,
        help="token budget of one extraction forward (default 2048; raise it on a GPU)",
    )
    c.add_argument(
        "--no-verbal",
        action="store_true",
        help="train and score only the probes, not the model as a verbal explainer",
    )
    c.add_argument(
        "--pairs",
        action="append",
        metavar="TASK=TRAIN,HELD",
        help="use these pair files for TASK instead of generating pairs",
    )
    c.set_defaults(func=_cmd_coupling)
    r = esub.add_parser(
        "rescore",
        help="recompute a coupling run's metrics from its predictions and rewrite its report",
        description=(
            "Recompute every completed evaluation's metrics.jsonl (and self_vs_orig.png) of a "
            "coupling experiment from its predictions.jsonl with this version's metrics "
            "(same bootstrap replicates and seed), then rewrite report.md and results.json. "
            "No model is loaded; nothing else in the run changes."
        ),
    )
    r.add_argument("out", metavar="RUN", help="directory of a coupling experiment")
    r.set_defaults(func=_cmd_rescore)
    return p


def _cmd_rescore(args: argparse.Namespace) -> int:
    from introspect.experiment.coupling import ExperimentError, rescore_coupling

    try:
        rescore_coupling(args.out)
    except (ExperimentError, OSError, ValueError, KeyError) as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    print(f"rescored; report: {args.out}/report.md")
    return 0
