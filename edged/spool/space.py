"""Free space where the daemon writes: below the floor, intake pauses until space comes back.

Two filesystems matter, and they may be one: the spool's (inputs, result files) and the
state folder's (the database). Low space on either pauses intake; low space where the
database lives also holds the model, whose results could not be committed anyway.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Mapping, Optional

from edged.config import Settings
from edged.logs import get_logger

log = get_logger("edged.space")


def free_mb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)


class SpaceGuard:
    """Tracks whether each watched place has at least `min_free_mb` free; logs each change once."""

    def __init__(self, paths: Mapping[str, Path] | Path, min_free_mb: int,
                 on_resume: Optional[Callable[[], None]] = None, measure: Callable[[Path], int] = free_mb) -> None:
        self.paths = dict(paths) if isinstance(paths, Mapping) else {"spool": Path(paths)}
        self.min_free_mb = min_free_mb
        self.on_resume = on_resume or (lambda: None)
        self.measure = measure
        self.low: dict[str, int] = {}  # place -> free MB, for the places below the floor
        self.free_by_place: dict[str, Optional[int]] = {}
        self._lock = threading.Lock()

    def apply(self, settings: Settings) -> None:
        self.min_free_mb = settings.spool.min_free_mb
        self.check()

    @property
    def paused(self) -> bool:
        return bool(self.low)

    @property
    def store_low(self) -> bool:
        return "state" in self.low

    @property
    def free(self) -> Optional[int]:
        """Free MB on the spool's filesystem (what status shows)."""
        return self.free_by_place.get("spool")

    def check(self) -> bool:
        """Measure now; returns True while intake may go on."""
        with self._lock:
            was = dict(self.low)
            for place, path in self.paths.items():
                try:
                    free = self.measure(path)
                except OSError as exc:
                    log.warning("disk_check_failed", place=place, path=str(path), error=str(exc))
                    continue
                self.free_by_place[place] = free
                if free < self.min_free_mb:
                    self.low[place] = free
                else:
                    self.low.pop(place, None)
            now = dict(self.low)
        if now and not was:
            log.warning("intake_paused", reason="low disk space", free_mb=min(now.values()), low_mb=now,
                        min_free_mb=self.min_free_mb,
                        paths={p: str(self.paths[p]) for p in now},
                        detail="files stay in the inbox; intake resumes by itself"
                        + ("; the model waits too (its results could not be stored)" if "state" in now else ""))
        elif now and set(now) != set(was):
            log.warning("low_disk_places", low_mb=now, min_free_mb=self.min_free_mb)
        elif was and not now:
            log.info("intake_resumed", free_mb=dict(self.free_by_place), min_free_mb=self.min_free_mb)
            self.on_resume()
        return not now
