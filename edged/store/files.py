"""File records: every file dropped into the inbox is a row, from intake until it is settled.

A record keeps what identified the file at intake (inode, size, mtime), so that the worker
reads and the settler moves that file and never "whatever is at the path now". A name that
is not UTF-8 is kept as its exact bytes (pathnames.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

from sqlalchemy import Engine, exc

from edged.pathnames import displayable, from_db, to_db
from edged.store.db import read, run, write
from edged.store.states import FileState, JobStatus


@dataclass(frozen=True)
class FileRecord:
    id: int
    job_id: int
    path: str  # relative to the inbox, as the file system knows it (may hold surrogate escapes)
    state: FileState
    duplicate: bool
    moved_to: Optional[str] = None
    inode: Optional[int] = None
    size_bytes: Optional[int] = None
    mtime_ns: Optional[int] = None
    moved_inode: Optional[int] = None
    left_in_inbox: bool = False  # settled by a copy: the original is still in the inbox

    @property
    def display(self) -> str:
        return displayable(self.path)


@dataclass(frozen=True)
class Settled:
    """How one file record ended: moved (or copied) to done/ or failed/, or gone."""

    file_id: int
    state: FileState  # done | failed | missing | superseded
    moved_to: Optional[str] = None
    moved_inode: Optional[int] = None
    result_file: Optional[str] = None
    left_in_inbox: bool = False  # copied, because the daemon may not remove the original


_COLUMNS = ("f.id, f.job_id, f.path, f.state, f.duplicate, f.moved_to, f.inode, f.size_bytes, f.mtime_ns,"
            " f.moved_inode, f.left_in_inbox")


def _record(r: Any) -> FileRecord:
    return FileRecord(r.id, r.job_id, from_db(r.path), r.state, bool(r.duplicate), r.moved_to, r.inode,
                      r.size_bytes, r.mtime_ns, r.moved_inode, bool(r.left_in_inbox))


class LeftFile(NamedTuple):
    """An original left in the inbox after it was copied out."""

    file_id: int
    path: str
    inode: Optional[int]


class FileRecords:
    """The file half of the store (mixed into Queue, which owns the engine and the clock)."""

    engine: Engine
    now: Callable[[], str]
    blob_names: bool
    spool_box: str  # whose spool: a box sees and moves only its own files (mode "shared")

    def files_of(self, job_ids: Sequence[int], state: FileState = "pending") -> dict[int, list[FileRecord]]:
        """The file records of some jobs, by job id (every id present, perhaps with no files)."""
        out: dict[int, list[FileRecord]] = {jid: [] for jid in job_ids}
        if not job_ids:
            return out
        with read(self.engine) as conn:
            rows = run(conn, f"SELECT {_COLUMNS} FROM files f WHERE f.job_id IN :ids AND f.state = :state"
                             " AND f.box_id = :box ORDER BY f.id", expanding=("ids",), ids=list(job_ids), state=state,
                       box=self.spool_box).all()
        for r in rows:
            out[r.job_id].append(_record(r))
        return out

    def unsettled(self) -> list[tuple[FileRecord, JobStatus]]:
        """Files still in the inbox although their job has finished (a crash or a failed move)."""
        with read(self.engine) as conn:
            rows = run(conn, f"SELECT {_COLUMNS}, j.status FROM files f JOIN jobs j ON j.id = f.job_id"
                             " WHERE f.state = 'pending' AND j.status IN ('done', 'failed') AND f.box_id = :box"
                             " ORDER BY f.id", box=self.spool_box).all()
        return [(_record(r), r.status) for r in rows]

    def settle_files(self, settled: Sequence[Settled]) -> None:
        """Record how files left the inbox; a record that is no longer pending is left as it is."""
        if not settled:
            return
        now = self.now()
        with write(self.engine) as conn:
            for s in settled:
                run(conn, "UPDATE files SET state = :state, moved_to = :to, moved_inode = :inode,"
                          " result_file = :result, left_in_inbox = :left, settle_error = NULL, settled_at = :now"
                          " WHERE id = :id AND state = 'pending'",
                    state=s.state, to=to_db(s.moved_to, self.blob_names), inode=s.moved_inode,
                    result=to_db(s.result_file, self.blob_names),
                    left=int(s.left_in_inbox), now=now, id=s.file_id)

    def settle_trouble(self, file_id: int, error: str) -> None:
        """Why a finished job's file could not leave the inbox yet (shown by status; retried by upkeep)."""
        with write(self.engine) as conn:
            run(conn, "UPDATE files SET settle_error = :error WHERE id = :id AND state = 'pending'",
                error=error, id=file_id)

    def supersede(self, file_id: int, state: FileState = "superseded") -> bool:
        """The file at a record's path is no longer the one recorded: replaced or rewritten
        ('superseded'), or gone ('missing')."""
        with write(self.engine) as conn:
            return bool(run(conn, "UPDATE files SET state = :state, settled_at = :now WHERE id = :id"
                                  " AND state = 'pending'", state=state, now=self.now(), id=file_id).rowcount)

    def refresh_file(self, file_id: int, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> None:
        """The recorded bytes, found under another inode at the same path: the record follows the file."""
        with write(self.engine) as conn:
            run(conn, "UPDATE files SET inode = :inode, size_bytes = :size, mtime_ns = :mtime, ctime_ns = :ctime"
                      " WHERE id = :id AND state = 'pending'",
                inode=inode, size=size, mtime=mtime_ns, ctime=ctime_ns, id=file_id)

    def restore_file(self, file_id: int, path: str) -> bool:
        """Put a settled file record back in the inbox at `path` (operator retry)."""
        try:
            with write(self.engine) as conn:
                return bool(run(conn, "UPDATE files SET state = 'pending', path = :path, moved_to = NULL,"
                                      " moved_inode = NULL, result_file = NULL, left_in_inbox = 0, settle_error = NULL,"
                                      " settled_at = NULL WHERE id = :id", path=to_db(path, self.blob_names),
                                id=file_id).rowcount)
        except exc.IntegrityError:
            return False  # the daemon saw the file come back first and recorded it itself

    def pending_fingerprints(self) -> dict[str, tuple[Optional[int], ...]]:
        """path -> (inode, size, mtime_ns, ctime_ns) of every file intake need not look at again.

        That is every file still waiting in the inbox, and every file settled by a copy whose
        original the daemon was not allowed to remove.
        """
        with read(self.engine) as conn:
            rows = run(conn, "SELECT path, inode, size_bytes, mtime_ns, ctime_ns FROM files"
                             " WHERE (state = 'pending' OR left_in_inbox = 1) AND box_id = :box ORDER BY id",
                       box=self.spool_box).all()
        return {from_db(r.path): (r.inode, r.size_bytes, r.mtime_ns, r.ctime_ns) for r in rows}

    def left_in_inbox(self) -> list[LeftFile]:
        with read(self.engine) as conn:
            rows = run(conn, "SELECT id, path, inode FROM files WHERE left_in_inbox = 1 AND box_id = :box ORDER BY id",
                       box=self.spool_box).all()
        return [LeftFile(r.id, from_db(r.path), r.inode) for r in rows]

    def forget_left(self, file_ids: Sequence[int]) -> None:
        """Originals the producer has since removed: nothing of them is left in the inbox."""
        with write(self.engine) as conn:
            run(conn, "UPDATE files SET left_in_inbox = 0 WHERE id IN :ids", expanding=("ids",), ids=list(file_ids))
