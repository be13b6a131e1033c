"""UTC timestamps as fixed-width ISO-8601 text: they sort as strings and read well in sqlite3."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_FMT = "%Y-%m-%dT%H:%M:%S.%f"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    """'2026-11-27T23:46:39.123Z' (milliseconds, always 24 characters)."""
    return dt.astimezone(timezone.utc).strftime(_FMT)[:-3] + "Z"


def now_iso() -> str:
    return iso(utcnow())


def parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A CLI time: relative ('90s', '30m', '2h', '7d', '1w') or absolute ISO-8601 (UTC if no zone)."""
    m = _REL.match(text)
    if m:
        return (now or utcnow()) - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        return parse_iso(text.strip())
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 30m, 2h, 7d or 2026-11-27T10:00)") from None
