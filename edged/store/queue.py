"""The durable job queue: enqueue, claim with a lease, renew it, finish, retry, recover.

Every state change is one transaction (on SQLite opened with BEGIN IMMEDIATE, see sqlite.py),
so a crash between any two statements leaves the database in a state the next start-up
repairs: a `running` job whose worker is gone goes back to `queued`, and a result is keyed by
job id, so running a job again never stores a second result. Every finishing statement is
fenced by the lease's owner: a worker whose lease has moved on stores nothing.

On PostgreSQL several boxes may claim from one queue at once: the claim locks the rows it
takes with FOR NO KEY UPDATE SKIP LOCKED (each box skips what another is taking), and every
queue time is the server's (postgres.server_clock), so boxes agree on when a lease expires.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import Connection, Engine, exc

from edged.pathnames import displayable, to_db
from edged.store.attempts import begin_attempts, end_attempts
from edged.store.backoff import backoff_delay
from edged.store.db import backend, read, run, write
from edged.store.errors import StoreUnavailable
from edged.store.files import FileRecords
from edged.store.postgres import server_clock
from edged.store.recovery import GIVE_BACK, Recovery
from edged.store.states import DONE, FAILED, QUEUED, RUNNING, JobState, JobStatus, Outcome
from edged.timeutil import iso, parse_iso, utcnow

__all__ = ["DONE", "FAILED", "QUEUED", "RUNNING", "Enqueued", "Job", "NewFile", "Queue", "ResultData",
           "canonical_params"]


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
    job_id: int
    file_id: int
    outcome: Outcome


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


def _job(row: Any) -> Job:
    return Job(row.id, row.task, json.loads(row.params), row.model, row.source_path, row.sha256,
               row.attempts, row.created_at, row.parent_id)


class Queue(FileRecords, Recovery):
    """One storage interface for jobs and their files; knows nothing of images, prompts or ONNX.

    `clock` tells the time of every state change and lease (a test's clock can run ahead); by
    default the box's on SQLite, the server's on PostgreSQL. `owner` names this worker's
    leases: `<box id>:<pid>`, so that two boxes cloned from one image (one host name) never
    take each other's leases for their own.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_attempts: int = 3,
        backoff_seconds: float = 30.0,
        backoff_max_seconds: float = 3600.0,
        lease_seconds: float = 300.0,
        owner: Optional[str] = None,
        box_id: Optional[str] = None,
        clock: Optional[Callable[[], datetime]] = None,
    ) -> None:
        self.engine = engine
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.lease_seconds = lease_seconds
        self.pid = os.getpid()
        self.backend = backend(engine)
        self.box_id = box_id or "local"
        self.owner = owner or f"{self.box_id}:{self.pid}"
        self.clock = clock or (server_clock(engine) if self.backend == "postgresql" else utcnow)
        self.blob_names = self.backend == "sqlite"  # pathnames.to_db: how a name that is not UTF-8 is kept

    def now(self) -> str:
        return iso(self.clock())

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
        now = self.now()
        with write(self.engine) as conn:
            return [self._enqueue_one(conn, item, model, now) for item in items]

    def _enqueue_one(self, conn: Connection, item: NewFile, model: str, now: str) -> Enqueued:
        path = to_db(item.path, self.blob_names)
        pending = run(conn, "SELECT f.id, f.job_id, f.inode, f.size_bytes, f.mtime_ns, f.ctime_ns, j.sha256"
                            " FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.path = :path AND f.state = 'pending'",
                      path=path).first()
        fingerprint: dict[str, Any] = {"inode": item.inode, "size": item.size_bytes, "mtime": item.mtime_ns,
                                       "ctime": item.ctime_ns}
        if pending is not None:
            same_file = (pending.inode, pending.size_bytes, pending.mtime_ns) == (item.inode, item.size_bytes,
                                                                                   item.mtime_ns)
            if item.refused is None and pending.sha256 == item.sha256:
                if not same_file or pending.ctime_ns != item.ctime_ns:
                    # The same bytes under a new inode (copied again): the record follows the file.
                    run(conn, "UPDATE files SET inode = :inode, size_bytes = :size, mtime_ns = :mtime,"
                              " ctime_ns = :ctime WHERE id = :id", id=pending.id, **fingerprint)
                return Enqueued(pending.job_id, pending.id, "known")
            if item.refused is not None and pending.sha256 is None and same_file:
                return Enqueued(pending.job_id, pending.id, "known")  # a refusal still waiting to be moved
            # The file was replaced in place before its job ran: the old record no longer
            # describes what is on disk.
            run(conn, "UPDATE files SET state = 'superseded', settled_at = :now WHERE id = :id", now=now, id=pending.id)
        job: dict[str, Any] = {"task": item.task, "params": canonical_params(item.params), "model": model, "now": now,
               "source": displayable(item.path), "sha": item.sha256, "size": item.size_bytes}  # source: for people
        outcome: Outcome
        if item.refused is not None:
            job_id = run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status,"
                               " attempts, error, created_at, finished_at, next_run_at) VALUES (:task, :params, :model,"
                               " :source, NULL, :size, 'failed', 0, :error, :now, :now, :now) RETURNING id",
                         error=item.refused, **job).scalar_one()
            outcome = "refused"
        else:
            job_id = run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status,"
                               " attempts, created_at, next_run_at) VALUES (:task, :params, :model, :source, :sha,"
                               " :size, 'queued', 0, :now, :now) ON CONFLICT (task, sha256, params, model)"
                               " WHERE parent_id IS NULL DO NOTHING RETURNING id", **job).scalar()
            outcome = "new"
            if job_id is None:
                job_id, outcome = self._join_existing(conn, job)
        file_id = run(conn, "INSERT INTO files (job_id, path, size_bytes, mtime_ns, ctime_ns, inode, state, duplicate,"
                            " received_at) VALUES (:job, :path, :size, :mtime, :ctime, :inode, 'pending', :dup, :now)"
                            " RETURNING id", job=job_id, path=path, dup=int(outcome == "duplicate"), now=now,
                      **fingerprint).scalar_one()
        return Enqueued(job_id, file_id, outcome)

    def _join_existing(self, conn: Connection, job: dict[str, Any]) -> tuple[int, Outcome]:
        row = run(conn, "SELECT id, status FROM jobs WHERE task = :task AND sha256 = :sha AND params = :params"
                        " AND model = :model AND parent_id IS NULL", **job).one()
        if row.status == DONE:
            return row.id, "duplicate"
        if row.status == FAILED:
            # Dropping a file again is how operators say "try this once more".
            run(conn, "UPDATE jobs SET status = 'queued', attempts = 0, solo = 0, crashes = 0, next_run_at = :now,"
                      " finished_at = NULL, round = round + 1 WHERE id = :id", now=job["now"], id=row.id)
            return row.id, "requeued"
        return row.id, "attached"

    # -- the worker's side -------------------------------------------------------------

    def claim(self, limit: int, mates: Sequence[int] = ()) -> list[Job]:
        """Lease up to `limit` ready jobs of one task (the task of the oldest ready job).

        A job that was running when a worker died is claimed alone, before anything else.
        `mates`: jobs this worker is running already (continuous batching); the new jobs join
        them, and all of them count as one batch should the process die (recovery.py).
        """
        now = self.clock()
        params: dict[str, Any] = {"now": iso(now), "limit": limit, "owner": self.owner, "pid": self.pid,
                                  "exp": iso(now + timedelta(seconds=self.lease_seconds))}
        ready = "status = 'queued' AND next_run_at <= :now"
        # PostgreSQL: rows another box is claiming right now are skipped, not waited for; the
        # CTE is MATERIALIZED so that its LIMIT and its locks are taken once, before the update.
        lock = " FOR NO KEY UPDATE SKIP LOCKED" if self.backend == "postgresql" else ""
        with write(self.engine) as conn:
            solo = run(conn, f"SELECT id FROM jobs WHERE {ready} AND solo = 1 ORDER BY next_run_at, id LIMIT 1{lock}",
                       now=params["now"]).scalar()
            if solo is not None:
                pick = "SELECT :solo AS id"
                params["solo"] = solo
            else:
                pick = (f"SELECT id FROM jobs WHERE {ready} AND task = (SELECT task FROM jobs WHERE {ready}"
                        f" ORDER BY next_run_at, id LIMIT 1) ORDER BY next_run_at, id LIMIT :limit{lock}")
            take = ("UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = :now,"
                    " lease_owner = :owner, lease_pid = :pid, lease_expires_at = :exp")
            if lock:
                rows = run(conn, f"WITH picked AS MATERIALIZED ({pick}) {take} WHERE id IN (SELECT id FROM picked)"
                                 f" AND status = 'queued' RETURNING {_JOB_COLUMNS}", **params).all()
            else:
                rows = run(conn, f"{take} WHERE id IN ({pick}) RETURNING {_JOB_COLUMNS}", **params).all()
            if rows:
                together = [r.id for r in rows] + list(mates)
                run(conn, "UPDATE jobs SET lease_batch = :n WHERE id IN :ids", expanding=("ids",), n=len(together),
                    ids=together)
                begin_attempts(conn, [r.id for r in rows], params["now"])
        return sorted((_job(r) for r in rows), key=lambda j: j.id)

    def renew(self, job_ids: Sequence[int]) -> list[int]:
        """Extend this worker's leases on jobs it is still running; return the ids it still holds.

        Called from the worker's tick, so that a lease only has to outlast a stall of the worker,
        not the longest batch: a job that is not among those returned has been handed on (its
        lease expired and another worker recovered it) and must not be finished here.
        """
        if not job_ids:
            return []
        now = self.clock()
        with write(self.engine) as conn:
            return sorted(run(conn, "UPDATE jobs SET lease_expires_at = :exp WHERE id IN :ids AND status = 'running'"
                                    " AND lease_owner = :owner RETURNING id", expanding=("ids",),
                              exp=iso(now + timedelta(seconds=self.lease_seconds)), ids=list(job_ids),
                              owner=self.owner).scalars().all())

    def solo_waiting(self) -> bool:
        """A job that must run alone is ready (claim() will hand it out before anything else)."""
        with read(self.engine) as conn:
            return run(conn, "SELECT 1 FROM jobs WHERE status = 'queued' AND next_run_at <= :now AND solo = 1 LIMIT 1",
                       now=iso(self.clock())).scalar() is not None

    def complete(self, done: Sequence[tuple[Job, ResultData]]) -> list[bool]:
        """Store results and mark their jobs done, all in one transaction.

        For each job: False when this worker no longer holds its lease (it expired and the
        job was handed on): then nothing is written for it and the caller must not touch its
        files. Raises StoreUnavailable (nothing written) when the database cannot take it.
        """
        now = self.now()
        with write(self.engine) as conn:
            return [self._complete_one(conn, job, result, now) for job, result in done]

    def complete_each(self, done: Sequence[tuple[Job, ResultData]]) -> list[bool | Exception]:
        """`complete` one job per transaction, so that a row the database refuses is that job's alone.

        Returns, per job, whether it was stored (False: the lease was lost), or the error that refused it.
        """
        out: list[bool | Exception] = []
        for job, result in done:
            try:
                with write(self.engine) as conn:
                    out.append(self._complete_one(conn, job, result, self.now()))
            except StoreUnavailable:
                raise
            except exc.SQLAlchemyError as error:
                out.append(error)
        return out

    def _complete_one(self, conn: Connection, job: Job, result: ResultData, now: str) -> bool:
        updated = run(conn, "UPDATE jobs SET status = 'done', finished_at = :now, error = NULL, solo = 0, crashes = 0,"
                            " lease_owner = NULL, lease_pid = NULL, lease_expires_at = NULL"
                            " WHERE id = :id AND status = 'running' AND lease_owner = :owner",
                      now=now, id=job.id, owner=self.owner).rowcount
        if updated:
            run(conn, "INSERT INTO results (job_id, task, output, model, prompt_tokens, output_tokens, duration_ms,"
                      " created_at) VALUES (:id, :task, :output, :model, :prompt, :out, :ms, :now)"
                      " ON CONFLICT (job_id) DO NOTHING",
                id=job.id, task=job.task, output=result.output, model=job.model, prompt=result.prompt_tokens,
                out=result.output_tokens, ms=result.duration_ms, now=now)
            end_attempts(conn, [job.id], "done", now)
            if result.spawn:
                self._spawn(conn, job, result, now)
        return bool(updated)

    @staticmethod
    def _spawn(conn: Connection, parent: Job, result: ResultData, now: str) -> None:
        assert result.spawn is not None
        task, params = result.spawn
        data = result.output.encode("utf-8")
        run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                  " created_at, next_run_at, parent_id) VALUES (:task, :params, :model, :source, :sha, :size,"
                  " 'queued', 0, :now, :now, :parent) ON CONFLICT (parent_id, task) WHERE parent_id IS NOT NULL"
                  " DO NOTHING",
            task=task, params=canonical_params(params), model=parent.model, source=parent.source_path,
            sha=hashlib.sha256(data).hexdigest(), size=len(data), now=now, parent=parent.id)

    def fail(self, job: Job, error: str, permanent: bool = False) -> Optional[JobStatus]:
        """Record a failed attempt: back to the queue with backoff, or `failed` for good.

        Returns the new status, or None if this worker no longer holds the lease.
        """
        now = self.clock()
        final = permanent or job.attempts >= self.max_attempts
        status: JobStatus
        if final:
            status, next_run = FAILED, iso(now)
        else:
            delay = backoff_delay(job.attempts, self.backoff_seconds, self.backoff_max_seconds)
            status, next_run = QUEUED, iso(now + timedelta(seconds=delay))
        with write(self.engine) as conn:
            updated = run(conn, "UPDATE jobs SET status = :status, error = :error, next_run_at = :next,"
                                " finished_at = :finished, solo = 0, crashes = 0, lease_owner = NULL,"
                                " lease_pid = NULL, lease_expires_at = NULL"
                                " WHERE id = :id AND status = 'running' AND lease_owner = :owner",
                          status=status, error=error, next=next_run, finished=iso(now) if final else None, id=job.id,
                          owner=self.owner).rowcount
            if updated:
                end_attempts(conn, [job.id], "failed" if final else "retry", iso(now), error)
        return status if updated else None

    def release(self, job_ids: Optional[Sequence[int]] = None) -> int:
        """Give leased jobs back untouched (a drain at shutdown, a full disk): the attempt does not count.

        None: every job this worker holds, which is what a stop wants (a signal can land
        between the claim's commit and the caller learning the ids).
        """
        sql = (f"UPDATE jobs SET status = 'queued', attempts = {GIVE_BACK}, started_at = NULL,"
               " lease_owner = NULL, lease_pid = NULL, lease_expires_at = NULL"
               " WHERE status = 'running' AND lease_owner = :owner")
        with write(self.engine) as conn:
            if job_ids is None:
                back = run(conn, sql + " RETURNING id", owner=self.owner).scalars().all()
            else:
                back = run(conn, sql + " AND id IN :ids RETURNING id", expanding=("ids",), owner=self.owner,
                           ids=list(job_ids)).scalars().all()
            end_attempts(conn, list(back), "released", self.now(), "handed back untouched (not counted)")
            return len(back)

    def requeue(self, job_ids: Sequence[int]) -> list[int]:
        """Operator retry of failed jobs: a fresh set of attempts. Returns the ids requeued."""
        done: list[int] = []
        with write(self.engine) as conn:
            for jid in job_ids:
                # A new round: the attempts start again, earlier rounds stay in job_attempts.
                if run(conn, "UPDATE jobs SET status = 'queued', attempts = 0, solo = 0, crashes = 0, error = NULL,"
                             " next_run_at = :now, finished_at = NULL, started_at = NULL, round = round + 1"
                             " WHERE id = :id AND status = 'failed'", now=self.now(), id=jid).rowcount:
                    done.append(jid)
        return done

    def job_status(self, job_id: int) -> Optional[JobState]:
        with read(self.engine) as conn:
            row = run(conn, "SELECT status, error, attempts FROM jobs WHERE id = :id", id=job_id).first()
        return JobState(row.status, row.error, row.attempts) if row else None

    def result_output(self, job_id: int) -> Optional[str]:
        with read(self.engine) as conn:
            return run(conn, "SELECT output FROM results WHERE job_id = :id", id=job_id).scalar()

    def queued_count(self) -> int:
        with read(self.engine) as conn:
            return run(conn, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'").scalar_one()

    def next_ready_in(self) -> Optional[float]:
        """Seconds until the earliest queued job becomes ready (0 if one is ready), None if none."""
        with read(self.engine) as conn:
            nxt = run(conn, "SELECT MIN(next_run_at) FROM jobs WHERE status = 'queued'").scalar()
        if nxt is None:
            return None
        return max(0.0, (parse_iso(nxt) - self.clock()).total_seconds())
