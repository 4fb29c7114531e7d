"""The ``introspect`` command line: assembles the subcommands, each defined beside its layer
(``introspect/<layer>/commands.py``), and turns every user mistake into one
``introspect: error: ...`` line and its exit code (``--debug`` shows the traceback)."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback

from introspect._args import CHAT_TEMPLATE_CHOICES, EXIT_CODES
from introspect.errors import EXIT_INTERNAL, EXIT_USAGE, EXIT_WRITE, IntrospectError

__all__ = ["CHAT_TEMPLATE_CHOICES", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (building it imports no torch)."""
    from introspect.bench import add_bench_parser
    from introspect.data.commands import add_pairs_parser
    from introspect.engine.commands import add_extract_parser, add_measure_parser
    from introspect.evaluation.commands import add_eval_parser
    from introspect.experiment.commands import add_experiment_parser
    from introspect.info import add_info_parser
    from introspect.models.commands import add_models_parser
    from introspect.training.commands import add_train_parser

    parser = argparse.ArgumentParser(
        prog="introspect",
        description=(
            "Counterfactual self-explanation research on language models: measure how behaviour "
            "changes when a feature is removed from the input, extract the hidden states that "
            "carry it, train explainers, and test whether they track the current model."
        ),
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (
        add_info_parser,
        add_pairs_parser,
        add_measure_parser,
        add_extract_parser,
        add_models_parser,
        add_train_parser,
        add_eval_parser,
        add_experiment_parser,
        add_bench_parser,
    ):
        add(sub)
    return parser


def _version() -> str:
    from introspect import __version__

    return f"introspect {__version__}"


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"introspect: error: {' '.join(str(message).split())}", file=sys.stderr)
    return code


def _os_error(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device writing{where}: free some space and run again"
    return f"{exc.strerror or exc}:{where}" if where else str(exc)


def main(argv: list[str] | None = None) -> int:
    """Runs one subcommand; returns its exit code (see :mod:`introspect.errors`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except IntrospectError as exc:
        return _fail(str(exc), exc.exit_code, debug)
    except OSError as exc:
        return _fail(_os_error(exc), EXIT_WRITE, debug)
    except KeyboardInterrupt:
        print("introspect: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            "introspect: error: an internal error (the traceback above); please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
