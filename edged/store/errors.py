"""Telling "the database cannot take writes right now" apart from a bug.

A full disk, an I/O error or a busy lock that outlasted the timeout is the box's trouble,
not a job's: the transaction was rolled back whole, no attempt may be charged for it, and
the work is tried again once the database takes writes again.
"""

from __future__ import annotations

from typing import Optional

from edged.exitcodes import EdgedError, ExitCode


class UnsupportedDatabase(EdgedError):
    """A database URL this edged cannot use."""

    code = ExitCode.CONFIG

# sqlite3 result codes (the low byte of an extended code).
_CODES = {13: "database or disk is full", 10: "disk I/O error", 5: "database is locked",
          8: "database is read-only", 14: "cannot open the database file"}
_MESSAGES = ("database or disk is full", "disk i/o error", "database is locked", "readonly database",
             "unable to open database file")


class StoreUnavailable(EdgedError):
    """The database refused a write for a reason of its own (disk full, I/O); nothing was changed."""


def unavailable_reason(error: BaseException) -> Optional[str]:
    """Why the database could not take a write, or None if `error` is something else."""
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CODES:
        return f"{_CODES[code & 0xFF]} ({orig})"
    text = str(orig).lower()
    if any(m in text for m in _MESSAGES):
        return str(orig)
    return None
