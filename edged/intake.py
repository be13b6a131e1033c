"""Turning complete files in the inbox into queued jobs (used by the daemon and `edged submit`).

Each file's trouble stays its own: a file that cannot be looked at, read or recorded is
logged once and left where it is, and the files around it are queued as usual. Files are
recorded in chunks (one fsync per chunk, not per file); a chunk the database refuses is
split until the one file it refuses is found. A database that cannot take writes at all
(full disk) defers intake as a whole, and nothing is lost: the files wait in the inbox.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

from edged import tasks
from edged.config import Settings
from edged.logs import get_logger
from edged.pathnames import displayable
from edged.settle import Settler
from edged.spool import InputChanged, InputRefused, SpoolLayout
from edged.spool.watch import Deferred
from edged.store import Enqueued, NewFile, Queue, StoreUnavailable

log = get_logger("edged.intake")

CHUNK = 500  # files per transaction: one fsync per chunk, not per file
STORE_RETRY_S = 5.0


class Intake:
    def __init__(self, settings: Settings, queue: Queue, layout: SpoolLayout, settler: Settler, model: str,
                 on_queued: Optional[Callable[[], None]] = None, paused: Callable[[], bool] = lambda: False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.queue = queue
        self.layout = layout
        self.settler = settler
        self.model = model
        self.on_queued = on_queued or (lambda: None)
        # While this says so (low disk), files are left in the inbox untouched; a rescan
        # brings them in when it clears.
        self.paused = paused
        self._clock = clock
        # rel -> fingerprint of files already recorded and still in the inbox: a rescan then
        # costs one stat per file, not a re-hash.
        self.known: dict[str, tuple] = {}
        # rel -> fingerprint of files that could not be looked at or recorded: tried again
        # after the next full rescan, logged only the first time.
        self.troubled: dict[str, tuple] = {}
        self._logged: set[tuple[str, tuple]] = set()
        self.store_down: Optional[str] = None
        self._store_retry_at = 0.0

    def apply(self, settings: Settings) -> None:
        self.settings = settings

    def load_known(self) -> None:
        self.known = self.queue.pending_fingerprints()

    def take(self, paths: Iterable[Path]) -> list[tuple[NewFile, Enqueued]]:
        """Record every path that is a new, complete input; settle duplicates and refusals at once.

        Raises Deferred (with the paths not yet recorded) while the database cannot
        take writes.
        """
        paths = list(paths)
        if self.paused():
            log.debug("intake_declined", files=len(paths), reason="low disk space")
            return []
        if self.store_down is not None and self._clock() < self._store_retry_at:
            raise Deferred(paths)
        results: list[tuple[NewFile, Enqueued]] = []
        for start in range(0, len(paths), CHUNK):
            chunk = paths[start:start + CHUNK]
            items = [item for item in map(self._describe_safely, chunk) if item is not None]
            try:
                recorded = self._record(items)
            except StoreUnavailable as exc:
                self._store_failed(exc)
                raise Deferred(paths[start:]) from None
            self._store_ok()
            self._after(recorded)  # chunk by chunk: the model starts on a backlog before it is all queued
            results.extend(recorded)
        return results

    def _after(self, results: list[tuple[NewFile, Enqueued]]) -> None:
        queued = False
        for item, res in results:
            self.known[item.path] = (item.inode, item.size_bytes, item.mtime_ns, item.ctime_ns)
            if res.outcome == "known":
                continue
            log.info("file_received", file=displayable(item.path), task=item.task,
                     job_id=res.job_id, outcome=res.outcome, bytes=item.size_bytes)
            if res.outcome in ("duplicate", "refused"):
                if res.outcome == "refused":
                    log.warning("file_refused", file=displayable(item.path), reason=item.refused, job_id=res.job_id)
                self.settler.job(res.job_id, item.task)
            else:
                queued = True
        if queued:
            self.on_queued()

    def _record(self, items: list[NewFile]) -> list[tuple[NewFile, Enqueued]]:
        """Enqueue `items`; a chunk the database refuses is halved until the refused file stands alone."""
        if not items:
            return []
        try:
            return list(zip(items, self.queue.enqueue(items, self.model), strict=True))
        except StoreUnavailable:
            raise
        except Exception as exc:  # one file's record refused (a name SQLite will not take …)
            if len(items) == 1:
                self._trouble(items[0].path, (items[0].inode, items[0].size_bytes, items[0].mtime_ns,
                                              items[0].ctime_ns), "file_unrecordable", exc)
                return []
            mid = len(items) // 2
            return self._record(items[:mid]) + self._record(items[mid:])

    def _describe_safely(self, path: Path) -> Optional[NewFile]:
        try:
            return self._describe(path)
        except Exception as exc:  # an unexpected error with one file stays with that file
            self._trouble(str(path), None, "file_unreadable", exc)
            return None

    def _describe(self, path: Path) -> Optional[NewFile]:
        insp = self.layout.inspect(path)
        if insp is None or insp.fingerprint is None:
            return None
        fp = insp.fingerprint
        if self.known.get(insp.rel) == fp.key() or self.troubled.get(insp.rel) == fp.key():
            return None
        refused = insp.refused
        sha = None
        if refused is None:
            try:
                sha = self.layout.hash_input(insp.rel, fp)
            except PermissionError as exc:
                refused = (f"refused: edged may not read it ({exc.strerror}); the daemon's user needs read access"
                           " (producers: umask 007 or a default ACL, see the README)")
            except OSError as exc:  # an I/O error: logged once, tried again after the next rescan
                self._trouble(insp.rel, fp.key(), "file_unreadable", exc)
                return None
            if sha is None and refused is None:
                return None  # changed since it was looked at: its next event or a rescan brings it back
        params = tasks.get(insp.task).params_for(insp.rel.split("/"), self.settings)
        data = self._shared_bytes(insp.task, insp.rel, sha) if sha is not None and self.settings.shared else None
        return NewFile(insp.task, insp.rel, sha, params=params, refused=refused, size_bytes=fp.size,
                       mtime_ns=fp.mtime_ns, ctime_ns=fp.ctime_ns, inode=fp.inode, data=data)

    def _shared_bytes(self, task: str, rel: str, sha: str) -> Optional[bytes]:
        """Mode "shared": the file's bytes for the site's database, so that any box can run its job.

        None (the job then runs only on this box) when the file is over its task's input limit
        (it fails there with that reason) or changed since it was hashed (its next event brings it).
        """
        limit = int(getattr(self.settings.tasks, task).max_input_mb * 1024 * 1024)
        try:
            data, _st = self.layout.read_current(rel, limit)
        except (InputChanged, InputRefused, OSError):
            return None
        return data if hashlib.sha256(data).hexdigest() == sha else None

    def _trouble(self, rel: str, key: Optional[tuple], event: str, exc: BaseException) -> None:
        key = key or ()
        if (rel, key) not in self._logged:
            self._logged.add((rel, key))
            log.warning(event, file=displayable(rel), error=f"{type(exc).__name__}: {exc}",
                        detail="the file stays in the inbox; it is tried again after each rescan")
        self.troubled[rel] = key

    def _store_failed(self, exc: StoreUnavailable) -> None:
        if self.store_down is None:
            log.warning("intake_paused", reason="the database cannot take writes", error=str(exc),
                        detail="files stay in the inbox; intake resumes by itself")
        self.store_down = str(exc)
        self._store_retry_at = self._clock() + STORE_RETRY_S

    def _store_ok(self) -> None:
        if self.store_down is not None:
            log.info("intake_resumed", reason="the database takes writes again")
            self.store_down = None

    def forget_missing(self) -> None:
        """After a full rescan: drop remembered fingerprints of files no longer in the inbox, and
        give files that were in trouble another try."""
        self.troubled.clear()
        for rel in list(self.known):
            try:
                there = self.layout.fs.lstat(["inbox", *rel.split("/")]) is not None
            except Exception:  # unreachable counts as gone
                there = False
            if not there:
                self.known.pop(rel, None)
