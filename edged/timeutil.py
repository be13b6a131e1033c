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


def local_time(value: datetime | str | None) -> str:
    """A time for people: the box's local time with its UTC offset ('2026-12-01 17:05:03 +01:00').

    Processing windows are local times, so the commands print local times too; the offset
    says which clock a reader is looking at. JSON output keeps the stored UTC text.
    """
    if value is None or value == "":
        return "-"
    dt = parse_iso(value) if isinstance(value, str) else value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    local = dt.astimezone()
    offset = local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S") + f" {offset[:3]}:{offset[3:]}"


def span(seconds: float) -> str:
    """A duration in one unit a person reads at a glance: 45s, 4m, 2.5h, 3.0d."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def relative(value: datetime | str, now: datetime | None = None) -> str:
    """'in 4m' for a time ahead, '4m ago' for one behind."""
    dt = parse_iso(value) if isinstance(value, str) else value
    delta = (dt - (now or utcnow())).total_seconds()
    return f"in {span(delta)}" if delta >= 0 else f"{span(delta)} ago"
