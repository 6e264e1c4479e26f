"""Errors caused by the user's input. The command line prints their message as one line and exits with code 2.
Warnings (something repaired or worked around) are one line on stderr too.

A leaf module: it imports nothing of the project, so that every part can raise these errors.
"""

from __future__ import annotations

import sys


class HarnessError(Exception):
    """An error caused by the user's input: what was wrong, what was expected, what to do."""


class UnknownName(HarnessError, KeyError):
    """A name that no registry holds (a mixer, model, task, suite or launcher)."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


def warn(message: str) -> None:
    """Tell the user of something that went wrong and was repaired or worked around: one line on stderr."""
    print(f"warning: {message}", file=sys.stderr)
