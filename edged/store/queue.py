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
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Optional, Sequence

from sqlalchemy import Connection, Engine, exc

from edged.store.db import read, write
from edged.store.errors import StoreUnavailable
from edged.pathnames import displayable, to_db
from edged.store.backoff import backoff_delay
from edged.store.files import FileRecords
from edged.store.recovery import Recovery
from edged.timeutil import iso, now_iso, parse_iso, utcnow

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


def canonical_params(params: dict) -> str:
    """Parameters as canonical JSON: equal dicts give equal text, so they key jobs reliably."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


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


_JOB_COLUMNS = "id, task, params, model, source_path, sha256, attempts, created_at, parent_id"


def _job(row) -> Job:  # noqa: ANN001 - a SQLAlchemy Row
    return Job(row.id, row.task, json.loads(row.params), row.model, row.source_path, row.sha256,
               row.attempts, row.created_at, row.parent_id)


class Queue(FileRecords, Recovery):
    """One storage interface for jobs and their files; knows nothing of images, prompts or ONNX."""

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

    def apply(self, settings: Any) -> None:
        """The queue's share of a reloaded config (a Settings; the store does not import config)."""
        q = settings.queue
        self.max_attempts, self.backoff_seconds = q.max_attempts, q.backoff_seconds
        self.backoff_max_seconds, self.lease_seconds = q.backoff_max_seconds, q.lease_seconds

    # -- intake -------------------------------------------------------------------------

    def enqueue(self, items: Sequence[NewFile], model: str) -> list[Enqueued]:
        """Record files and create or join their jobs, all in one transaction.

        Raises StoreUnavailable (nothing recorded) when the database cannot take the write.
        """
        now = now_iso()
        out: list[Enqueued] = []
        with write(self.engine) as conn:
            for item in items:
                out.append(self._enqueue_one(conn, item, model, now))
        return out

    def _enqueue_one(self, conn: Connection, item: NewFile, model: str, now: str) -> Enqueued:
        path = to_db(item.path)
        pending = conn.exec_driver_sql(
            "SELECT f.id, f.job_id, f.inode, f.size_bytes, f.mtime_ns, f.ctime_ns, j.sha256 FROM files f"
            " JOIN jobs j ON j.id = f.job_id WHERE f.path = ? AND f.state = 'pending'", (path,)
        ).first()
        if pending is not None:
            same_file = (pending.inode, pending.size_bytes, pending.mtime_ns) == (item.inode, item.size_bytes,
                                                                                   item.mtime_ns)
            if item.refused is None and pending.sha256 == item.sha256:
                if not same_file or pending.ctime_ns != item.ctime_ns:
                    # The same bytes under a new inode (copied again): the record follows the file.
                    conn.exec_driver_sql(
                        "UPDATE files SET inode = ?, size_bytes = ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
                        (item.inode, item.size_bytes, item.mtime_ns, item.ctime_ns, pending.id))
                return Enqueued(pending.job_id, pending.id, "known")
            if item.refused is not None and pending.sha256 is None and same_file:
                return Enqueued(pending.job_id, pending.id, "known")  # a refusal still waiting to be moved
            # The file was replaced in place before its job ran: the old record no longer
            # describes what is on disk.
            conn.exec_driver_sql(
                "UPDATE files SET state = 'superseded', settled_at = ? WHERE id = ?", (now, pending.id)
            )
        params = canonical_params(item.params)
        source = displayable(item.path)  # jobs.source_path is for people: always text
        if item.refused is not None:
            job_id = conn.exec_driver_sql(
                "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                " error, created_at, finished_at, next_run_at) VALUES (?, ?, ?, ?, NULL, ?, 'failed', 0, ?, ?, ?, ?)"
                " RETURNING id",
                (item.task, params, model, source, item.size_bytes, item.refused, now, now, now),
            ).scalar_one()
            outcome = "refused"
        else:
            job_id = conn.exec_driver_sql(
                "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                " created_at, next_run_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)"
                " ON CONFLICT (task, sha256, params, model) WHERE parent_id IS NULL DO NOTHING RETURNING id",
                (item.task, params, model, source, item.sha256, item.size_bytes, now, now),
            ).scalar()
            outcome = "new"
            if job_id is None:
                job_id, outcome = self._join_existing(conn, item, params, model, now)
        file_id = conn.exec_driver_sql(
            "INSERT INTO files (job_id, path, size_bytes, mtime_ns, ctime_ns, inode, state, duplicate,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) RETURNING id",
            (job_id, path, item.size_bytes, item.mtime_ns, item.ctime_ns, item.inode,
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
                "UPDATE jobs SET status = 'queued', attempts = 0, solo = 0, crashes = 0, next_run_at = ?, finished_at = NULL"
                " WHERE id = ?", (now, row.id)
            )
            return row.id, "requeued"
        return row.id, "attached"

    # -- the worker's side -------------------------------------------------------------

    def claim(self, limit: int) -> list[Job]:
        """Lease up to `limit` ready jobs of one task (the task of the oldest ready job).

        A job that was running when a worker died is claimed alone, before anything else.
        """
        now = utcnow()
        params = {"now": iso(now), "limit": limit, "owner": self.owner, "pid": self.pid,
                  "exp": iso(now + timedelta(seconds=self.lease_seconds))}
        ready = "status = 'queued' AND next_run_at <= :now"
        with write(self.engine) as conn:
            solo = conn.exec_driver_sql(
                f"SELECT id FROM jobs WHERE {ready} AND solo = 1 ORDER BY next_run_at, id LIMIT 1", params).scalar()
            if solo is not None:
                pick = "SELECT :solo"
                params["solo"] = solo
            else:
                pick = (f"SELECT id FROM jobs WHERE {ready} AND task = (SELECT task FROM jobs WHERE {ready}"
                        " ORDER BY next_run_at, id LIMIT 1) ORDER BY next_run_at, id LIMIT :limit")
            rows = conn.exec_driver_sql(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
                " lease_owner = :owner, lease_pid = :pid, lease_expires_at = :exp"
                f" WHERE id IN ({pick}) RETURNING {_JOB_COLUMNS}",
                params,
            ).all()
            if rows:
                marks = ",".join("?" * len(rows))
                conn.exec_driver_sql(f"UPDATE jobs SET lease_batch = ? WHERE id IN ({marks})",
                                     (len(rows), *(r.id for r in rows)))
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    def complete(self, done: Sequence[tuple[Job, ResultData]]) -> list[bool]:
        """Store results and mark their jobs done, all in one transaction.

        For each job: False when this worker no longer holds its lease (it expired and the
        job was handed on): then nothing is written for it and the caller must not touch its
        files. Raises StoreUnavailable (nothing written) when the database cannot take it.
        """
        now = now_iso()
        with write(self.engine) as conn:
            return [self._complete_one(conn, job, result, now) for job, result in done]

    def complete_each(self, done: Sequence[tuple[Job, ResultData]]) -> list[Optional[Exception]]:
        """`complete` one job per transaction, so that a row the database refuses is that job's alone.

        Returns, per job, None (stored or lease lost) or the error that refused it.
        """
        out: list[Optional[Exception]] = []
        for job, result in done:
            try:
                with write(self.engine) as conn:
                    self._complete_one(conn, job, result, now_iso())
                out.append(None)
            except StoreUnavailable:
                raise
            except exc.SQLAlchemyError as error:
                out.append(error)
        return out

    def _complete_one(self, conn: Connection, job: Job, result: ResultData, now: str) -> bool:
        updated = conn.exec_driver_sql(
            "UPDATE jobs SET status = 'done', finished_at = ?, error = NULL, solo = 0, crashes = 0, lease_owner = NULL,"
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
        return bool(updated)

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
        with write(self.engine) as conn:
            updated = conn.exec_driver_sql(
                "UPDATE jobs SET status = ?, error = ?, next_run_at = ?, finished_at = ?, solo = 0, crashes = 0,"
                " lease_owner = NULL, lease_pid = NULL, lease_expires_at = NULL"
                " WHERE id = ? AND status = 'running' AND lease_owner = ?",
                (status, error, next_run, iso(now) if final else None, job.id, self.owner),
            ).rowcount
        return status if updated else None

    def release(self, job_ids: Optional[Sequence[int]] = None) -> int:
        """Give leased jobs back untouched (a drain at shutdown, a full disk): the attempt does not count.

        None: every job this worker holds, which is what a stop wants (a signal can land
        between the claim's commit and the caller learning the ids).
        """
        sql = ("UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0), started_at = NULL,"
               " lease_owner = NULL, lease_pid = NULL, lease_expires_at = NULL"
               " WHERE status = 'running' AND lease_owner = ?")
        with write(self.engine) as conn:
            if job_ids is None:
                return conn.exec_driver_sql(sql, (self.owner,)).rowcount
            return sum(conn.exec_driver_sql(sql + " AND id = ?", (self.owner, jid)).rowcount for jid in job_ids)

    def requeue(self, job_ids: Sequence[int]) -> list[int]:
        """Operator retry of failed jobs: a fresh set of attempts. Returns the ids requeued."""
        now = now_iso()
        done: list[int] = []
        with write(self.engine) as conn:
            for jid in job_ids:
                if conn.exec_driver_sql(
                    "UPDATE jobs SET status = 'queued', attempts = 0, solo = 0, crashes = 0, error = NULL, next_run_at = ?,"
                    " finished_at = NULL, started_at = NULL WHERE id = ? AND status = 'failed'",
                    (now, jid),
                ).rowcount:
                    done.append(jid)
        return done

    def job_status(self, job_id: int) -> Optional[tuple[str, Optional[str], int]]:
        """(status, error, attempts) of a job, or None."""
        with read(self.engine) as conn:
            row = conn.exec_driver_sql("SELECT status, error, attempts FROM jobs WHERE id = ?", (job_id,)).first()
        return (row.status, row.error, row.attempts) if row else None

    def result_output(self, job_id: int) -> Optional[str]:
        with read(self.engine) as conn:
            return conn.exec_driver_sql("SELECT output FROM results WHERE job_id = ?", (job_id,)).scalar()

    def queued_count(self) -> int:
        with read(self.engine) as conn:
            return conn.exec_driver_sql("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").scalar_one()

    def next_ready_in(self) -> Optional[float]:
        """Seconds until the earliest queued job becomes ready (0 if one is ready), None if none."""
        with read(self.engine) as conn:
            nxt = conn.exec_driver_sql("SELECT MIN(next_run_at) FROM jobs WHERE status = 'queued'").scalar()
        if nxt is None:
            return None
        return max(0.0, (parse_iso(nxt) - utcnow()).total_seconds())
