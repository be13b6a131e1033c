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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import Connection, Engine, exc

from edged.store.attempts import begin_attempts, end_attempts
from edged.store.backoff import backoff_delay
from edged.store.db import backend, read, run, write
from edged.store.enqueue import Enqueue, Enqueued, NewFile, canonical_params
from edged.store.errors import StoreUnavailable
from edged.store.files import FileRecords
from edged.store.postgres import server_clock
from edged.store.recovery import GIVE_BACK, Recovery
from edged.store.states import DONE, FAILED, QUEUED, RUNNING, JobState, JobStatus
from edged.timeutil import iso, parse_iso, utcnow

__all__ = ["DONE", "FAILED", "QUEUED", "RUNNING", "Enqueued", "Job", "NewFile", "Queue", "ResultData",
           "canonical_params"]


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


class Queue(Enqueue, FileRecords, Recovery):
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
        shared: bool = False,
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
        # Mode "shared": several boxes on this database. File rows are this box's (spool_box),
        # and the claim takes only what this box can run (serve()).
        self.shared = shared
        self.spool_box = self.box_id if shared else ""
        self.serves: Optional[tuple[str, tuple[str, ...]]] = None

    def serve(self, model: str, tasks: Sequence[str]) -> None:
        """Mode "shared": claim only jobs for this model and these tasks (a text-only box takes no
        captions), and only jobs whose input is in the database or in this box's own spool."""
        self.serves = (model, tuple(tasks))

    def _mine(self) -> tuple[str, dict[str, Any], tuple[str, ...]]:
        """(condition, binds, expanding) that a ready job must also meet to be claimed by this box."""
        if not self.shared:
            return "", {}, ()
        cond = " AND (input_in_db = 1 OR origin_box = :spool_box)"
        binds: dict[str, Any] = {"spool_box": self.spool_box}
        if self.serves is None:
            return cond, binds, ()
        model, tasks = self.serves
        return cond + " AND model = :serve_model AND task IN :serve_tasks", \
            {**binds, "serve_model": model, "serve_tasks": list(tasks)}, ("serve_tasks",)

    def now(self) -> str:
        return iso(self.clock())

    def apply(self, settings: Any) -> None:
        """The queue's share of a reloaded config (a Settings; the store does not import config)."""
        q = settings.queue
        self.max_attempts, self.backoff_seconds = q.max_attempts, q.backoff_seconds
        self.backoff_max_seconds, self.lease_seconds = q.backoff_max_seconds, q.lease_seconds

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
        mine, binds, expanding = self._mine()
        params.update(binds)
        ready = f"status = 'queued' AND next_run_at <= :now{mine}"
        # PostgreSQL: rows another box is claiming right now are skipped, not waited for; the
        # CTE is MATERIALIZED so that its LIMIT and its locks are taken once, before the update.
        lock = " FOR NO KEY UPDATE SKIP LOCKED" if self.backend == "postgresql" else ""
        with write(self.engine) as conn:
            solo = run(conn, f"SELECT id FROM jobs WHERE {ready} AND solo = 1 ORDER BY next_run_at, id LIMIT 1{lock}",
                       expanding, now=params["now"], **binds).scalar()
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
                                 f" AND status = 'queued' RETURNING {_JOB_COLUMNS}", expanding, **params).all()
            else:
                rows = run(conn, f"{take} WHERE id IN ({pick}) RETURNING {_JOB_COLUMNS}", expanding, **params).all()
            if rows:
                together = [r.id for r in rows] + list(mates)
                run(conn, "UPDATE jobs SET lease_batch = :n WHERE id IN :ids", expanding=("ids",), n=len(together),
                    ids=together)
                begin_attempts(conn, [r.id for r in rows], params["now"], self.box_id)
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
        mine, binds, expanding = self._mine()
        with read(self.engine) as conn:
            return run(conn, f"SELECT 1 FROM jobs WHERE status = 'queued' AND next_run_at <= :now AND solo = 1{mine}"
                             " LIMIT 1", expanding, now=iso(self.clock()), **binds).scalar() is not None

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
                            " WHERE id = :id AND status = 'running' AND lease_owner = :owner AND attempts = :attempt",
                      now=now, id=job.id, owner=self.owner, attempt=job.attempts).rowcount
        if updated:
            run(conn, "INSERT INTO results (job_id, task, output, model, prompt_tokens, output_tokens, duration_ms,"
                      " created_at, box_id) VALUES (:id, :task, :output, :model, :prompt, :out, :ms, :now, :box)"
                      " ON CONFLICT (job_id) DO NOTHING", box=self.box_id,
                id=job.id, task=job.task, output=result.output, model=job.model, prompt=result.prompt_tokens,
                out=result.output_tokens, ms=result.duration_ms, now=now)
            end_attempts(conn, [job.id], "done", now)
            if result.spawn:
                self._spawn(conn, job, result, now)
            if self.shared and job.sha256:
                # Its input is no longer needed by any box (a failed job's stays, for a retry).
                run(conn, "DELETE FROM blobs WHERE sha256 = :sha AND NOT EXISTS (SELECT 1 FROM jobs"
                          " WHERE sha256 = :sha AND status <> 'done')", sha=job.sha256)
        return bool(updated)

    @staticmethod
    def _spawn(conn: Connection, parent: Job, result: ResultData, now: str) -> None:
        assert result.spawn is not None
        task, params = result.spawn
        data = result.output.encode("utf-8")
        # Its input is the parent's result, in the database: any box may run it.
        run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status, attempts,"
                  " created_at, next_run_at, parent_id, origin_box, input_in_db) SELECT :task, :params, :model,"
                  " :source, :sha, :size, 'queued', 0, :now, :now, :parent, origin_box, 1 FROM jobs WHERE id = :parent"
                  " ON CONFLICT (parent_id, task) WHERE parent_id IS NOT NULL DO NOTHING",
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
                                " WHERE id = :id AND status = 'running' AND lease_owner = :owner"
                                " AND attempts = :attempt",
                          status=status, error=error, next=next_run, finished=iso(now) if final else None, id=job.id,
                          owner=self.owner, attempt=job.attempts).rowcount
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

    def blob(self, sha256: str) -> Optional[bytes]:
        """Mode "shared": an input's bytes as the box that took it in stored them (None: not stored)."""
        with read(self.engine) as conn:
            data = run(conn, "SELECT data FROM blobs WHERE sha256 = :sha", sha=sha256).scalar()
        return None if data is None else bytes(data)

    def result_output(self, job_id: int) -> Optional[str]:
        with read(self.engine) as conn:
            return run(conn, "SELECT output FROM results WHERE job_id = :id", id=job_id).scalar()

    def queued_count(self) -> int:
        with read(self.engine) as conn:
            return run(conn, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'").scalar_one()

    def next_ready_in(self) -> Optional[float]:
        """Seconds until the earliest queued job becomes ready (0 if one is ready), None if none."""
        mine, binds, expanding = self._mine()
        with read(self.engine) as conn:
            nxt = run(conn, f"SELECT MIN(next_run_at) FROM jobs WHERE status = 'queued'{mine}", expanding,
                      **binds).scalar()
        if nxt is None:
            return None
        return max(0.0, (parse_iso(nxt) - self.clock()).total_seconds())
