"""`edged retry`: failed jobs get a fresh set of attempts; their files return to the inbox."""

from __future__ import annotations

from typing import Sequence

from edged.commands import command_parts
from edged.config import Settings
from edged.exitcodes import ExitCode
from edged.store.queries import failed_job_ids


def retry(settings: Settings, job_ids: Sequence[int], all_failed: bool = False) -> ExitCode:
    parts = command_parts(settings, "write")
    ids = list(job_ids) + (failed_job_ids(parts.queue.engine) if all_failed else [])
    code = ExitCode.OK
    files = parts.queue.files_of(ids, state="failed")
    for job_id in ids:
        state = parts.queue.job_status(job_id)
        if state is None:
            print(f"{job_id}\tnot found")
            code = ExitCode.NOT_FOUND
            continue
        if state[0] != "failed":
            print(f"{job_id}\tnot failed (status {state[0]}); nothing to do")
            continue
        # Files first: a job back in the queue without its file would just fail again.
        for rec in files[job_id]:
            if rec.left_in_inbox:  # the original never left: drop the copy, take the original again
                if rec.moved_to:
                    parts.files.discard(rec.moved_to, rec.moved_inode)
                parts.queue.restore_file(rec.id, rec.path)
                continue
            if not rec.moved_to:
                continue
            try:
                rel = parts.files.restore(rec.moved_to, rec.path)
            except (FileNotFoundError, OSError) as exc:
                print(f"{job_id}\tcannot restore: {exc}")
                continue
            parts.queue.restore_file(rec.id, rel)
        parts.queue.requeue([job_id])
        print(f"{job_id}\tqueued")
    return code
