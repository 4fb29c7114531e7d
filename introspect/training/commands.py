"""The ``introspect train`` command line (argparse only at import: building the parser imports
no torch)."""

from __future__ import annotations

import argparse

from introspect._args import (
    EXIT_CODES,
    add_chat_template_argument,
    add_device_argument,
    add_json_argument,
    write_json_output,
)

OBJECTIVE_NAMES = ("anti-sycophancy", "pro-sycophancy", "refusal-shift", "none")


def _cmd_train(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from introspect.errors import UsageError
    from introspect.training.loop import TrainConfig, train
    from introspect.training.objectives import TrainError

    # Every option named like a TrainConfig field sets it; TrainConfig checks them (a
    # TrainError names the bad ones).
    options = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    try:
        config = TrainConfig(**options)
    except TrainError as exc:  # settings that do not fit together: a command-line mistake
        raise UsageError(str(exc)) from None
    doc = train(config, chat_template=args.chat_template, resume=args.resume)
    last = doc["log"][-1] if doc["log"] else {}
    print(
        f"trained {doc['step']} steps into {args.out} ({doc['wall_s']:.1f} s; "
        f"{'model + probe' if doc['model_trains'] else 'probe only, model frozen'}, "
        f"layer {doc['layer']}); checkpoints: " + ", ".join(c["path"] for c in doc["checkpoints"])
    )
    if last:
        print(
            f"  last step: loss {last['loss']:.4f}, behaviour {last['behaviour']:.4f}, "
            f"explain {last['explain']:.4f}, verbal {last.get('verbal', 0.0):.4f}, "
            f"reg {last['reg']:.4f}"
        )
    write_json_output(args.json, doc)
    return 0


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a probe explainer on fixed labels, optionally while the model itself "
        "trains on a behaviour-shifting objective (--concurrent)",
        description=(
            "Train a linear probe on the current model's hidden state of x (one layer, last "
            "prompt token) to predict the fixed labels (delta of the run given by --labels) "
            "with MSE. With --concurrent the model trains at the same time on a behaviour "
            "objective (teacher-forced cross-entropy on the objective's choice after x), "
            "optionally with a KL term keeping its choice distribution on x' (no cue) close to "
            "the start, and with --verbal a cross-entropy teaching the model to state the "
            "binned label itself: loss = w_behaviour*L_behaviour + w_explain*L_explain + "
            "w_verbal*L_verbal + w_reg*L_reg. "
            "Without --concurrent the model is frozen (the control). Checkpoints every k steps "
            "hold the model (safetensors, only when it trains), the probe, the optimizer "
            "state and the RNG state; --resume continues the same trajectory."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "objectives (the choice trained towards on x):\n"
            "  anti-sycophancy  the correct option (meta.correct) regardless of the cue\n"
            "  pro-sycophancy   the option the cue favours (meta.cued, else the target)\n"
            "  refusal-shift    compliance (meta.compliance, else the non-refusal choice)\n"
            "  none             no behaviour objective\n"
            "\nexample:\n"
            "  introspect extract --model smollm2-135m --pairs train.jsonl --out runs/m0\n"
            "  introspect train --model smollm2-135m --pairs train.jsonl --labels runs/m0 \\\n"
            "      --concurrent --objective anti-sycophancy --steps 10 --out runs/train\n"
            "\n" + EXIT_CODES
        ),
    )
    for add in (
        _add_input_arguments,
        _add_objective_arguments,
        _add_optimizer_arguments,
        _add_verbal_arguments,
        _add_control_arguments,
        _add_checkpoint_arguments,
    ):
        add(p)
    p.set_defaults(func=_cmd_train)
    return p


def _add_input_arguments(p: argparse.ArgumentParser) -> None:
    """The model, its pairs and labels, and where the run goes."""
    p.add_argument("--model", required=True, help="alias, model directory, .gguf or hub id")
    p.add_argument("--pairs", required=True, help="training pair file (JSONL)")
    p.add_argument(
        "--labels",
        required=True,
        metavar="RUN",
        help="extract run of the source model holding every training pair",
    )
    p.add_argument("--out", required=True, help="training directory to create (or resume)")
    add_device_argument(p)


