"""Process exit codes of the `edged` command: a stable, documented contract for scripts."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # unexpected error (a bug, or an OS error nobody anticipated)
    USAGE = 2  # bad command line (argparse uses 2 as well)
    CONFIG = 3  # the config file is missing or invalid
    NOT_FOUND = 4  # a named job, file or model does not exist
    ALREADY_RUNNING = 5  # another daemon holds the state directory's lock
    MODEL_UNAVAILABLE = 6  # the model could not be found or loaded
    INPUT = 7  # a file given on the command line cannot be used
    CHECK_FAILED = 8  # `edged doctor` found a problem
    NO_ACCESS = 9  # the database cannot be used as this user (the message names who can)
    DATABASE = 10  # the database is not one this edged can use (a newer schema)
    DOWNLOAD_FAILED = 11  # `edged model pull` could not fetch or check a file (network, access, checksum)
    UNAVAILABLE = 12  # the database server cannot be reached, or refused this box (the message says which)
    INTERRUPTED = 130  # stopped by SIGINT before finishing


class EdgedError(Exception):
    """Something the operator can fix; the message says how, `code` is what `edged` exits with.

    Every part raises its own subclass with its own code, so that `cli.main` holds the one
    handler and no command maps errors to codes by hand.
    """

    code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, code: ExitCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class CliError(EdgedError):
    """A command's own refusal (bad arguments, nothing to do)."""
