"""Finding files in the inbox: watchdog events, full scans, and the stability rule.

A file is handed on only when it is complete as far as anyone can tell from outside: no
event for it during the quiet period, and size, mtime and ctime unchanged. On a local
filesystem a ctime older than the quiet period proves that on its own (nothing can set
ctime back), so a pre-filled inbox is taken in at once. On network filesystems the server's
clock is not ours: there the file must be seen unchanged across two looks a quiet period apart.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from edged.config import Settings
from edged.logs import get_logger
from edged.spool.layout import SpoolLayout

log = get_logger("edged.spool")

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "sshfs", "fuse", "9p", "afs", "ceph", "glusterfs")


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> Optional[str]:
    """The filesystem type of the mount that holds `path`, from /proc/self/mountinfo."""
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open(mountinfo, encoding="utf-8") as fh:
            for line in fh:
                left, _, right = line.partition(" - ")
                fields = left.split()
                if len(fields) < 5 or not right:
                    continue
                mount_point = fields[4].encode().decode("unicode_escape")
                below = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if below and len(mount_point) >= len(best):
                    best, best_type = mount_point, right.split()[0]
    except OSError:
        return None
    return best_type


def is_network_fs(fstype: Optional[str]) -> bool:
    if not fstype:
        return False
    return any(fstype == t or fstype.startswith(t + ".") for t in NETWORK_FS)


@dataclass
class _Candidate:
    last_event: float
    key: Optional[tuple] = None
    key_since: float = 0.0


class StabilityTracker:
    """Candidates and the rule that decides when each one is complete. Thread-safe."""

    def __init__(self, quiet_seconds: float, trust_ctime: bool = True,
                 clock: Callable[[], float] = time.monotonic, wallclock: Callable[[], float] = time.time) -> None:
        self.quiet = quiet_seconds
        self.trust_ctime = trust_ctime
        self._clock, self._wall = clock, wallclock
        self._cands: dict[Path, _Candidate] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._cands)

    def touch(self, path: Path, event: bool = True) -> None:
        now = self._clock()
        with self._lock:
            cand = self._cands.get(path)
            if cand is None:
                # A scan is not an event: a file found by a scan may be ready at once.
                self._cands[path] = _Candidate(now if event else now - self.quiet)
            elif event:
                cand.last_event = now

    def forget(self, path: Path) -> None:
        with self._lock:
            self._cands.pop(path, None)

    def ready(self) -> list[Path]:
        """Pop and return the candidates that are complete; drop those that vanished."""
        now, wall = self._clock(), self._wall()
        out: list[Path] = []
        with self._lock:
            items = list(self._cands.items())
        for path, cand in items:
            if now - cand.last_event < self.quiet:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self.forget(path)
                continue
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key != cand.key:
                cand.key, cand.key_since = key, now
                settled_on_disk = self.trust_ctime and wall - max(st.st_mtime, st.st_ctime) >= self.quiet
                if not settled_on_disk:
                    continue
            elif now - cand.key_since < self.quiet:
                continue
            out.append(path)
        with self._lock:
            for path in out:
                self._cands.pop(path, None)
        return out


class Deferred(Exception):
    """Raised by `on_ready` for paths it could not take now; they are offered again later."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(f"{len(paths)} files deferred")
        self.paths = paths


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: SpoolWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        path = Path(os.fsdecode(event.dest_path or event.src_path))
        if event.event_type == "deleted":
            self.watcher.tracker.forget(path)
        elif event.is_directory:
            if event.event_type in ("created", "moved"):
                # A folder moved in whole brings files that raised no event of their own.
                self.watcher.scan(path)
        else:
            self.watcher.saw(path)


class SpoolWatcher:
    """Feeds complete files of the inbox to `on_ready`, from its own thread."""

    def __init__(self, layout: SpoolLayout, quiet_seconds: float, on_ready: Callable[[list[Path]], object],
                 polling: bool = False, poll_interval: float = 1.0, tick: float = 0.2) -> None:
        self.layout = layout
        self.on_ready = on_ready
        self.fstype = filesystem_type(layout.inbox)
        self.polling = polling or is_network_fs(self.fstype)
        if self.polling and not polling:
            log.warning("polling_inbox", reason="network filesystem", fstype=self.fstype, inbox=str(layout.inbox))
        self.tracker = StabilityTracker(quiet_seconds, trust_ctime=not self.polling)
        self.tick = tick
        self._observer = PollingObserver(timeout=poll_interval) if self.polling else Observer()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def saw(self, path: Path) -> None:
        rel = self.layout.rel(path)
        if rel is not None and self.layout.wanted(rel):
            self.tracker.touch(path)

    def scan(self, top: Optional[Path] = None) -> int:
        """Offer every file below `top` (default: the whole inbox) as a candidate."""
        n = 0
        for path in self.layout.walk(top):
            self.tracker.touch(path, event=False)
            n += 1
        return n

    def start(self) -> None:
        self._observer.schedule(_Handler(self), str(self.layout.inbox), recursive=True)
        self._observer.start()
        self._thread = threading.Thread(target=self._loop, name="spool-stability", daemon=True)
        self._thread.start()
        log.info("watching", inbox=str(self.layout.inbox), fstype=self.fstype,
                 observer="polling" if self.polling else "inotify")

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            ready: list[Path] = []
            try:
                ready = self.tracker.ready()
                if ready:
                    self.on_ready(ready)
            except Deferred as exc:  # the store cannot take writes: offer these again, quietly
                for path in exc.paths:
                    self.tracker.touch(path, event=False)
                self._stop.wait(1.0)
            except Exception:  # the intake thread must outlive any one bad file or DB hiccup
                log.exception("intake_error", files=len(ready))
                for path in ready:  # offer them again on the next tick
                    self.tracker.touch(path, event=False)
                self._stop.wait(1.0)

    def apply(self, settings: Settings) -> None:
        self.tracker.quiet = settings.watch.stability_seconds

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return  # never started
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=10)
