"""Moving a finished job's inputs out of the inbox, after its state is committed.

This is the second half of the spool's invariant: the store commits first, then the files
move, then the store records where they went. A crash anywhere in between leaves records in
`pending` state for finished jobs; `reconcile()` at start-up completes their move.
"""

from __future__ import annotations

from typing import Optional, Sequence

from edged.logs import get_logger
from edged.spool import SpoolFiles
from edged.store import DONE, FileRecord, Queue
from edged.timeutil import now_iso

log = get_logger("edged.settle")


class Settler:
    def __init__(self, queue: Queue, files: SpoolFiles) -> None:
        self.queue = queue
        self.files = files

    def result_file(self, rel: str, task: str, output: str) -> None:
        """The result file of a job without input files of its own (spawned by another job)."""
        self.files.write_result(rel, task, output)

    def done(self, records: Sequence[FileRecord], task: str, output: str) -> None:
        settled = []
        for rec in records:
            self.files.write_result(rec.path, task, output)
            moved = self.files.move_out(rec.path, "done", rec.inode)
            settled.append((rec.id, "done" if moved else "missing", moved))
        self.queue.settle_files(settled)

    def failed(self, records: Sequence[FileRecord], task: str, error: str, attempts: int) -> None:
        settled = []
        for rec in records:
            info = {"job_id": rec.job_id, "task": task, "source": f"inbox/{rec.path}", "error": error,
                    "attempts": attempts, "failed_at": now_iso()}
            moved = self.files.fail(rec.path, info, rec.inode)
            settled.append((rec.id, "failed" if moved else "missing", moved))
        self.queue.settle_files(settled)

    def job(self, job_id: int, task: str, records: Optional[Sequence[FileRecord]] = None) -> None:
        """Settle a finished job's files, reading its outcome from the store."""
        if records is None:
            records = self.queue.files_of([job_id])[job_id]
        if not records:
            return
        status = self.queue.job_status(job_id)
        if status is None:
            return
        state, error, attempts = status
        if state == DONE:
            self.done(records, task, self.queue.result_output(job_id) or "")
        else:
            self.failed(records, task, error or "failed", attempts)

    def reconcile(self) -> int:
        """Finish the moves a crash interrupted; returns how many files were settled."""
        by_job: dict[int, list[FileRecord]] = {}
        for rec, _status in self.queue.unsettled():
            by_job.setdefault(rec.job_id, []).append(rec)
        for job_id, records in by_job.items():
            self.job(job_id, records[0].path.split("/", 1)[0], records)
        n = sum(len(r) for r in by_job.values())
        if n:
            log.info("reconciled", files=n, jobs=len(by_job))
        return n
