"""The ``introspect experiment`` command line (argparse only at import: building the parser
imports no torch)."""

from __future__ import annotations

import argparse

from introspect._args import (
    EXIT_CODES,
    MODEL_HELP,
    add_device_argument,
    add_json_argument,
    say,
)


def _pair_files(items: list[str] | None) -> dict[str, tuple[str, str]]:
    from introspect.errors import UsageError

    out = {}
    for item in items or []:
        task, sep, rest = item.partition("=")
        train, sep2, held = rest.partition(",")
        if not (sep and sep2 and task and train and held):
            raise UsageError(f"--pairs expects TASK=TRAIN.jsonl,HELD.jsonl, got {item!r}")
        out[task] = (train, held)
    return out


def _config(args: argparse.Namespace):
    from introspect.experiment.coupling import ExperimentConfig

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return ExperimentConfig.from_preset(
        args.preset,
        model=args.model,
        out=args.out,
        tasks=tasks,
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
        setting=args.setting,
        labels=args.labels,
        objective=args.objective,
        lr=args.lr,
        w_reg=args.w_reg,
        epochs=args.epochs,
        batch_size=args.batch_size,
        verbal_format=args.verbal_format,
        rho_targets=_floats(args.rho_targets, "--rho-targets"),
        drift_steps=args.drift_steps,
        drift_every=args.drift_every,
        drift_lr=args.drift_lr,
        rho_threshold=args.rho_threshold,
        noise_levels=_noise_levels(args.noise_levels),
        no_explanation_control=_yes_no(args.no_explanation_control),
    )


def _noise_levels(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    return () if text.strip() == "none" else _floats(text, "--noise-levels")


def _yes_no(text: str | None) -> bool | None:
    return None if text is None else text == "yes"


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    from introspect.errors import UsageError

    if text is None:
        return None
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UsageError(f"{option} expects comma-separated numbers, got {text!r}") from None


def _cmd_coupling(args: argparse.Namespace) -> int:
    import time

    from introspect._args import write_json_output
    from introspect.errors import IntrospectError, UsageError
    from introspect.experiment.coupling import run_coupling

    cfg = _config(args)
    t0 = time.perf_counter()
    try:
        state = run_coupling(cfg, resume=args.resume)
    except UsageError:
        raise
    except IntrospectError:
        say("  (completed stages are kept: fix the cause and pass --resume)")
        raise
    print(
        f"coupling experiment done in {time.perf_counter() - t0:.1f} s; report: "
        f"{args.out}/report.md"
    )
    write_json_output(args.json, state)
    return 0


def add_experiment_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "experiment",
        help="run a whole experiment protocol (extract, train, eval, report)",
        description="Run a whole experiment protocol from the library's extract, train and "
        "eval functions, with a resumable state and a markdown report.",
    )
    esub = p.add_subparsers(dest="experiment_command", metavar="EXPERIMENT", required=True)
    _add_coupling_parser(esub)
    _add_rescore_parser(esub)
    from introspect.experiment.sweep_commands import add_sweep_parsers

    add_sweep_parsers(esub)
    return p


def _add_coupling_parser(esub) -> None:
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
            "  quick  64 training / 64 held-out pairs, 8 steps; the main run with the frozen and\n"
            "         shuffled-label controls on the first task, concurrent + frozen on the\n"
            "         others (`make demo` runs it, within 10 minutes on 2 CPU cores)\n"
            "  full   384 / 192 pairs, 48 steps, noise 0.2 and 0.5, all conditions on every\n"
            "         task (`make experiment-full` runs it; docs/coupling.md has its results)\n"
            "\nexample:\n"
            "  introspect experiment coupling --model smollm2-135m --tasks sycophancy \\\n"
            "      --out runs/coupling --preset quick\n\n" + EXIT_CODES
        ),
    )
    c.add_argument("--model", required=True, help=MODEL_HELP)
    c.add_argument(
        "--tasks",
        default="sycophancy",
        help="comma-separated tasks, e.g. sycophancy,refusal (default sycophancy)",
    )
    c.add_argument("--out", required=True, help="experiment directory to create (or resume)")
    c.add_argument("--preset", choices=("quick", "full"), default="quick", help="sizes")
    c.add_argument("--seed", type=int, default=0, help="seed of pairs, training and bootstrap")
    c.add_argument("--resume", action="store_true", help="skip the stages already completed")
    add_device_argument(c)
    c.add_argument(
        "--pairs",
        action="append",
        metavar="TASK=TRAIN,HELD",
        help="use these pair files for TASK instead of generating pairs",
    )
    add_json_argument(c, "the experiment's state (stages, their times and results)")
    _add_setting_arguments(c.add_argument_group("setting and training"))
    _add_size_arguments(c.add_argument_group("sizes (the preset's unless given)"))
    _add_condition_arguments(c.add_argument_group("conditions"))
    _add_earlier_arguments(c.add_argument_group("the earlier-checkpoint setting and verdicts"))
    c.set_defaults(func=_cmd_coupling)


