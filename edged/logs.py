"""structlog set-up: JSON lines for journald and files, readable console output on a TTY."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process; safe to call again (SIGHUP may change the level)."""
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if use_json:
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=stream.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (apscheduler, watchdog) log through the standard library: keep them quiet
    # unless debugging, and route what they say to the same stream.
    logging.basicConfig(level=max(_LEVELS[level], logging.WARNING), stream=stream, force=True)


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    # A lazy proxy: modules create loggers at import time, before configure_logging() runs.
    return structlog.get_logger(component=name)
