"""Turning complete files in the inbox into queued jobs (used by the daemon and `edged submit`)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Optional

from edged import tasks
from edged.config import Settings
from edged.logs import get_logger
from edged.settle import Settler
from edged.spool import InputRefused, SpoolLayout
from edged.store import Enqueued, NewFile, Queue

log = get_logger("edged.intake")

CHUNK = 500  # files per transaction: one fsync per chunk, not per file


class Intake:
    def __init__(self, settings: Settings, queue: Queue, layout: SpoolLayout, settler: Settler, model: str,
                 on_queued: Optional[Callable[[], None]] = None, paused: Callable[[], bool] = lambda: False) -> None:
        self.settings = settings
        self.queue = queue
        self.layout = layout
        self.settler = settler
        self.model = model
        self.on_queued = on_queued or (lambda: None)
        # While this says so (low disk), files are left in the inbox untouched; a rescan
        # brings them in when it clears.
        self.paused = paused
        # rel -> fingerprint of files already recorded and still in the inbox: a rescan then
        # costs one stat per file, not a re-hash.
        self.known: dict[str, tuple] = {}

    def load_known(self) -> None:
        self.known = self.queue.pending_fingerprints()

    def _describe(self, path: Path) -> Optional[NewFile]:
        insp = self.layout.inspect(path)
        if insp is None:
            return None
        fp = insp.fingerprint
        stat_fields = dict(size_bytes=fp.size, mtime_ns=fp.mtime_ns, ctime_ns=fp.ctime_ns, inode=fp.inode) if fp else {}
        if insp.refused is None and self.known.get(insp.rel) == (fp.key() if fp else None):
            return None
        refused = insp.refused
        sha = None
        if refused is None:
            try:
                sha, _ = self.layout.sha256(insp.rel)
            except FileNotFoundError:
                return None
            except InputRefused as exc:
                refused = str(exc)
            except OSError as exc:  # unreadable now (permissions, I/O): a later rescan tries again
                log.warning("file_unreadable", file=insp.rel, error=str(exc))
                return None
        params = tasks.get(insp.task).params_for(insp.rel.split("/"), self.settings)
        return NewFile(insp.task, insp.rel, sha, params=params, refused=refused, **stat_fields)

    def take(self, paths: Iterable[Path]) -> list[tuple[NewFile, Enqueued]]:
        """Record every path that is a new, complete input; settle duplicates and refusals at once."""
        if self.paused():
            return []
        items = [item for item in map(self._describe, paths) if item is not None]
        results: list[tuple[NewFile, Enqueued]] = []
        for start in range(0, len(items), CHUNK):
            chunk = items[start:start + CHUNK]
            results.extend(zip(chunk, self.queue.enqueue(chunk, self.model)))
        queued = False
        for item, res in results:
            if res.outcome == "known":
                continue
            log.info("file_received", file=item.path, task=item.task,
                     job_id=res.job_id, outcome=res.outcome, bytes=item.size_bytes)
            if res.outcome in ("duplicate", "refused"):
                self.settler.job(res.job_id, item.task)
                if res.outcome == "refused":
                    log.warning("file_refused", file=item.path, reason=item.refused, job_id=res.job_id)
            else:
                self.known[item.path] = (item.inode, item.size_bytes, item.mtime_ns, item.ctime_ns)
                queued = True
        if queued:
            self.on_queued()
        return results

    def forget_missing(self) -> None:
        """Drop remembered fingerprints of files no longer in the inbox (after a full rescan)."""
        for rel in [r for r in self.known if not self.layout.inbox_path(r).exists()]:
            self.known.pop(rel, None)
