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


# PostgreSQL SQLSTATE classes and codes that are the server's or the link's trouble, not a
# statement's: connection exceptions (08), insufficient resources (53: a full disk, too many
# connections), operator intervention (57: a shutdown, pg_terminate_backend, statement_timeout),
# transaction rollback (40: a serialization failure or a deadlock, worth trying again), and a
# transaction the server ended for idling (25P03).
_PG_CLASSES = {"08": "the connection to the server failed", "53": "the server is out of resources",
               "57": "the server ended the statement or the session", "40": "the transaction was rolled back"}
_PG_CODES = {"25P03": "the server ended a transaction left idle", "25006": "the database is read-only"}


class StoreUnavailable(EdgedError):
    """The database refused a write for a reason of its own (disk full, I/O); nothing was changed."""


def unavailable_reason(error: BaseException) -> Optional[str]:
    """Why the database could not take a write, or None if `error` is something else."""
    orig = getattr(error, "orig", error)
    state = getattr(orig, "sqlstate", None)
    if state or getattr(error, "connection_invalidated", False) or type(orig).__module__.startswith("psycopg"):
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
        if state in _PG_CODES:
            return f"{_PG_CODES[state]} ({first})"
        if state and state[:2] in _PG_CLASSES:
            return f"{_PG_CLASSES[state[:2]]} ({first})"
        if state is None and (getattr(error, "connection_invalidated", False)
                              or type(orig).__name__ in ("OperationalError", "InterfaceError")):
            return f"the database server is out of reach ({first})"
        return None
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CODES:
        return f"{_CODES[code & 0xFF]} ({orig})"
    text = str(orig).lower()
    if any(m in text for m in _MESSAGES):
        return str(orig)
    return None
