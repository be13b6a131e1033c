"""Intake's half of the queue: files become jobs, or join the job their content already has.

One job per content, task, parameters and model; every file is a row of its own. In mode
"shared" a file's bytes are stored once as a blob keyed by their sha256, in the same
transaction as the job, so that any box of the site can run the job; the file itself stays in
the spool of the box that took it in, and only that box moves it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from sqlalchemy import Connection, Engine

from edged.pathnames import displayable, to_db
from edged.store.db import run, write
from edged.store.states import DONE, FAILED, Outcome

__all__ = ["Enqueue", "Enqueued", "NewFile", "canonical_params"]


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
    data: Optional[bytes] = None  # mode "shared": the bytes, stored as a blob so that any box can run the job


@dataclass(frozen=True)
class Enqueued:
    job_id: int
    file_id: int
    outcome: Outcome


class Enqueue:
    """Mixed into Queue, which owns the engine, the clock and the box's names."""

    engine: Engine
    now: Callable[[], str]
    blob_names: bool
    spool_box: str

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
                            " FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.box_id = :box AND f.path = :path"
                            " AND f.state = 'pending'", box=self.spool_box, path=path).first()
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
               "source": displayable(item.path), "sha": item.sha256, "size": item.size_bytes,  # source: for people
               "origin": self.spool_box}
        outcome: Outcome
        if item.refused is not None:
            job_id = run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status,"
                               " attempts, error, created_at, finished_at, next_run_at, origin_box) VALUES (:task,"
                               " :params, :model, :source, NULL, :size, 'failed', 0, :error, :now, :now, :now, :origin)"
                               " RETURNING id",
                         error=item.refused, **job).scalar_one()
            outcome = "refused"
        else:
            in_db = item.data is not None and item.sha256 is not None
            job_id = run(conn, "INSERT INTO jobs (task, params, model, source_path, sha256, size_bytes, status,"
                               " attempts, created_at, next_run_at, origin_box, input_in_db) VALUES (:task, :params,"
                               " :model, :source, :sha, :size, 'queued', 0, :now, :now, :origin, :in_db)"
                               " ON CONFLICT (task, sha256, params, model) WHERE parent_id IS NULL DO NOTHING"
                               " RETURNING id", in_db=int(in_db), **job).scalar()
            outcome = "new"
            if job_id is None:
                job_id, outcome = self._join_existing(conn, job)
                if in_db and outcome != "duplicate":
                    # Another box may have queued it without its bytes (over the input limit there).
                    run(conn, "UPDATE jobs SET input_in_db = 1 WHERE id = :id", id=job_id)
            if in_db and outcome != "duplicate":  # a done job's input is needed by no box
                self._keep_blob(conn, item.sha256, item.data, now)
        file_id = run(conn, "INSERT INTO files (job_id, path, size_bytes, mtime_ns, ctime_ns, inode, state, duplicate,"
                            " received_at, box_id) VALUES (:job, :path, :size, :mtime, :ctime, :inode, 'pending', :dup,"
                            " :now, :box) RETURNING id", box=self.spool_box, job=job_id, path=path,
                      dup=int(outcome == "duplicate"), now=now, **fingerprint).scalar_one()
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

    @staticmethod
    def _keep_blob(conn: Connection, sha256: Optional[str], data: Optional[bytes], now: str) -> None:
        """Store an input's bytes by their sha256 (once: the same content from two boxes is one blob)."""
        assert sha256 is not None and data is not None
        run(conn, "INSERT INTO blobs (sha256, data, size_bytes, created_at) VALUES (:sha, :data, :size, :now)"
                  " ON CONFLICT (sha256) DO NOTHING", sha=sha256, data=data, size=len(data), now=now)
