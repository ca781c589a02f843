"""Errors that mean "what was asked for cannot be done as asked": the message says what to change.

Command-line entry points print them in one or two lines and exit with status 2, no traceback
(``--debug`` or ``ACEREC_DEBUG=1`` shows it); anything else is a bug and keeps its traceback. A leaf
module, so that every layer can raise them without importing the layers above it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(ValueError):
    """A mistake in the user's input: unknown model or dataset, a value of the wrong type, bad files."""


class MissingInputError(UsageError, FileNotFoundError):
    """A file or folder the user named (or the run needs) does not exist."""


class UnknownIdError(UsageError, KeyError):
    """A user or item id that the dataset does not have."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


@contextmanager
def usage_errors_exit(program: str, debug: bool = False) -> Iterator[None]:
    """Inside: a ``UsageError`` prints ``<program>: error: <message>`` to stderr and exits with status 2.

    ``debug`` (the entry point's ``--debug``) or the environment variable ``ACEREC_DEBUG=1`` lets it
    propagate with its traceback instead.
    """
    try:
        yield
    except UsageError as err:
        if debug or os.environ.get("ACEREC_DEBUG", "") not in ("", "0"):
            raise
        print(f"{program}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
