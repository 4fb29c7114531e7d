"""Command-line pieces shared by the subcommands (argparse only: importing this module imports
no torch). Each subcommand's parser lives beside its layer (``<layer>/commands.py``);
:mod:`introspect.cli` only assembles them and turns errors into one line and an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from introspect.errors import EXIT_BAD_INPUT, EXIT_MODEL, EXIT_USAGE, EXIT_WRITE

# A parser or one of its argument groups: both take add_argument.
Arguments = argparse.ArgumentParser | argparse._ArgumentGroup

DEVICE_HELP = (
    "where the model runs: auto (a CUDA GPU if one is visible, else cpu), cpu, cuda, cuda:N"
)
CHAT_TEMPLATE_CHOICES = ("model", "plain", "auto")  # = introspect.models.CHAT_TEMPLATE_CHOICES
CHAT_TEMPLATE_HELP = (
    "how chat-message prompts are rendered: 'model' uses the model's own chat template (an "
    "error for base models, which have none); 'plain' writes them as a transcript (system text, "
    "'User: ...', 'Assistant:'); 'auto' uses the model's template where it has one, else plain"
)
MODEL_HELP = "alias (smollm2-135m, gemma3-270m), model directory, .gguf file or hub id"
EXIT_CODES = (
    f"exit codes: 0 done, {EXIT_USAGE} bad command line or settings, {EXIT_BAD_INPUT} invalid "
    f"input data, {EXIT_MODEL} model not found or not loadable, {EXIT_WRITE} cannot write "
    "(disk full, permissions); --debug shows the traceback of an error"
)


def add_device_argument(parser: Arguments) -> None:
    """``--device`` (default ``auto``), checked by :func:`introspect.models.resolve_device`."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_chat_template_argument(parser: Arguments) -> None:
    parser.add_argument(
        "--chat-template", choices=CHAT_TEMPLATE_CHOICES, default="model", help=CHAT_TEMPLATE_HELP
    )


def add_json_argument(parser: Arguments, what: str) -> None:
    """``--json PATH``, the same on every subcommand: write ``what`` as JSON to PATH (``-``:
    standard output)."""
    parser.add_argument(
        "--json", metavar="PATH", help=f"also write {what} as JSON to PATH ('-': standard output)"
    )


def write_json_output(path: str | None, obj: Any) -> bool:
    """Writes ``obj`` where ``--json`` asked (nothing when it was not given); True if written."""
    if not path:
        return False
    text = json.dumps(obj, indent=2, default=str)
    if path == "-":
        print(text)
    else:
        from introspect._io import write_atomic

        write_atomic(path, (text + "\n").encode("utf-8"))
    return True


def say(message: str) -> None:
    """A line on stderr (warnings, progress, notes)."""
    print(message, file=sys.stderr, flush=True)
