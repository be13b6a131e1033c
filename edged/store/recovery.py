"""Jobs whose worker died: back to the queue, and who is to blame.

Crash attribution: a process that dies mid-batch is not the fault of every job in the batch.
A claim records how many jobs it took together (`lease_batch`); when a worker dies, the jobs
of a batch get their attempt back and run alone next (`solo`). A job that was running alone
is charged the attempt when the process is known to have died of itself (a native crash, an
OOM kill, a watchdog: see death.py), so one that really kills the process fails after
max_attempts and its batch-mates never do. A death nothing explains (a SIGKILL from outside
looks the same as any other) is counted apart (`crashes`) and fails the job only after
UNEXPLAINED_FACTOR times as many.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import Connection, Engine

from edged.store.attempts import end_attempts
from edged.store.backoff import backoff_delay
from edged.store.db import run, write
from edged.store.states import Recovered
from edged.timeutil import iso

UNEXPLAINED_FACTOR = 2

# An attempt given back (never below 0): SQLite's two-argument MAX is not PostgreSQL's GREATEST.
GIVE_BACK = "CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END"


class Recovery:
    """The crash-attribution half of the queue (mixed into Queue, which owns the settings and the clock)."""

    engine: Engine
    owner: str
    box_id: str
    backend: str
    max_attempts: int
    backoff_seconds: float
    backoff_max_seconds: float
    clock: Callable[[], datetime]

    def recover(self, everything: bool = False, cause: Optional[str] = None) -> Recovered:
        """Return jobs whose worker died to the queue; fail those that died alone too often.

        `everything=True` at daemon start-up, under the state lock: no other worker of this
        box can be alive, so every `running` job of the box is an orphan, expired or not. On
        SQLite that is every running job (the lock beside the database file guards the whole
        database); on PostgreSQL only those whose lease names this box (`<box id>:<pid>`):
        other boxes' jobs are theirs until their leases expire. `cause`: what is known to have
        killed that worker ("died of a crash (…)", from death.py), or None.
        """
        # Our own leases are never expired by us: they belong to the batch in flight, which
        # may simply be slow (a long translation on a small CPU).
        extra: dict[str, Any] = {}
        if not everything:
            cond = "status = 'running' AND lease_expires_at < :now AND lease_owner != :me"
        elif self.backend == "postgresql":
            # This pid too: in a container the daemon may have the same pid at every start.
            cond = "status = 'running' AND lease_owner LIKE :mine ESCAPE '!'"
            extra["mine"] = self.box_id.replace("!", "!!").replace("%", "!%").replace("_", "!_") + ":%"
        else:
            cond = "status = 'running'"
        with write(self.engine) as conn:
            return self._orphaned(conn, cond, extra, cause)

    def interrupted(self, job_ids: Sequence[int], error: str) -> Recovered:
        """A batch of ours broke off without finishing (an unexpected error): handled as a crash
        whose cause is known would be."""
        if not job_ids:
            return Recovered(0, 0)
        with write(self.engine) as conn:
            return self._orphaned(conn, "status = 'running' AND lease_owner = :me AND id IN :ids",
                                  {"ids": list(job_ids)}, error)

    def _orphaned(self, conn: Connection, cond: str, extra: dict[str, Any], cause: Optional[str]) -> Recovered:
        """(requeued, failed) for running jobs matching `cond` whose worker is gone."""
        now = self.clock()
        params = {"now": iso(now), "me": self.owner, "max": self.max_attempts, "cause": cause,
                  "unexplained": self.max_attempts * UNEXPLAINED_FACTOR, **extra}
        expanding = ("ids",) if "ids" in extra else ()

        def sql(statement: str) -> Any:
            return run(conn, statement, expanding, **params)

        alone = "COALESCE(lease_batch, 2) <= 1"
        orphans = {job_id: bool(solo) for job_id, solo in sql(f"SELECT id, {alone} FROM jobs WHERE {cond}").all()}
        # Batch-mates: the crash was not theirs, the attempt is given back.
        sql(f"UPDATE jobs SET attempts = {GIVE_BACK} WHERE {cond} AND NOT {alone}")
        if cause is None:
            # Alone, but nothing says it was this job: the attempt is given back, the death counted.
            sql(f"UPDATE jobs SET attempts = {GIVE_BACK}, crashes = crashes + 1 WHERE {cond} AND {alone}")
            verdict = (f"{alone} AND crashes >= :unexplained",
                       "'the worker process died ' || crashes || ' times while running this job alone, with no"
                       " cause recorded (a SIGKILL, an OOM kill outside systemd, a power cut); giving up'")
        else:
            verdict = (f"{alone} AND attempts >= :max",
                       "'the worker ' || :cause || ' while running this job alone, ' || attempts"
                       " || ' time(s); giving up'")
        failed = sql("UPDATE jobs SET status = 'failed', finished_at = :now, solo = 0, lease_owner = NULL,"
                     f" lease_pid = NULL, lease_expires_at = NULL, error = {verdict[1]} WHERE {cond} AND {verdict[0]}"
                     ).rowcount
        # A job that was running alone waits a back-off before it runs alone again, so that a job
        # that kills the process does not crash-loop the box, and a job that was merely unlucky
        # (killed from outside) is not first in line for the next kill.
        later = {job_id: iso(now + timedelta(seconds=backoff_delay(max(deaths, 1), self.backoff_seconds,
                                                                   self.backoff_max_seconds)))
                 for job_id, deaths in sql(f"SELECT id, attempts + crashes FROM jobs WHERE {cond} AND {alone}").all()}
        requeued = sql("UPDATE jobs SET status = 'queued', solo = 1, next_run_at = :now, lease_owner = NULL,"
                       f" lease_pid = NULL, lease_expires_at = NULL WHERE {cond}").rowcount
        for job_id, when in later.items():
            run(conn, "UPDATE jobs SET next_run_at = :when WHERE id = :id", when=when, id=job_id)
        self._record_orphans(conn, orphans, cause, iso(now))
        return Recovered(requeued, failed)

    @staticmethod
    def _record_orphans(conn: Connection, orphans: dict[int, bool], cause: Optional[str], now: str) -> None:
        """Close the attempts the dead worker left open: failed for good, or interrupted (and whether counted)."""
        if not orphans:
            return
        gone = run(conn, "SELECT id, error FROM jobs WHERE id IN :ids AND status = 'failed'", ("ids",),
                   ids=list(orphans)).all()
        for job_id, error in gone:
            end_attempts(conn, [job_id], "failed", now, error)
        what = f"the worker {cause}" if cause else "the worker process died, cause unknown"
        given_back = [j for j, alone in orphans.items() if not (alone and cause)]
        charged = [j for j, alone in orphans.items() if alone and cause]
        end_attempts(conn, given_back, "interrupted", now, f"{what}; the attempt was not counted")
        end_attempts(conn, charged, "interrupted", now, f"{what} while it ran alone; the attempt was counted")
