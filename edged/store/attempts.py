"""The attempt history of jobs (`job_attempts`), written in the transactions that change a job.

`jobs.attempts` and `jobs.error` say where the current round stands and are reset by an
operator's retry; these rows are never rewritten after they end, so the story of a job that
failed, was retried and then worked stays readable.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence

from sqlalchemy import Connection, Engine

from edged.store.db import read, run

AttemptOutcome = Literal["running", "done", "retry", "failed", "released", "interrupted"]


def begin_attempts(conn: Connection, job_ids: Sequence[int], now: str, box_id: str) -> None:
    """A claim: one open row per job, numbered as the job's attempts now count, naming the box."""
    if not job_ids:
        return
    run(conn, "INSERT INTO job_attempts (job_id, round, attempt, started_at, box_id)"
              " SELECT id, round, attempts, :now, :box FROM jobs WHERE id IN :ids",
        expanding=("ids",), now=now, ids=list(job_ids), box=box_id)


def end_attempts(conn: Connection, job_ids: Sequence[int], outcome: AttemptOutcome, now: str,
                 error: Optional[str] = None) -> None:
    """Close the open rows of these jobs (at most one each) with how the attempt ended."""
    if not job_ids:
        return
    run(conn, "UPDATE job_attempts SET finished_at = :now, outcome = :outcome, error = :error"
              " WHERE job_id IN :ids AND finished_at IS NULL",
        expanding=("ids",), now=now, outcome=outcome, error=error, ids=list(job_ids))


def attempts_of(engine: Engine, job_id: int) -> list[dict[str, Any]]:
    """Every attempt of a job, oldest first."""
    with read(engine) as conn:
        rows = run(conn, "SELECT round, attempt, started_at, finished_at, outcome, error FROM job_attempts"
                         " WHERE job_id = :id ORDER BY id", id=job_id).mappings().all()
    return [dict(r) for r in rows]
