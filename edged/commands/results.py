"""`edged results`: finished jobs and their outputs as a table, CSV, JSON or JSON lines; `--follow` keeps going."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from datetime import datetime
from typing import Any, Callable, Optional, Sequence

from edged.commands import command_parts
from edged.commands.output import emit_json, retry_at, shown_status
from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.store import DatabaseMissing
from edged.store.queries import list_results
from edged.timeutil import local_time, parse_iso, parse_since, utcnow

FOLLOW_POLL_SECONDS = 1.0
CSV_COLUMNS = ("job_id", "task", "status", "retry_at", "finished_at", "created_at", "source_path", "params", "model",
               "attempts", "prompt_tokens", "output_tokens", "duration_ms", "output", "error")
_STATUS_W = 13  # 'retry in 2.5h'
_MIN_OUTPUT = 20  # the output column never gets narrower than this, even in a narrow terminal


def _one_line(text: Optional[str]) -> str:
    return " ".join((text or "").split())


def _clip(text: str, width: Optional[int]) -> str:
    return text if width is None or len(text) <= width else text[: max(width - 1, 0)] + "…"


class Table:
    """Rows that fit the terminal: the output column takes what the others leave. Not a terminal
    (a pipe, a file): nothing is cut."""

    def __init__(self, tty: bool, width: int, now: Callable[[], datetime] = utcnow) -> None:
        self.tty, self.width, self.now = tty, width, now
        self.zone = local_time(utcnow())[-6:]

    def header(self) -> str:
        return self._line("job", "task", "status", f"when ({self.zone})", "source", "output / error", _STATUS_W)

    def _line(self, job: str, task: str, status: str, when: str, source: str, body: str, status_w: int) -> str:
        head = f"{job:>6}  {task:<9} {status:<{status_w}} {when:<19} "
        if not self.tty:
            return f"{head}{source:<32} {body}".rstrip()
        room = self.width - len(head)
        source_w = max(12, min(32, (room - _MIN_OUTPUT - 1)))
        body_w = max(_MIN_OUTPUT, room - source_w - 1)
        return f"{head}{_clip(source, source_w):<{source_w}} {_clip(body, body_w)}".rstrip()

    def row(self, row: dict[str, Any]) -> str:
        now = self.now()
        when_text = retry_at(row, now) or row["finished_at"] or row["created_at"]
        when = local_time(when_text)
        # The header names the zone of now; a row from the other side of a DST change says its own.
        when = when[:19] if when.endswith(self.zone) else when
        body = row["output"] if row["status"] == "done" else row["error"]
        return self._line(str(row["job_id"]), row["task"], shown_status(row, now), when,
                          _one_line(row["source_path"]), _one_line(body), _STATUS_W)


def _csv_row(row: dict[str, Any], now: datetime) -> list[Any]:
    values = {**row, "params": json.dumps(row["params"], ensure_ascii=False, sort_keys=True),
              "retry_at": retry_at(row, now)}
    return [values.get(c) for c in CSV_COLUMNS]


class Printer:
    """One format, printed a batch of rows at a time (the header once, before the first)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.started = False
        self.csv = csv.writer(sys.stdout, lineterminator="\n")
        size = shutil.get_terminal_size()
        self.table = Table(sys.stdout.isatty(), size.columns)

    def print(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.fmt == "json":
            emit_json(list(rows))
            return
        first, self.started = not self.started, True
        if self.fmt == "jsonl":
            for row in rows:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        elif self.fmt == "csv":
            if first:
                self.csv.writerow(CSV_COLUMNS)
            now = utcnow()
            for row in rows:
                self.csv.writerow(_csv_row(row, now))
        else:
            if first:
                print(self.table.header())
            for row in rows:
                print(self.table.row(row))
        sys.stdout.flush()  # a follower's reader (a pipe) sees each job as it finishes


def _fetch(settings: Settings, **query: Any) -> Optional[list[dict[str, Any]]]:
    """The rows, or None when there is no database yet (nothing has run: not a failure)."""
    try:
        parts = command_parts(settings, "read")
    except DatabaseMissing:
        return None
    try:
        return list_results(parts.queue.engine, **query)
    finally:
        parts.queue.engine.dispose()


def results(settings: Settings, *, task: Optional[str], since: Optional[str], status: Optional[str], fmt: str,
            limit: int, follow: bool = False) -> ExitCode:
    try:
        since_dt = parse_since(since) if since else None
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    if follow and fmt == "json":
        raise CliError("--follow prints jobs as they finish: use --format jsonl, csv or table, not json",
                       ExitCode.USAGE)
    printer = Printer(fmt)
    rows = _fetch(settings, task=task, status=status, since=since_dt, limit=limit or None)
    if rows is None:
        print(f"edged: no database at {settings.database_url} yet: the daemon creates it when it first starts",
              file=sys.stderr)
        rows = []
    printer.print(rows)
    if not follow:
        return ExitCode.OK
    try:
        _follow(settings, printer, rows, task=task, status=status)
    except KeyboardInterrupt:  # Ctrl-C is how a follower ends: not an error
        pass
    return ExitCode.OK


def _follow(settings: Settings, printer: Printer, shown: list[dict[str, Any]], *, task: Optional[str],
            status: Optional[str]) -> None:
    """Poll the read-only database about once a second and print jobs that finished since."""
    seen = {(r["job_id"], r["finished_at"]) for r in shown}
    marks = [r["finished_at"] for r in shown if r["finished_at"]]
    mark = max(marks) if marks else None
    start = utcnow()
    while True:
        time.sleep(FOLLOW_POLL_SECONDS)
        # Opened afresh each time: a read-only open of a database nobody was writing reads it
        # as immutable, and would never see the daemon's later commits.
        since = parse_iso(mark) if mark else start
        rows = _fetch(settings, task=task, status=status, since=since, limit=None) or []
        new = [r for r in reversed(rows) if (r["job_id"], r["finished_at"]) not in seen]
        if new:
            printer.print(new)
            seen.update((r["job_id"], r["finished_at"]) for r in new)
            mark = max([m for m in (mark, *(r["finished_at"] for r in new)) if m], default=None)
