"""Scheduled housekeeping: WAL checkpoint and planner statistics, and retention of old work."""

from __future__ import annotations

from datetime import timedelta

from edged.config import RetentionSettings
from edged.logs import get_logger
from edged.spool import SpoolFiles
from edged.store.stats import Stats
from edged.timeutil import utcnow

log = get_logger("edged.upkeep")


def checkpoint(stats: Stats) -> None:
    wal_pages, moved, partial = stats.checkpoint()
    log.info("db_checkpoint", wal_pages=wal_pages, checkpointed=moved, partial=partial,
             detail="a reader held an older snapshot; the rest is folded next time" if partial else None)


def retention(stats: Stats, files: SpoolFiles, cfg: RetentionSettings) -> tuple[int, int]:
    """Delete finished inputs (done/, and failed/ when configured) and their rows after cfg.days.

    Files go first, rows second: a crash in between leaves rows pointing at nothing, which
    the next run deletes; never a file nobody knows about. Result files in out/ are the
    operator's to collect and are left alone. Returns (jobs deleted, files deleted).
    """
    if cfg.days is None:
        return 0, 0
    cutoff = utcnow() - timedelta(days=cfg.days)
    expired = stats.expired(cutoff, cfg.include_failed)
    removed = 0
    for _job_id, moved in expired:
        for rel, inode in moved:
            try:
                removed += files.discard(rel, inode)
            except (OSError, ValueError) as exc:
                log.warning("retention_file_error", file=rel, error=str(exc))
    jobs = stats.delete_jobs([job_id for job_id, _ in expired])
    periods = stats.prune_throughput(cutoff)
    blobs = stats.prune_blobs()
    if jobs or removed or periods:
        log.info("retention", days=cfg.days, jobs_deleted=jobs, files_deleted=removed,
                 throughput_rows_deleted=periods, blobs_deleted=blobs)
    return jobs, removed
