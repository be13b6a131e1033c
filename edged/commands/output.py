"""How the commands print: JSON for scripts, and the words and times people read."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, Mapping, Optional

from edged.timeutil import local_time, parse_iso, relative, utcnow


def emit_json(obj: object) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def retry_at(job: Mapping[str, Any], now: Optional[datetime] = None) -> Optional[str]:
    """When a queued job runs again, if that is still ahead (it failed or its worker died): else None."""
    when = job.get("next_run_at")
    if job.get("status") != "queued" or not when:
        return None
    return when if parse_iso(when) > (now or utcnow()) else None


def shown_status(job: Mapping[str, Any], now: Optional[datetime] = None) -> str:
    """The job's state in words: 'queued' that waits for its retry says so, and for how long."""
    when = retry_at(job, now)
    return f"retry {relative(when, now)}" if when else str(job["status"])


def retry_words(job: Mapping[str, Any], now: Optional[datetime] = None) -> Optional[str]:
    """'waiting for its retry at 2026-12-01 17:05:03 +01:00 (in 4m)', or None."""
    when = retry_at(job, now)
    return f"waiting for its retry at {local_time(when)} ({relative(when, now)})" if when else None