def _add_setting_arguments(g: argparse._ArgumentGroup) -> None:
    from introspect.experiment.config import SETTINGS, VERBAL_FORMATS

    g.add_argument(
        "--setting",
        choices=SETTINGS,
        default="concurrent",
        help="concurrent: explanation training while the model trains on the objective; "
        "explain-only: explanation training alone; earlier-checkpoint: M0's labels explained "
        "by later checkpoints M1 (default concurrent)",
    )
    g.add_argument(
        "--labels",
        default="self",
        metavar="SOURCE",
        help="where the fixed labels come from: self (M0), model:NAME (another model), earlier "
        "(the earlier-checkpoint setting's, its default)",
    )
    g.add_argument(
        "--objective",
        choices=("anti-sycophancy", "pro-sycophancy", "refusal-shift", "none"),
        help="behaviour objective (default: the task's: anti-sycophancy for sycophancy and "
        "hint, refusal-shift for refusal)",
    )
    g.add_argument("--lr", type=float, help="model learning rate (the preset's by default)")
    g.add_argument(
        "--w-reg",
        type=float,
        help="weight of the behavioural regulariser: KL to the starting model's choice "
        "distribution on x and x' (default 1)",
    )
    g.add_argument(
        "--verbal-format",
        choices=VERBAL_FORMATS,
        help="binned: after x and its answer, more/less likely/unchanged; precursor: the "
        "question in the same turn, the answer change by argmax (default binned)",
    )


def _add_size_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--n-train", type=int, help="training pairs per task (preset's by default)")
    g.add_argument("--n-held", type=int, help="held-out pairs per task")
    g.add_argument("--steps", type=int, help="training steps per condition")
    g.add_argument("--epochs", type=int, help="passes over the training pairs (sets the steps)")
    g.add_argument("--batch-size", type=int, help="pairs per step")
    g.add_argument("--checkpoint-every", type=int, metavar="K", help="checkpoint every K steps")
    g.add_argument("--n-boot", type=int, help="bootstrap replicates")
    g.add_argument("--layer", type=int, help="probe layer (default: the middle layer)")
    g.add_argument(
        "--batch-tokens",
        type=int,
        help="token budget of one extraction forward (default 2048; raise it on a GPU)",
    )


def _add_condition_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--label-model",
        help="also train on the delta of this model (another family); skipped with the reason "
        "when it cannot be loaded",
    )
    g.add_argument(
        "--no-verbal",
        action="store_true",
        help="train and score only the probes, not the model as a verbal explainer",
    )
    g.add_argument(
        "--noise-levels",
        metavar="P,P,...|none",
        help="label-noise controls: the share of labels resampled in each (quick: none; "
        "full: 0.2,0.5)",
    )
    g.add_argument(
        "--no-explanation-control",
        choices=("yes", "no"),
        help="run the control without explanation training (quick: no; full: yes)",
    )


def _add_earlier_arguments(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--rho-targets",
        metavar="R,R,...",
        help="save M1 where r(Δ_M1, Δ_M0) first falls below each (default 0.9,0.7,0.5,0.3; "
        "quick: 0.9,0.5)",
    )
    g.add_argument("--drift-steps", type=int, help="at most this many steps from M0 to M1")
    g.add_argument(
        "--drift-every", type=int, metavar="K", help="measure r(Δ_M1, Δ_M0) every K steps"
    )
    g.add_argument(
        "--drift-lr",
        type=float,
        metavar="LR",
        help="learning rate from M0 to M1 (quick: 3e-5; full: 1e-5); small enough that r "
        "passes each target between two measurements",
    )
    g.add_argument(
        "--rho-threshold",
        type=float,
        help="below this ρ a verdict is 'precondition not met' (default 0.5)",
    )


def _add_rescore_parser(esub) -> None:
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
    add_json_argument(r, "the rescored experiment's state")
    r.set_defaults(func=_cmd_rescore)


def _cmd_rescore(args: argparse.Namespace) -> int:
    from introspect._args import write_json_output
    from introspect.errors import BadInputError, IntrospectError
    from introspect.experiment.coupling import rescore_coupling

    try:
        state = rescore_coupling(args.out)
    except (KeyError, ValueError) as exc:  # a state.json or prediction file that is not one
        if isinstance(exc, IntrospectError):
            raise
        raise BadInputError(f"{args.out}: not a readable coupling experiment ({exc})") from exc
    print(f"rescored; report: {args.out}/report.md")
    write_json_output(args.json, state)
    return 0
