"""`edged results`: finished jobs and their outputs as a table, CSV, JSON or JSON lines; `--follow` keeps going."""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional, Sequence

from edged.commands import command_parts
from edged.commands.output import emit_json, retry_at, shown_status
from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.pathnames import for_csv, for_terminal
from edged.store import DatabaseMissing
from edged.store.postgres import shown
from edged.store.queries import list_results
from edged.timeutil import local_time, parse_iso, parse_since, utcnow

FOLLOW_POLL_SECONDS = 1.0
CSV_COLUMNS = ("job_id", "task", "status", "retry_at", "finished_at", "created_at", "source_path", "params", "model",
               "attempts", "prompt_tokens", "output_tokens", "duration_ms", "output", "error")
_STATUS_W = 14  # 'retry in 10.0d'; a longer status (a retry months ahead) is clipped
_MIN_OUTPUT = 20  # the output column gets at least this while the terminal leaves room for it
_MIN_SOURCE = 12
_LONG_WHEN = "%Y-%m-%d %H:%M:%S"  # 19 characters
_SHORT_WHEN = "%m-%d %H:%M"  # 11: the day and minute, on terminals narrower than _WIDE
_WIDE = 100  # from here the long time fits beside a source and an output worth reading
_NARROW = 77  # below this the task column goes: a job's source path begins with its task anyway
_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _one_line(text: Optional[str], stored: bool = False) -> str:
    """The text on one line, fit for a terminal: whitespace runs (newlines too) as one space, and
    control characters escaped before any clipping, so a cut never halves an escape sequence."""
    return for_terminal(" ".join((text or "").split()), stored=stored)


