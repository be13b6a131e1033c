"""`edged results`: finished jobs and their outputs as a table, JSON or JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from edged.commands import command_parts
from edged.commands.output import emit_json
from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.store import DatabaseMissing
from edged.store.queries import list_results
from edged.timeutil import parse_since


def _clip(text: Optional[str], width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def results(settings: Settings, *, task: Optional[str], since: Optional[str], status: Optional[str], fmt: str,
            limit: int) -> ExitCode:
    try:
        since_dt = parse_since(since) if since else None
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from None
    rows: list[dict[str, Any]] = []
    try:
        engine = command_parts(settings, "read").queue.engine
    except DatabaseMissing as exc:
        print(f"edged: {exc}", file=sys.stderr)  # nothing has run yet: no results, not a failure
    else:
        rows = list_results(engine, task=task, status=status, since=since_dt, limit=limit or None)
    if fmt == "json":
        emit_json(rows)
    elif fmt == "jsonl":
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        print(f"{'job':>6}  {'task':<9} {'status':<7} {'finished':<20} {'source':<32} output / error")
        for row in rows:
            when = (row["finished_at"] or row["created_at"])[:19].replace("T", " ")
            body = row["output"] if row["status"] == "done" else row["error"]
            print(f"{row['job_id']:>6}  {row['task']:<9} {row['status']:<7} {when:<20} "
                  f"{_clip(row['source_path'], 32):<32} {_clip(body, 60)}")
    return ExitCode.OK
