"""The durable job queue: enqueue, claim with a lease, finish, retry, recover.

Every state change is one SQLite transaction opened with BEGIN IMMEDIATE (see db.py), so a
crash between any two statements leaves the database in a state the next start-up repairs:
a `running` job whose worker is gone goes back to `queued`, and a result is keyed by job id,
so running a job again never stores a second result.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterable, Optional, Sequence

from sqlalchemy import Connection, Engine, exc

from edged.timeutil import iso, now_iso, parse_iso, utcnow

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


def canonical_params(params: dict) -> str:
    """Parameters as canonical JSON: equal dicts give equal text, so they key jobs reliably."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `attempt` (1-based): base·2^(attempt-1), ±50 % jitter, capped.

    Jitter keeps a burst of jobs that failed together (a full disk, a driver reset) from
    coming back in lock-step.
    """
    delay = base * (2 ** max(0, attempt - 1))
    return min(cap, delay * (0.5 + rand()))


@dataclass(frozen=True)
class NewFile:
    """A file the spool found, ready to become (or join) a job."""

    task: str
    path: str  # relative to the inbox: '<task>/sub/name'
    sha256: Optional[str]
    size_bytes: Optional[int] = None
    mtime_ns: Optional[int] = None
    ctime_ns: Optional[int] = None
    inode: Optional[int] = None
    params: dict = field(default_factory=dict)
    refused: Optional[str] = None  # why the file was not read (a symlink, a FIFO …)


@dataclass(frozen=True)
class Enqueued:
    job_id: Optional[int]
    file_id: Optional[int]
    outcome: str  # new | attached | duplicate | requeued | refused | known


@dataclass(frozen=True)
class Job:
    id: int
    task: str
    params: dict
    model: str
    source_path: str
    sha256: Optional[str]
    attempts: int
    created_at: str
    parent_id: Optional[int] = None  # set for a job spawned by another job's result


@dataclass(frozen=True)
class ResultData:
    output: str
    prompt_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    duration_ms: Optional[int] = None
    # (task, params) of a job to spawn with this result as its input, in the same transaction.
    spawn: Optional[tuple[str, dict]] = None


@dataclass(frozen=True)
class FileRecord:
    id: int
    job_id: int
    path: str
    state: str
    duplicate: bool
    moved_to: Optional[str] = None
    inode: Optional[int] = None


_JOB_COLUMNS = "id, task, params, model, source_path, sha256, attempts, created_at, parent_id"


def _job(row) -> Job:  # noqa: ANN001 - a SQLAlchemy Row
    return Job(row.id, row.task, json.loads(row.params), row.model, row.source_path, row.sha256,
               row.attempts, row.created_at, row.parent_id)


class Queue:
    """One storage interface for jobs; knows nothing of images, prompts or ONNX."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 3,
        backoff_seconds: float = 30.0,
        backoff_max_seconds: float = 3600.0,
        lease_seconds: float = 900.0,
        owner: Optional[str] = None,
    ) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.lease_seconds = lease_seconds
        self.pid = os.getpid()
        self.owner = owner or f"{socket.gethostname()}:{self.pid}"

    # -- intake -------------------------------------------------------------------------

    def enqueue(self, items: Iterable[NewFile], model: str) -> list[Enqueued]:
        """Record files and create or join their jobs, all in one transaction."""
        now = now_iso()
        out: list[Enqueued] = []
        with self.engine.begin() as conn:
            for item in items:
                out.append(self._enqueue_one(conn, item, model, now))
        return out

    def _enqueue_one(self, conn: Connection, item: NewFile, model: str, now: str) -> Enqueued:
        pending = conn.exec_driver_sql(
            "SELECT f.id, f.job_id, j.sha256 FROM files f JOIN jobs j ON j.id = f.job_id "
            "WHERE f.path = ? AND f.state = 'pending'", (item.path,)
        ).first()
        if pending is not None:
            if item.refused is None and pending.sha256 == item.sha256:
                return Enqueued(pending.job_id, pending.id, "known")
            # The file was replaced in place before its job ran: the old record no longer
            # describes what is on disk.
            conn.exec_driver_sql(
                "UPDATE files SET state = 'superseded', settled_at = ? WHERE id = ?", (now, pending.id)
            )
        params = canonical_params(item.params)
        if item.refused is not None:
            job_id = conn.exec_driver_sql(
                "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                " error, created_at, finished_at, next_run_at) VALUES (?, ?, ?, ?, NULL, ?, 'failed', 0, ?, ?, ?, ?)"
                " RETURNING id",
                (item.task, params, model, item.path, item.size_bytes, item.refused, now, now, now),
            ).scalar_one()
            outcome = "refused"
        else:
            job_id = conn.exec_driver_sql(
                "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                " created_at, next_run_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)"
                " ON CONFLICT (task, sha256, params, model) WHERE parent_id IS NULL DO NOTHING RETURNING id",
                (item.task, params, model, item.path, item.sha256, item.size_bytes, now, now),
            ).scalar()
            outcome = "new"
            if job_id is None:
                job_id, outcome = self._join_existing(conn, item, params, model, now)
        file_id = conn.exec_driver_sql(
            "INSERT INTO files (job_id, path, size_bytes, mtime_ns, ctime_ns, inode, state, duplicate,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
            (job_id, item.path, item.size_bytes, item.mtime_ns, item.ctime_ns, item.inode,
             1 if outcome == "duplicate" else 0, now),
        ).scalar_one()
        return Enqueued(job_id, file_id, outcome)

    def _join_existing(self, conn: Connection, item: NewFile, params: str, model: str, now: str) -> tuple[int, str]:
        row = conn.exec_driver_sql(
            "SELECT id, status FROM jobs WHERE task = ? AND sha256 = ? AND params = ? AND model = ?"
            " AND parent_id IS NULL",
            (item.task, item.sha256, params, model),
        ).one()
        if row.status == DONE:
            return row.id, "duplicate"
        if row.status == FAILED:
            # Dropping a file again is how operators say "try this once more".
            conn.exec_driver_sql(
                "UPDATE jobs SET status = 'queued', attempts = 0, next_run_at = ?, finished_at = NULL"
                " WHERE id = ?", (now, row.id)
            )
            return row.id, "requeued"
        return row.id, "attached"

    # -- the worker's side -------------------------------------------------------------

    def claim(self, limit: int, task: Optional[str] = None) -> list[Job]:
        """Lease up to `limit` ready jobs of one task (the task of the oldest ready job)."""
        now = utcnow()
        params = {
            "now": iso(now), "limit": limit, "owner": self.owner, "pid": self.pid,
            "exp": iso(now + timedelta(seconds=self.lease_seconds)), "task": task,
        }
        with self.engine.begin() as conn:
            rows = conn.exec_driver_sql(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
                " lease_owner = :owner, lease_pid = :pid, lease_expires_at = :exp"
                " WHERE id IN (SELECT id FROM jobs WHERE status = 'queued' AND next_run_at <= :now"
                "   AND task = COALESCE(:task, (SELECT task FROM jobs WHERE status = 'queued'"
                "       AND next_run_at <= :now ORDER BY next_run_at, id LIMIT 1))"
                "   ORDER BY next_run_at, id LIMIT :limit)"
                f" RETURNING {_JOB_COLUMNS}",
                params,
            ).all()
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    def complete(self, done: Sequence[tuple[Job, ResultData]]) -> list[bool]:
        """Store results and mark their jobs done, all in one transaction.

        For each job: False when this worker no longer holds its lease (it expired and the
        job was handed on): then nothing is written for it and the caller must not touch its
        files.
        """
        now = now_iso()
        out: list[bool] = []
        with self.engine.begin() as conn:
            for job, result in done:
                updated = conn.exec_driver_sql(
                    "UPDATE jobs SET status = 'done', finished_at = ?, error = NULL, lease_owner = NULL,"
                    " lease_pid = NULL, lease_expires_at = NULL"
                    " WHERE id = ? AND status = 'running' AND lease_owner = ?",
                    (now, job.id, self.owner),
                ).rowcount
                if updated:
                    conn.exec_driver_sql(
                        "INSERT INTO results (job_id, task, output, model, prompt_tokens, output_tokens,"
                        " duration_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id) DO NOTHING",
                        (job.id, job.task, result.output, job.model, result.prompt_tokens, result.output_tokens,
                         result.duration_ms, now),
                    )
                    if result.spawn:
                        self._spawn(conn, job, result, now)
                out.append(bool(updated))
        return out

    @staticmethod
    def _spawn(conn: Connection, parent: Job, result: ResultData, now: str) -> None:
        task, params = result.spawn  # type: ignore[misc]
        sha = hashlib.sha256(result.output.encode("utf-8")).hexdigest()
        conn.exec_driver_sql(
            "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts, created_at,"
            " next_run_at, parent_id) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)"
            " ON CONFLICT (parent_id, task) WHERE parent_id IS NOT NULL DO NOTHING",
            (task, canonical_params(params), parent.model, parent.source_path, sha,
             len(result.output.encode("utf-8")), now, now, parent.id),
        )

    def fail(self, job: Job, error: str, permanent: bool = False) -> Optional[str]:
        """Record a failed attempt: back to the queue with backoff, or `failed` for good.

        Returns the new status, or None if this worker no longer holds the lease.
        """
        now = utcnow()
        final = permanent or job.attempts >= self.max_attempts
        if final:
            status, next_run = FAILED, iso(now)
        else:
            delay = backoff_delay(job.attempts, self.backoff_seconds, self.backoff_max_seconds)
            status, next_run = QUEUED, iso(now + timedelta(seconds=delay))
        with self.engine.begin() as conn:
            updated = conn.exec_driver_sql(
                "UPDATE jobs SET status = ?, error = ?, next_run_at = ?, finished_at = ?, lease_owner = NULL,"
                " lease_pid = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND status = 'running' AND lease_owner = ?",
                (status, error, next_run, iso(now) if final else None, job.id, self.owner),
            ).rowcount
        return status if updated else None

    def release(self, job_ids: Optional[Sequence[int]] = None) -> int:
        """Give leased jobs back untouched (a drain at shutdown): the attempt does not count.

        None: every job this worker holds, which is what a stop wants (a signal can land
        between the claim's commit and the caller learning the ids).
        """
        sql = ("UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), started_at = NULL,"
               " lease_owner = NULL, lease_pid = NULL, lease_expires_at = NULL"
               " WHERE status = 'running' AND lease_owner = ?")
        with self.engine.begin() as conn:
            if job_ids is None:
                return conn.exec_driver_sql(sql, (self.owner,)).rowcount
            return sum(conn.exec_driver_sql(sql + " AND id = ?", (self.owner, jid)).rowcount for jid in job_ids)

    def recover(self, everything: bool = False) -> tuple[int, int]:
        """Return jobs whose worker died to the queue (or fail them after max_attempts).

        `everything=True` at daemon start-up, under the state lock: no other worker can be
        alive, so every `running` job is an orphan, expired or not.
        """
        now = iso(utcnow())
        with self.engine.begin() as conn:
            # Our own leases are never expired by us: they belong to the batch in flight,
            # which may simply be slow (a long translation on a small CPU).
            cond = "status = 'running'" + ("" if everything else " AND lease_expires_at < :now AND lease_owner != :me")
            failed = conn.exec_driver_sql(
                "UPDATE jobs SET status = 'failed', finished_at = :now, lease_owner = NULL, lease_pid = NULL,"
                " lease_expires_at = NULL, error = 'the worker stopped while running this job '"
                " || attempts || ' time(s) (lease expired); giving up'"
                f" WHERE {cond} AND attempts >= :max",
                {"now": now, "max": self.max_attempts, "me": self.owner},
            ).rowcount
            requeued = conn.exec_driver_sql(
                "UPDATE jobs SET status = 'queued', next_run_at = :now, lease_owner = NULL, lease_pid = NULL,"
                f" lease_expires_at = NULL WHERE {cond}",
                {"now": now, "me": self.owner},
            ).rowcount
        return requeued, failed

    def requeue(self, job_ids: Sequence[int]) -> list[int]:
        """Operator retry of failed jobs: a fresh set of attempts. Returns the ids requeued."""
        now = now_iso()
        done: list[int] = []
        with self.engine.begin() as conn:
            for jid in job_ids:
                if conn.exec_driver_sql(
                    "UPDATE jobs SET status = 'queued', attempts = 0, error = NULL, next_run_at = ?,"
                    " finished_at = NULL, started_at = NULL WHERE id = ? AND status = 'failed'",
                    (now, jid),
                ).rowcount:
                    done.append(jid)
        return done

    # -- files -------------------------------------------------------------------------

    def files_of(self, job_ids: Sequence[int], state: str = "pending") -> dict[int, list[FileRecord]]:
        """The file records of some jobs, by job id (every id present, perhaps with no files)."""
        out: dict[int, list[FileRecord]] = {jid: [] for jid in job_ids}
        if not job_ids:
            return out
        marks = ",".join("?" * len(job_ids))
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            rows = conn.exec_driver_sql(
                "SELECT id, job_id, path, state, duplicate, moved_to, inode FROM files"
                f" WHERE job_id IN ({marks}) AND state = ? ORDER BY id", (*job_ids, state)
            ).all()
        for r in rows:
            out[r.job_id].append(FileRecord(r.id, r.job_id, r.path, r.state, bool(r.duplicate), r.moved_to, r.inode))
        return out

    def unsettled(self) -> list[tuple[FileRecord, str]]:
        """Files still in the inbox although their job has finished (a crash after commit)."""
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            rows = conn.exec_driver_sql(
                "SELECT f.id, f.job_id, f.path, f.state, f.duplicate, f.moved_to, f.inode, j.status FROM files f"
                " JOIN jobs j ON j.id = f.job_id WHERE f.state = 'pending' AND j.status IN ('done', 'failed')"
                " ORDER BY f.id"
            ).all()
        return [(FileRecord(r.id, r.job_id, r.path, r.state, bool(r.duplicate), r.moved_to, r.inode), r.status)
                for r in rows]

    def settle_files(self, settled: Sequence[tuple[int, str, Optional[str]]]) -> None:
        """Record (file id, final state, where it went) for files that left the inbox."""
        if not settled:
            return
        now = now_iso()
        with self.engine.begin() as conn:
            for file_id, state, moved_to in settled:
                conn.exec_driver_sql(
                    "UPDATE files SET state = ?, moved_to = ?, settled_at = ? WHERE id = ?",
                    (state, moved_to, now, file_id),
                )

    def restore_file(self, file_id: int, path: str) -> bool:
        """Put a settled file record back in the inbox at `path` (operator retry)."""
        try:
            with self.engine.begin() as conn:
                return bool(conn.exec_driver_sql(
                    "UPDATE files SET state = 'pending', path = ?, moved_to = NULL, settled_at = NULL WHERE id = ?",
                    (path, file_id),
                ).rowcount)
        except exc.IntegrityError:
            return False  # the daemon saw the file come back first and recorded it itself

    def pending_fingerprints(self) -> dict[str, tuple]:
        """path -> (inode, size, mtime_ns, ctime_ns) of every file still waiting in the inbox."""
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            rows = conn.exec_driver_sql(
                "SELECT path, inode, size_bytes, mtime_ns, ctime_ns FROM files WHERE state = 'pending'"
            ).all()
        return {r.path: (r.inode, r.size_bytes, r.mtime_ns, r.ctime_ns) for r in rows}

    def job_status(self, job_id: int) -> Optional[tuple[str, Optional[str], int]]:
        """(status, error, attempts) of a job, or None."""
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            row = conn.exec_driver_sql("SELECT status, error, attempts FROM jobs WHERE id = ?", (job_id,)).first()
        return (row.status, row.error, row.attempts) if row else None

    def result_output(self, job_id: int) -> Optional[str]:
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            return conn.exec_driver_sql("SELECT output FROM results WHERE job_id = ?", (job_id,)).scalar()

    def queued_count(self) -> int:
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            return conn.exec_driver_sql("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").scalar_one()

    def next_ready_in(self) -> Optional[float]:
        """Seconds until the earliest queued job becomes ready (0 if one is ready), None if none."""
        with self.engine.connect().execution_options(readonly=True) as conn, conn.begin():
            nxt = conn.exec_driver_sql("SELECT MIN(next_run_at) FROM jobs WHERE status = 'queued'").scalar()
        if nxt is None:
            return None
        return max(0.0, (parse_iso(nxt) - utcnow()).total_seconds())
