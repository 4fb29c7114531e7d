"""``introspect models list``: the built-in model aliases and the conversion cache."""

from __future__ import annotations

import argparse

from introspect._args import add_json_argument, write_json_output


def _cmd_models(args: argparse.Namespace) -> int:
    from introspect.models import format_models_table, list_models

    rows = list_models()
    if not (write_json_output(args.json, rows) and args.json == "-"):
        print(format_models_table(rows))
    return 0


def add_models_parser(sub) -> None:
    models = sub.add_parser("models", help="the built-in model aliases and the conversion cache")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    mlist = msub.add_parser("list", help="aliases, whether installed and cached, cache sizes")
    add_json_argument(mlist, "the table")
    mlist.set_defaults(func=_cmd_models)
