"""A download's progress on stderr: a bar redrawn in place on a terminal, plain lines elsewhere.

Plain lines come at the start of a file, every `every_s` seconds and at its end, so that a log
of `edged model pull` run from a script or a unit file shows how it went without a line per
chunk.
"""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class DownloadBar:
    def __init__(self, stream: Optional[TextIO] = None, every_s: float = 10.0, width: int = 24) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s
        self.width = width
        self.name, self.done, self.resumed = "", 0, 0
        self.total: Optional[int] = None
        self.started = self.last = 0.0

    def begin(self, name: str, total: Optional[int], have: int) -> None:
        self.name, self.total, self.done, self.resumed = name, total, have, have
        self.started = self.last = time.monotonic()
        if not self.tty:
            size = _size(total) if total is not None else "size unknown"
            start = f", resuming at {_size(have)}" if have else ""
            self._line(f"{name}: {size}{start}")

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        now = time.monotonic()
        if now - self.last >= (0.2 if self.tty else self.every_s):
            self.last = now
            self._draw(now)

    def end(self) -> None:
        now = time.monotonic()
        if self.tty:
            self._draw(now)
            self.stream.write("\n")
            self.stream.flush()
            return
        took = now - self.started
        rate = (self.done - self.resumed) / took if took > 0 else 0.0
        self._line(f"{self.name}: {_size(self.done)} of {_size(self.total) if self.total is not None else '?'}"
                   f" in {_duration(took)} ({_size(rate)}/s)")

    def _status(self, now: float) -> str:
        took = now - self.started
        rate = (self.done - self.resumed) / took if took > 0 else 0.0
        if self.total:
            left = self.total - self.done
            eta = _duration(left / rate) if rate > 0 else "?"
            pct = min(100.0, 100.0 * self.done / self.total)
            return f"{pct:5.1f}% {_size(self.done)} of {_size(self.total)}, {_size(rate)}/s, ETA {eta}"
        return f"{_size(self.done)}, {_size(rate)}/s"

    def _draw(self, now: float) -> None:
        if not self.tty:
            self._line(f"{self.name}: {self._status(now)}")
            return
        filled = int(self.width * self.done / self.total) if self.total else 0
        bar = "#" * min(filled, self.width) + "." * (self.width - min(filled, self.width))
        self.stream.write(f"\r\x1b[K{self.name[-40:]} [{bar}] {self._status(now)}")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
