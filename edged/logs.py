"""structlog set-up: JSON lines for journald and files, readable console output on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _StderrLogger:
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process; safe to call again (SIGHUP may change the level)."""
    factory = structlog.PrintLoggerFactory(file=stream) if stream else (lambda *_args: _StderrLogger())
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            # No frame locals: they would carry input text and file contents into the journal.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty(),
                                                     exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    # Libraries (apscheduler, watchdog) log through the standard library: keep them quiet
    # unless debugging, and route what they say to the same stream.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=stream if stream is not sys.stderr else None,
                        force=True)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    # A lazy proxy: modules create loggers at import time, before configure_logging() runs.
    return structlog.get_logger(component=name)
