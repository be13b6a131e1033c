"""Throughput rows, the daemon's runtime facts, and database upkeep (checkpoint, retention).

Kept apart from queue.py: none of this changes a job's state, and `edged status` reads it
from another process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Optional

from sqlalchemy import Engine

from edged.pathnames import from_db
from edged.store.db import BUSY_TIMEOUT_MS, backend, read, run, write
from edged.timeutil import iso, now_iso


@dataclass(frozen=True)
class Period:
    """One summary period of the worker: what it finished and how fast."""

    start: datetime
    end: datetime
    jobs_done: int
    jobs_failed: int
    jobs_retried: int
    batches: int
    prompt_tokens: int
    output_tokens: int
    engine_ms: float
    avg_wait_ms: Optional[float]
    queued_by_task: dict[str, int]
    model: Optional[str]
    provider: Optional[str]

    @property
    def output_tok_per_s(self) -> Optional[float]:
        """Output tokens per second of model time (the engine's speed, not the queue's)."""
        return round(self.output_tokens / (self.engine_ms / 1000), 2) if self.engine_ms else None


class Checkpoint(NamedTuple):
    wal_pages: int
    checkpointed: int
    partial: bool  # a reader held an older snapshot: the rest is folded next time


class MovedFile(NamedTuple):
    moved_to: str  # relative to the spool
    inode: Optional[int]


class Expired(NamedTuple):
    job_id: int
    moved: list[MovedFile]


# A job (or a row of its results, files or attempts) changed since the fleet's database last took
# it (mode "ship", outbox.py): retention keeps it until it has shipped.
_UNSHIPPED = "EXISTS (SELECT 1 FROM outbox o WHERE o.job_id = {job})"


class Stats:
    """`box`: whose rows these are where boxes share the database (mode "shared"; '' otherwise):
    the runtime facts, the throughput rows and what retention may delete are that box's."""

    def __init__(self, engine: Engine, box: str = "") -> None:
        self.engine = engine
        self.box = box

    def _key(self, key: str) -> str:
        return f"{self.box}/{key}" if self.box else key

    def queued_by_task(self) -> dict[str, int]:
        with read(self.engine) as conn:
            rows = run(conn, "SELECT task, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY task").all()
        return dict(rows)

    def record(self, p: Period) -> None:
        with write(self.engine) as conn:
            run(conn, "INSERT INTO throughput (period_start, period_end, jobs_done, jobs_failed, jobs_retried, batches,"
                      " prompt_tokens, output_tokens, engine_ms, avg_wait_ms, output_tok_per_s, queued, queued_by_task,"
                      " model, provider, box_id) VALUES (:start, :end, :done, :failed, :retried, :batches, :prompt,"
                      " :out, :ms, :wait, :rate, :queued, :by_task, :model, :provider, :box)", box=self.box,
                start=iso(p.start), end=iso(p.end), done=p.jobs_done, failed=p.jobs_failed, retried=p.jobs_retried,
                batches=p.batches, prompt=p.prompt_tokens, out=p.output_tokens, ms=round(p.engine_ms),
                wait=None if p.avg_wait_ms is None else round(p.avg_wait_ms), rate=p.output_tok_per_s,
                queued=sum(p.queued_by_task.values()), by_task=json.dumps(p.queued_by_task, sort_keys=True),
                model=p.model, provider=p.provider)

    def set_runtime(self, **values: Any) -> None:
        """Facts only the daemon knows (model, provider, paused intake) for `edged status`."""
        now = now_iso()
        with write(self.engine) as conn:
            for key, value in values.items():
                run(conn, "INSERT INTO runtime (key, value, updated_at) VALUES (:key, :value, :now)"
                          " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    key=self._key(key), value=json.dumps(value), now=now)

    def runtime(self) -> dict[str, Any]:
        with read(self.engine) as conn:
            rows = run(conn, "SELECT key, value FROM runtime").all()
        if not self.box:
            return {key: json.loads(value) for key, value in rows if "/" not in key}
        mine = f"{self.box}/"
        return {key[len(mine):]: json.loads(value) for key, value in rows if key.startswith(mine)}

    def seen(self, box_id: str, host: str, pid: int, model: Optional[str], provider: Optional[str],
             tasks: list[str], started_at: str) -> None:
        """This box is alive and what it can run (mode "shared": what `edged status` lists per box)."""
        with write(self.engine) as conn:
            run(conn, "INSERT INTO boxes (box_id, host, pid, model, provider, tasks, started_at, last_seen_at)"
                      " VALUES (:box, :host, :pid, :model, :provider, :tasks, :started, :now) ON CONFLICT (box_id)"
                      " DO UPDATE SET host = excluded.host, pid = excluded.pid, model = excluded.model,"
                      " provider = excluded.provider, tasks = excluded.tasks, started_at = excluded.started_at,"
                      " last_seen_at = excluded.last_seen_at", box=box_id, host=host, pid=pid, model=model,
                provider=provider, tasks=json.dumps(tasks), started=started_at, now=now_iso())

    def checkpoint(self, truncate_above_pages: int = 1000) -> Checkpoint:
        """Fold the WAL back into the database and let SQLite refresh its planner statistics.

        PASSIVE never waits: a reader holding an old snapshot just leaves part of the WAL for
        next time. Only when that folded everything and the WAL has grown large is TRUNCATE
        tried (to give an SD card its space back), with no busy wait, because TRUNCATE holds
        off every writer while it waits for readers. PRAGMAs are SQLite's own and take no
        binds: they go to the driver's connection.
        """
        if backend(self.engine) == "postgresql":
            return Checkpoint(0, 0, False)  # the server's own checkpointer and autovacuum do this there
        raw = self.engine.raw_connection()
        try:
            busy, log_pages, done = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and log_pages >= truncate_above_pages and done == log_pages:
                raw.execute("PRAGMA busy_timeout=0")
                try:
                    busy = raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            raw.execute("PRAGMA optimize")
        finally:
            raw.close()
        return Checkpoint(log_pages, done, bool(busy) or (log_pages >= 0 and done < log_pages))

    def expired(self, before: datetime, include_failed: bool) -> list[Expired]:
        """Finished jobs older than `before`, with where their files went (done/ or failed/) and the
        inode found there. Jobs whose original still sits in the inbox (settled by a copy) are kept:
        their row is what tells intake not to take the file again."""
        states = "('done', 'failed')" if include_failed else "('done')"
        # Where boxes share the database, a box deletes only what lies in its own spool.
        own = (" AND NOT EXISTS (SELECT 1 FROM files o WHERE o.job_id = j.id AND o.box_id <> :box)"
               " AND (j.origin_box = :box OR EXISTS (SELECT 1 FROM files m WHERE m.job_id = j.id))"
               if self.box else "")
        with read(self.engine) as conn:
            rows = run(
                conn, f"SELECT j.id, f.moved_to, COALESCE(f.moved_inode, f.inode) AS inode FROM jobs j"
                f" LEFT JOIN files f ON f.job_id = j.id"
                f" WHERE j.status IN {states} AND j.finished_at < :before"
                # A parent goes only with its children (ON DELETE CASCADE): only when every
                # child is itself due (finished, old enough, and of a state being deleted).
                f" AND NOT EXISTS (SELECT 1 FROM jobs c WHERE c.parent_id = j.id"
                f"   AND (c.status NOT IN {states} OR c.finished_at >= :before OR {_UNSHIPPED.format(job='c.id')}))"
                " AND NOT EXISTS (SELECT 1 FROM files k WHERE k.job_id = j.id AND (k.left_in_inbox = 1"
                "   OR k.state = 'pending'))"
                f" AND NOT {_UNSHIPPED.format(job='j.id')}{own}"
                " ORDER BY j.id", before=iso(before), box=self.box,
            ).all()
        out: dict[int, list[MovedFile]] = {}
        for job_id, moved_to, inode in rows:
            out.setdefault(job_id, [])
            if moved_to:
                out[job_id].append(MovedFile(from_db(moved_to) or "", inode))
        return [Expired(job_id, moved) for job_id, moved in out.items()]

    def delete_jobs(self, job_ids: list[int]) -> int:
        """Delete jobs with their results and file rows (ON DELETE CASCADE)."""
        if not job_ids:
            return 0
        with write(self.engine) as conn:
            # Only finished jobs whose children are finished too: a job re-queued (by `edged
            # retry`) since it was listed is kept, and so is its parent.
            return run(conn, "DELETE FROM jobs WHERE id IN :ids AND status IN ('done', 'failed') AND NOT EXISTS"
                             " (SELECT 1 FROM jobs c WHERE c.parent_id = jobs.id"
                             f"  AND (c.status IN ('queued', 'running') OR {_UNSHIPPED.format(job='c.id')}))"
                             f" AND NOT {_UNSHIPPED.format(job='jobs.id')}",
                       expanding=("ids",), ids=list(job_ids)).rowcount

    def prune_blobs(self) -> int:
        """Inputs no job needs any more: every job of that content done, or deleted by retention (a
        failed job's stays, for a retry). Completion deletes its own; this catches the rest."""
        with write(self.engine) as conn:
            return run(conn, "DELETE FROM blobs WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.sha256 = blobs.sha256"
                             " AND jobs.status <> 'done')").rowcount

    def prune_throughput(self, before: datetime) -> int:
        with write(self.engine) as conn:
            return run(conn, "DELETE FROM throughput WHERE period_end < :before AND NOT EXISTS (SELECT 1 FROM outbox o"
                             " WHERE o.tbl = 'throughput' AND o.row_id = throughput.id)", before=iso(before)).rowcount
