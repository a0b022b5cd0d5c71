"""The root of Overdrive's exception hierarchy.

Every error a user can cause or meet derives from :class:`OverdriveError`; its message is one
line that says what is wrong and, where possible, what to do. The CLI prints exactly that line.
"""

from __future__ import annotations


class OverdriveError(Exception):
    """An error with a one-line, user-facing message."""


class UsageError(OverdriveError):
    """A command was given an argument it cannot work with."""