def _char_width(ch: str) -> int:
    """Columns a terminal gives a character: 2 for East Asian wide and fullwidth (CJK, most emoji),
    0 for combining marks and other zero-width ones (ZWJ, variation selectors, LRM), else 1.
    Counting len() instead made a Chinese row 99 columns wide at 80."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    if unicodedata.category(ch) == "Cf":
        return 1 if ch == "\u00ad" else 0  # a soft hyphen shows as a hyphen in terminals (as wcwidth says)
    if "\u1160" <= ch <= "\u11ff":  # Hangul vowels and finals: they join the syllable before them
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _width(text: str) -> int:
    return sum(map(_char_width, text))


def _clip(text: str, width: Optional[int]) -> str:
    """At most `width` columns, cut with … when longer; zero-width marks stay with their letter."""
    if width is None or _width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _char_width(ch)
        if used + w > width - 1:  # room for the …
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def _pad(text: str, width: int, right: bool = False) -> str:
    """Filled with spaces to `width` display columns (str.format pads by characters)."""
    fill = " " * max(width - _width(text), 0)
    return fill + text if right else text + fill


class Table:
    """Rows that fit the terminal: the output column takes what the others leave. Not a terminal
    (a pipe, a file): nothing is cut. Every row has the same columns at the same places.

    From _WIDE columns: job, task, status, the full local time, source, output. Narrower: the time
    as month-day hour:minute; below _NARROW the task goes too (the source path names it). A row
    fits from 51 columns (job ids up to 6 digits, status, time, 7 of source and 8 of output); the
    job column is as wide as the widest id shown (fit), at least 6, and a longer id takes its
    columns from the source and the output. Widths are display columns (CJK and emoji count 2)."""

    def __init__(self, tty: bool, width: int, now: Callable[[], datetime] = utcnow) -> None:
        self.tty, self.width, self.now = tty, width, now
        current = now().astimezone()
        # One clock for the column, the offset of now: a row from the other side of a DST change is
        # shown on that clock too, so it takes the same width and lines up (show and JSON give the
        # stored UTC time).
        self.tz = timezone(current.utcoffset() or timedelta(0))
        self.zone = local_time(current)[-6:]
        wide = not tty or width >= _WIDE
        self.when_fmt = _LONG_WHEN if wide else _SHORT_WHEN
        self.when_w = 19 if wide else 11
        self.with_task = not tty or width >= _NARROW
        self.when_head = f"when ({self.zone})" if wide else f"when {self.zone}"
        self.job_w = 6

    def header(self) -> str:
        return self._line("job", "task", "status", self.when_head, "source", "output / error")

    def fit(self, rows: Sequence[dict[str, Any]]) -> bool:
        """Widen the job column to the widest id among `rows` (a fixed 6 pushed the later columns
        of a 7-digit id right, past the terminal's edge); True when it grew, so that a follower
        prints the header again over the rows now laid out wider."""
        widest = max((len(str(r["job_id"])) for r in rows), default=0)
        if widest <= self.job_w:
            return False
        self.job_w = widest
        return True

    def _line(self, job: str, task: str, status: str, when: str, source: str, body: str) -> str:
        task_part = f"{_pad(_clip(task, 9), 9)} " if self.with_task else ""
        head = (f"{_pad(job, self.job_w, right=True)}  {task_part}{_pad(_clip(status, _STATUS_W), _STATUS_W)} "
                f"{_pad(_clip(when, self.when_w), self.when_w)} ")
        if not self.tty:
            return f"{head}{_pad(source, 32)} {body}".rstrip()
        room = self.width - _width(head)
        if room >= _MIN_SOURCE + 1 + _MIN_OUTPUT:
            source_w = min(32, room - _MIN_OUTPUT - 1)
        else:  # a narrow terminal: the two share what is left, the output the odd column
            source_w = max(3, (room - 1) // 2)
        body_w = max(4, room - source_w - 1)
        return f"{head}{_pad(_clip(source, source_w), source_w)} {_clip(body, body_w)}".rstrip()

    def row(self, row: dict[str, Any]) -> str:
        now = self.now()
        when_text = retry_at(row, now) or row["finished_at"] or row["created_at"]
        when = parse_iso(when_text).astimezone(self.tz).strftime(self.when_fmt)
        body = row["output"] if row["status"] == "done" else row["error"]
        return self._line(str(row["job_id"]), for_terminal(row["task"]), shown_status(row, now), when,
                          _one_line(row["source_path"], stored=True), _one_line(body))


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet will not run: one that begins like a formula gets a leading ' (as
    OWASP recommends against CSV injection), and control characters (C0, DEL, C1) other than the
    newlines and tabs that CSV quoting carries are escaped, since a CSV is also read in a terminal.
    Nothing else changes: soft hyphens, bidi marks and backslashes are the data's. `--format jsonl`
    gives the exact text."""
    if not isinstance(value, str):
        return value
    text = for_csv(value)
    return "'" + text if text.startswith(_CSV_FORMULA) else text


def _csv_row(row: dict[str, Any], now: datetime) -> list[Any]:
    values = {**row, "params": json.dumps(row["params"], ensure_ascii=False, sort_keys=True),
              "retry_at": retry_at(row, now)}
    return [_csv_cell(values.get(c)) for c in CSV_COLUMNS]


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
            # The header again when a wider job id widened the column under a follower.
            if self.table.fit(rows) or first:
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
    start = utcnow()  # before the first read: what changes after it, a follower prints
    rows = _fetch(settings, task=task, status=status, since=since_dt, limit=limit or None)
    if rows is None:
        print(f"edged: no database at {shown(settings.database_url)} yet: the daemon creates it when it first starts",
              file=sys.stderr)
        rows = []
    if not follow:
        printer.print(rows)
        return ExitCode.OK
    try:
        # The first rows inside the try: a reader that has seen them may press Ctrl-C at once.
        printer.print(rows)
        _follow(settings, printer, rows, task=task, status=status, start=start)
    except KeyboardInterrupt:  # Ctrl-C is how a follower ends: not an error
        pass
    return ExitCode.OK


# A follower looks back this far before its last poll: a worker takes its clock a moment before
# its commit lands, so a job can commit with a time just before the poll that missed it.
# What was already shown is recognised by its outcome (_outcome) and not printed twice.
FOLLOW_OVERLAP = timedelta(seconds=30)


def _outcome(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes a job's line news: a new status, attempt, finish or retry time."""
    return row["job_id"], row["status"], row["attempts"], row["finished_at"], row["next_run_at"]


def _follow(settings: Settings, printer: Printer, shown: list[dict[str, Any]], *, task: Optional[str],
            status: Optional[str], start: datetime) -> None:
    """Poll the read-only database about once a second and print each job whose outcome is new
    since: done, failed, or failed and waiting for its retry, a job already listed included when
    it changed (a retry that then succeeds is printed again, with its output)."""
    # Each outcome printed, with when it was: one older than the look-back cannot come back (its
    # times are older still), so a follower left running for weeks forgets it.
    seen = dict.fromkeys((_outcome(r) for r in shown), start)
    mark = start
    while True:
        time.sleep(FOLLOW_POLL_SECONDS)
        polled = utcnow()
        # Opened afresh each time: a read-only open of a database nobody was writing reads it
        # as immutable, and would never see the daemon's later commits.
        rows = _fetch(settings, task=task, status=status, changed_since=mark - FOLLOW_OVERLAP, limit=None) or []
        new = [r for r in reversed(rows) if _outcome(r) not in seen]
        if new:
            printer.print(new)
            seen.update(dict.fromkeys((_outcome(r) for r in new), polled))
        old = polled - 2 * FOLLOW_OVERLAP
        for key in [k for k, when in seen.items() if when < old]:
            del seen[key]
        mark = polled
