"""The errors a user of introspect can meet, and the exit code the command line gives each.

Every error that a user's input can cause derives from :class:`IntrospectError`; the command line
prints its message as one ``introspect: error: ...`` line and exits with its ``exit_code`` (no
traceback; ``--debug`` shows it). Library calls raise the same exceptions. Each keeps the
built-in base it always had (``ValueError`` or ``RuntimeError``), so existing ``except`` clauses
still catch it.

Exit codes: 0 success; 1 an unexpected internal error (a bug: the traceback is printed); 2 a bad
command line or settings that do not fit together; 3 invalid input data (a pair file, a run
directory, labels); 4 a model that cannot be found or loaded; 5 the disk is full or a file cannot
be written.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_MODEL = 4
EXIT_WRITE = 5


class IntrospectError(Exception):
    """Base of every error a user's input or environment can cause."""

    exit_code = EXIT_BAD_INPUT


class UsageError(IntrospectError, ValueError):
    """Options or settings that do not fit together."""

    exit_code = EXIT_USAGE


class BadInputError(IntrospectError, ValueError):
    """Input data that cannot be used (a file that cannot be read as what it should be)."""
