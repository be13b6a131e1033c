"""Moving a finished job's inputs out of the inbox, after its state is committed.

This is the second half of the spool's invariant: the store commits first, then the files
move, then the store records where they went. A crash anywhere in between leaves records in
`pending` state for finished jobs; `reconcile()` completes their move at start-up and from
upkeep. Whatever one file does here (a name too long, a folder the daemon may not write, a
full disk) is that file's own trouble: it is logged (less often the longer it lasts),
recorded, and tried again later; it never leaves this module as an exception.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from edged.logs import get_logger
from edged.pathnames import displayable
from edged.spool import Moved, SpoolFiles
from edged.store import DONE, FileRecord, FileState, Queue, Settled, StoreUnavailable
from edged.timeutil import now_iso

log = get_logger("edged.settle")

_STATES: dict[str, FileState] = {"missing": "missing", "changed": "superseded"}
RETRY_BASE_S = 5.0
RETRY_MAX_S = 3600.0


class Settler:
    def __init__(self, queue: Queue, files: SpoolFiles, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.files = files
        self._clock = clock
        self._trouble: dict[int, tuple[int, float]] = {}  # file id -> (failures, when to try again)
        self._noted_folders: set[str] = set()
        # Told each job once, when the last of its files has settled and is recorded so (or at
        # its end, for a job without files): hooks.py's sidecars and post-job hook.
        self.after: Optional[Callable[[int], None]] = None

    def result_file(self, rel: str, task: str, output: str) -> None:
        """The result file of a job without input files of its own (spawned by another job)."""
        try:
            self.files.write_result(rel, task, output)
        except Exception as exc:  # the result is in the database; the file is a convenience
            log.warning("result_file_failed", file=displayable(rel), task=task, error=f"{type(exc).__name__}: {exc}")

    def done(self, job_id: int, task: str, output: str) -> None:
        """Settle every pending file of a done job (copies attached while it ran included)."""
        if self._settle(self._records(job_id), task, output=output):
            self._ended(job_id)

    def failed(self, job_id: int, task: str, error: str, attempts: int) -> None:
        if self._settle(self._records(job_id), task, error=error, attempts=attempts):
            self._ended(job_id)

    def _ended(self, job_id: int) -> None:
        if self.after is not None:
            try:
                self.after(job_id)
            except Exception as exc:  # the job is settled; what comes after is a convenience
                log.warning("after_job_failed", job_id=job_id, error=f"{type(exc).__name__}: {exc}")

    def job(self, job_id: int, task: str, records: Optional[Sequence[FileRecord]] = None) -> None:
        """Settle a finished job's files, reading its outcome from the store."""
        try:
            records = self._records(job_id) if records is None else records
            status = self.queue.job_status(job_id) if records else None
            output = self.queue.result_output(job_id) if status and status[0] == DONE else None
        except StoreUnavailable as exc:
            log.warning("settle_deferred", job_id=job_id, error=str(exc), detail="the database is not available")
            return
        if status is None:
            return
        state, error, attempts = status
        if state == DONE:
            whole = self._settle(records, task, output=output or "")
        else:
            whole = self._settle(records, task, error=error or "failed", attempts=attempts)
        # A reconcile may bring only some of a job's files (the others still backing off).
        if whole and not self._pending_of(job_id):
            self._ended(job_id)

    def _pending_of(self, job_id: int) -> bool:
        try:
            return bool(self._records(job_id))
        except StoreUnavailable:
            return True  # unknown: the next reconcile decides

    def reconcile(self, force: bool = False) -> int:
        """Finish the moves a crash or a file's trouble left undone; returns how many files were settled.

        `force`: ignore the back-off of files that failed before (start-up).
        """
        now = self._clock()
        by_job: dict[int, list[FileRecord]] = {}
        for rec, _status in self.queue.unsettled():
            if force or self._trouble.get(rec.id, (0, 0.0))[1] <= now:
                by_job.setdefault(rec.job_id, []).append(rec)
        for job_id, records in by_job.items():
            self.job(job_id, records[0].path.split("/", 1)[0], records)
        n = sum(len(r) for r in by_job.values())
        if n:
            log.info("reconciled", files=n, jobs=len(by_job))
        return n

    def forget_departed(self) -> int:
        """Originals left in the inbox after a copy: once the producer removes them, forget them."""
        gone = []
        for file_id, rel, inode in self.queue.left_in_inbox():
            try:
                st = self.files.fs.lstat(["inbox", *rel.split("/")])
            except Exception:  # unreachable now counts as gone
                st = None
            if st is None or st.st_ino != inode:
                gone.append(file_id)
        if gone:
            self.queue.forget_left(gone)
        return len(gone)

    # -- one file at a time -----------------------------------------------------------

    def _records(self, job_id: int) -> list[FileRecord]:
        return self.queue.files_of([job_id])[job_id]

    def _settle(self, records: Sequence[FileRecord], task: str, output: Optional[str] = None,
                error: Optional[str] = None, attempts: int = 0) -> bool:
        """Whether every one of `records` settled and the store recorded it."""
        settled = [s for s in (self._one(rec, task, output, error, attempts) for rec in records) if s is not None]
        try:
            self.queue.settle_files(settled)
        except StoreUnavailable as exc:
            # The files have moved; their records say pending. The next reconcile finds each
            # where it went, by inode, and records it then.
            log.warning("settle_unrecorded", files=len(settled), error=str(exc), detail="recorded once the database"
                        " takes writes again")
            return False
        for s in settled:
            self._trouble.pop(s.file_id, None)
        return len(settled) == len(records)

    def _one(self, rec: FileRecord, task: str, output: Optional[str], error: Optional[str],
             attempts: int) -> Optional[Settled]:
        result = None
        try:
            if output is not None:
                moved = self.files.move_out(rec.path, "done", rec.inode, rec.size_bytes, rec.mtime_ns)
                # Only an input that reached done/ gets a result file (one replaced or removed
                # meanwhile has its result in the database): a crash before this line is
                # finished by reconcile, which finds the moved file by inode.
                if moved.state in ("moved", "copied"):
                    result = self.files.write_result(rec.path, task, output)
            else:
                info = {"job_id": rec.job_id, "task": task, "source": f"inbox/{rec.display}", "error": error,
                        "attempts": attempts, "failed_at": now_iso()}
                moved = self.files.fail(rec.path, info, rec.inode, rec.size_bytes, rec.mtime_ns)
        except Exception as exc:  # one file's trouble stays that file's
            self._note_trouble(rec, exc)
            return None
        if moved.state == "copied":
            self._note_copy(rec, moved)
        state: FileState = _STATES.get(moved.state, "done" if output is not None else "failed")
        return Settled(rec.id, state, moved.to, moved.inode, result, left_in_inbox=moved.state == "copied")

    def _note_trouble(self, rec: FileRecord, exc: Exception) -> None:
        failures = self._trouble.get(rec.id, (0, 0.0))[0] + 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1))
        self._trouble[rec.id] = (failures, self._clock() + delay)
        text = f"{type(exc).__name__}: {exc}"
        if failures & (failures - 1) == 0:  # the 1st, 2nd, 4th, 8th … failure: a stuck file never floods the log
            log.warning("settle_failed", file=rec.display, job_id=rec.job_id, error=text, failures=failures,
                        retry_in_s=delay, detail="the file stays in the inbox, recorded; it is tried again")
        try:
            self.queue.settle_trouble(rec.id, text)
        except StoreUnavailable:
            pass

    def _note_copy(self, rec: FileRecord, moved: Moved) -> None:
        folder = rec.path.rsplit("/", 1)[0]
        if folder not in self._noted_folders:
            self._noted_folders.add(folder)
            log.warning("inbox_folder_not_removable", folder=f"inbox/{displayable(folder)}", detail=moved.note,
                        fix="let producers make folders the daemon may write (umask 007 or a default ACL, see README)")