def _add_objective_arguments(p: argparse.ArgumentParser) -> None:
    """What the model trains on besides the probe (with --concurrent), and the loss weights."""
    g = p.add_argument_group("objective and loss")
    g.add_argument(
        "--concurrent",
        action="store_true",
        help="train the model on --objective too (default: model frozen)",
    )
    g.add_argument(
        "--objective",
        choices=OBJECTIVE_NAMES,
        default="anti-sycophancy",
        help="behaviour objective with --concurrent (default anti-sycophancy)",
    )
    g.add_argument("--w-behaviour", type=float, default=1.0, help="weight of L_behaviour")
    g.add_argument("--w-explain", type=float, default=1.0, help="weight of L_explain")
    g.add_argument(
        "--w-reg",
        type=float,
        default=0.0,
        help="weight of the KL regulariser on x' (default 0: off)",
    )
    g.add_argument(
        "--explainer-grad-to-model",
        action="store_true",
        help="let L_explain's gradient reach the model (default: probe only)",
    )


def _add_optimizer_arguments(p: argparse.ArgumentParser) -> None:
    """Where the probe reads, and the optimizer."""
    g = p.add_argument_group("probe and optimizer")
    g.add_argument(
        "--layer",
        type=int,
        help="probe layer (negative counts from the end; default: the middle layer)",
    )
    g.add_argument("--steps", type=int, default=10, help="optimizer steps (default 10)")
    g.add_argument("--batch-size", type=int, default=8, help="pairs per step (default 8)")
    g.add_argument("--lr", type=float, default=1e-5, help="model learning rate (AdamW)")
    g.add_argument("--probe-lr", type=float, default=1e-3, help="probe learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="model weight decay")
    g.add_argument(
        "--no-packed-step",
        dest="packed_step",
        action="store_false",
        help="run each pair's sequences (x with the objective's choice, x' and the choices of "
        "the regulariser, the verbal question) as separate forwards instead of one prefix-"
        "shared forward per step (same values, slower; for measuring its share)",
    )


def _add_verbal_arguments(p: argparse.ArgumentParser) -> None:
    """The model as its own verbal explainer."""
    g = p.add_argument_group("verbal explainer")
    g.add_argument(
        "--verbal",
        action="store_true",
        help="with --concurrent: also train the model to state, after x and M0's answer, "
        "whether its answer would become more or less likely or stay the same without the "
        "feature (the verbal explainer; its settings go to OUT/verbal.json)",
    )
    g.add_argument("--w-verbal", type=float, default=1.0, help="weight of L_verbal (default 1)")
    g.add_argument(
        "--verbal-format",
        choices=("binned", "precursor"),
        default="binned",
        help="binned: after x and M0's answer, more/less likely/the same; precursor: the "
        "question in x's own turn, labels 'remain (X)' / 'change to (Y)' from greedy answers "
        "(default binned)",
    )
    g.add_argument(
        "--verbal-answers",
        metavar="JSON",
        help="precursor: the label source's answers {id: [on x, on x']} (default: the starting "
        "model's own)",
    )
    g.add_argument(
        "--verbal-threshold",
        type=float,
        metavar="T",
        help="|label| <= T is 'unchanged' for the verbal explainer (default: the 1/3 quantile "
        "of |label| over the training pairs)",
    )


def _add_control_arguments(p: argparse.ArgumentParser) -> None:
    """Label noise and the shuffled-label control."""
    g = p.add_argument_group("controls")
    g.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="P",
        help="resample this fraction of the training labels (seeded)",
    )
    g.add_argument(
        "--shuffle-labels",
        action="store_true",
        help="permute the labels over the pairs (no-signal control)",
    )


def _add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """Checkpoints, resume, seed and output."""
    g = p.add_argument_group("checkpoints and output")
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=5,
        metavar="K",
        help="checkpoint every K steps and at the end (default 5)",
    )
    g.add_argument(
        "--optimizer-state",
        choices=("last", "all"),
        default="last",
        help="keep the optimizer state in the latest checkpoint only (default) or in all",
    )
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    g.add_argument("--seed", type=int, default=0, help="seed (batches, noise, shuffle)")
    add_chat_template_argument(g)
    add_json_argument(g, "train.json's contents")
