"""Command-line options shared by several subcommands (argparse only: importing this module
imports no torch)."""

from __future__ import annotations

import argparse

DEVICE_HELP = (
    "where the model runs: auto (a CUDA GPU if one is visible, else cpu), cpu, cuda, cuda:N"
)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device`` (default ``auto``), checked by :func:`introspect.models.resolve_device`."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
