"""structlog set-up: JSON lines for journald and files, readable console output on a TTY.

Under systemd (stderr is the journal's stream, `$JOURNAL_STREAM` names it) each line starts
with its syslog priority (`<3>` error … `<7>` debug), which journald strips and keeps, so
`journalctl -u edged -p warning` finds warnings; a line never holds a raw newline, so a
traceback stays one record; and an uncaught exception is logged as one record too.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any, Callable, Optional, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# sd-daemon(3) priorities by structlog level name.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2, "fatal": 2}


def journal_stream(stream: TextIO) -> bool:
    """Whether `stream` is the journal's: systemd sets JOURNAL_STREAM to its device:inode."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _one_record(line: str) -> str:
    return line.replace("\r", "").replace("\n", " \\n ")


class _JournalRenderer:
    """The renderer's line with its priority in front and no newline inside."""

    def __init__(self, render: Callable[..., Any]) -> None:
        self.render = render

    def __call__(self, logger: Any, name: str, event_dict: dict) -> str:
        priority = _PRIORITY.get(str(event_dict.get("level", name)), 6)
        return f"<{priority}>" + _one_record(str(self.render(logger, name, event_dict)))


class _JournalFormatter(logging.Formatter):
    """The standard library's records (apscheduler, watchdog) the same way."""

    def format(self, record: logging.LogRecord) -> str:
        priority = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}.get(record.levelno, 2)
        return f"<{priority}>" + _one_record(super().format(record))


def _log_uncaught(kind: type[BaseException], value: BaseException, tb: Optional[TracebackType]) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, tb)
        return
    structlog.get_logger(component="edged").critical("unhandled_exception", error=f"{kind.__name__}: {value}",
                                                     exc_info=(kind, value, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is not None:
        _log_uncaught(args.exc_type, args.exc_value, args.exc_traceback)


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
    journal = journal_stream(stream)
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    processors: list = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    render: Callable[..., Any]
    if use_json:
        # No frame locals: they would carry input text and file contents into the journal.
        processors.append(structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)))
        render = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        render = structlog.dev.ConsoleRenderer(colors=stream.isatty() and not journal,
                                               exception_formatter=structlog.dev.plain_traceback)
    processors.append(_JournalRenderer(render) if journal else render)
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
    if journal:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    # A lazy proxy: modules create loggers at import time, before configure_logging() runs.
    return structlog.get_logger(component=name)
