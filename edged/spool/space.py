"""Free space on the spool's filesystem: below the floor, intake pauses until space comes back."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Optional

from edged.logs import get_logger

log = get_logger("edged.space")


def free_mb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // (1024 * 1024)


class SpaceGuard:
    """Tracks whether the spool has at least `min_free_mb` free; logs each change once."""

    def __init__(self, path: Path, min_free_mb: int, on_resume: Optional[Callable[[], None]] = None,
                 measure: Callable[[Path], int] = free_mb) -> None:
        self.path = path
        self.min_free_mb = min_free_mb
        self.on_resume = on_resume or (lambda: None)
        self.measure = measure
        self.paused = False
        self.free: Optional[int] = None
        self._lock = threading.Lock()

    def check(self) -> bool:
        """Measure now; returns True while intake may go on."""
        try:
            free = self.measure(self.path)
        except OSError as exc:
            log.warning("disk_check_failed", path=str(self.path), error=str(exc))
            return not self.paused
        with self._lock:
            self.free = free
            was = self.paused
            self.paused = free < self.min_free_mb
        if self.paused and not was:
            log.warning("intake_paused", reason="low disk space", free_mb=free, min_free_mb=self.min_free_mb,
                        path=str(self.path), detail="files stay in the inbox; intake resumes by itself")
        elif was and not self.paused:
            log.info("intake_resumed", free_mb=free, min_free_mb=self.min_free_mb)
            self.on_resume()
        return not self.paused
