"""``introspect pairs``: generate built-in pairs or import and validate a user's file."""

from __future__ import annotations

import argparse
import time

from introspect._args import EXIT_CODES, add_json_argument, say, write_json_output

MAX_LISTED = 20  # skipped rows listed on stderr (all of them go to the report file)


def _parse_mapping(items: list[str] | None) -> dict[str, str]:
    from introspect.errors import BadInputError

    mapping = {}
    for item in items or []:
        field, sep, column = item.partition("=")
        if not sep or not field or not column:
            raise BadInputError(f"--map expects FIELD=COLUMN, got {item!r}")
        mapping[field] = column
    return mapping


def check_context(pairs, model_name: str, on_error: str, report) -> list:
    """Drops (or fails on) pairs whose longest sequence exceeds the model's context."""
    from introspect.behaviour import encode
    from introspect.data import Skipped
    from introspect.models import load_model

    loaded = load_model(model_name)
    limit = loaded.max_context
    kept = []
    for k, p in enumerate(pairs, start=1):
        longest = 0
        for prompt in (p.x, p.x_mod):
            enc = encode(loaded.tokenizer, prompt, p.choices)
            longest = max(longest, len(enc.prompt_ids) + max(len(c) for c in enc.choice_ids))
        if limit and longest > limit:
            reason = f"needs {longest} tokens, longer than {model_name}'s context of {limit}"
            report.handle(Skipped("pairs", k, p.id, reason), on_error)
            continue
        kept.append(p)
    return kept


def _source_pairs(args: argparse.Namespace, report) -> tuple[list, str]:
    if args.task:
        from introspect.data.tasks import generate

        pairs = generate(args.task, args.n, seed=args.seed)
        return pairs, f"task {args.task} (n={args.n}, seed={args.seed})"
    from introspect.data.importers import import_pairs

    pairs = import_pairs(
        args.source,
        format=args.format,
        mapping=_parse_mapping(args.map),
        on_error=args.on_error,
        report=report,
    )
    return pairs, args.source


def _cmd_pairs(args: argparse.Namespace) -> int:
    from introspect.data import PairError, ReadReport, write_pairs, write_skipped

    t0 = time.perf_counter()
    report = ReadReport()
    try:
        pairs, source = _source_pairs(args, report)
        if args.model:
            pairs = check_context(pairs, args.model, args.on_error, report)
        n = write_pairs(args.out, pairs)
    except PairError:
        if args.on_error == "fail":
            say("  (use --on-error skip to keep the good rows and get a report of the bad ones)")
        raise
    except (OSError, ValueError) as exc:  # an unreadable file, a format it is not
        from introspect.errors import BadInputError, IntrospectError

        if isinstance(exc, IntrospectError):
            raise
        raise BadInputError(str(exc)) from exc
    print(f"wrote {n} pairs from {source} to {args.out} in {time.perf_counter() - t0:.2f} s")
    skipped_path = None
    if report.skipped:
        skipped_path = args.skipped_report or f"{args.out}.skipped.jsonl"
        write_skipped(skipped_path, report.skipped)
        say(f"skipped {len(report.skipped)} row(s); reasons in {skipped_path}:")
        for s in report.skipped[:MAX_LISTED]:
            say(f"  {s.describe()}")
        if len(report.skipped) > MAX_LISTED:
            say(f"  ... and {len(report.skipped) - MAX_LISTED} more")
    write_json_output(
        args.json,
        {
            "out": args.out,
            "pairs": n,
            "source": source,
            "skipped": len(report.skipped),
            "skipped_report": skipped_path,
        },
    )
    return 0


def add_pairs_parser(sub) -> None:
    from introspect.data.importers import FORMATS
    from introspect.data.tasks import TASKS

    pairs = sub.add_parser(
        "pairs",
        help="generate built-in counterfactual pairs, or import and validate your own",
        description=(
            "Write a pair file (JSONL: id, prompt, remove or prompt_mod, choices, target, meta). "
            "Either generate a built-in task (--task) or import a file (--from). Every row is "
            "validated; a bad row stops the command naming its file, line and id, or with "
            "--on-error skip is left out and reported (in OUT.skipped.jsonl) while every good "
            "row is kept."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  introspect pairs --task sycophancy --n 2000 --seed 0 --out syc.jsonl\n"
            "  introspect pairs --from xstest_prompts.csv --format xstest --out refusal.jsonl\n"
            "  introspect pairs --from mine.csv --map prompt=question --map remove=cue "
            "--map choices=options --map target=answer --out mine.jsonl\n\n" + EXIT_CODES
        ),
    )
    src = pairs.add_mutually_exclusive_group(required=True)
    src.add_argument("--task", choices=sorted(TASKS), help="built-in task generator")
    src.add_argument("--from", dest="source", metavar="FILE", help="file to import")
    pairs.add_argument("--n", type=int, default=1000, help="pairs to generate (default 1000)")
    pairs.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    pairs.add_argument(
        "--format", default="auto", choices=FORMATS, help="format of --from (default: detected)"
    )
    pairs.add_argument(
        "--map",
        action="append",
        metavar="FIELD=COLUMN",
        help="for generic JSONL/CSV/Parquet: which column holds a pair field",
    )
    pairs.add_argument("--out", required=True, help="pair file to write (JSONL)")
    pairs.add_argument(
        "--on-error",
        choices=("fail", "skip"),
        default="fail",
        help="stop at the first bad row (default) or skip and report bad rows",
    )
    pairs.add_argument(
        "--skipped-report",
        metavar="PATH",
        help="where to write skipped rows (default OUT.skipped.jsonl)",
    )
    pairs.add_argument("--model", help="also check every pair fits this model's context")
    add_json_argument(pairs, "a summary (pairs written, rows skipped)")
    pairs.set_defaults(func=_cmd_pairs)
