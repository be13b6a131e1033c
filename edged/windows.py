"""Processing windows ("22:00-06:00"): when the model may run. Intake is never paused by them."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Callable, Optional, Sequence

from edged.logs import get_logger

log = get_logger("edged.windows")

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(text: str) -> tuple[time, time]:
    """'HH:MM-HH:MM' in local time; a window whose end is before its start runs past midnight."""
    m = _WINDOW.match(text)
    if not m:
        raise ValueError(f"processing window {text!r} is not HH:MM-HH:MM (e.g. 22:00-06:00)")
    h1, m1, h2, m2 = map(int, m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"processing window {text!r} has an impossible time")
    start = time(h1, m1)
    if h2 == 24 and start == time(0, 0):
        return start, time.max  # the whole day
    end = time(0, 0) if h2 == 24 else time(h2, m2)
    if start == end:
        raise ValueError(f"processing window {text!r} is empty (start equals end); leave the list empty to run always")
    return start, end


def _inside(start: time, end: time, t: time) -> bool:
    if start < end:
        return start <= t < end
    return t >= start or t < end  # wraps past midnight


def is_open(windows: Sequence[str], now: Optional[datetime] = None) -> bool:
    """True when the model may run now: no windows configured, or now falls in one of them."""
    if not windows:
        return True
    t = (now or datetime.now().astimezone()).time().replace(tzinfo=None)
    return any(_inside(*parse_window(w), t) for w in windows)


def next_opening(windows: Sequence[str], now: Optional[datetime] = None) -> Optional[datetime]:
    """When the next window opens (None when always open or open now), to the minute."""
    now = now or datetime.now().astimezone()
    if is_open(windows, now):
        return None
    probe = now.replace(second=0, microsecond=0)
    for _ in range(24 * 60 + 1):
        probe += timedelta(minutes=1)
        if is_open(windows, probe):
            return probe
    return None


class WindowWatch:
    """Whether the model may run now; each opening and closing is logged once and published."""

    def __init__(self, publish: Callable[..., None]) -> None:
        self.publish = publish
        self.open = True

    def check(self, windows: Sequence[str]) -> bool:
        now_open = is_open(windows)
        if now_open != self.open:
            self.open = now_open
            opening = next_opening(windows)
            log.info("processing_window", open=now_open, windows=list(windows),
                     next_opening=opening.isoformat() if opening else None,
                     detail=None if now_open else "the model waits; intake continues")
            self.publish(processing_open=now_open, next_opening=opening.isoformat() if opening else None)
        return now_open
