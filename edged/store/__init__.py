"""The store: its database (SQLite or PostgreSQL), schema migrations and the job queue. Knows
nothing of prompts or ONNX."""

from __future__ import annotations

from typing import Any, Optional

from edged.store.backoff import backoff_delay
from edged.store.db import DatabaseMissing, PgOptions, open_engine, read, write
from edged.store.errors import StoreUnavailable
from edged.store.files import FileRecord, Settled
from edged.store.queue import Enqueued, Job, NewFile, Queue, ResultData, canonical_params
from edged.store.schema import SchemaMismatch, migrate, require_current
from edged.store.states import DONE, FAILED, QUEUED, RUNNING, FileState, JobState, JobStatus, Outcome, Recovered

__all__ = [
    "DONE", "FAILED", "QUEUED", "RUNNING", "DatabaseMissing", "Enqueued", "FileRecord", "FileState", "Job", "JobState",
    "JobStatus", "NewFile", "Outcome", "PgOptions", "Queue", "Recovered", "ResultData", "SchemaMismatch", "Settled",
    "StoreUnavailable", "backoff_delay", "canonical_params",
    "migrate", "open_engine", "open_queue", "read", "require_current", "write",
]


def open_queue(url: str, *, owner: Optional[str] = None, box_id: Optional[str] = None, shared: bool = False,
               readonly: bool = False, migrate_schema: bool = True, postgres: Optional[PgOptions] = None,
               **options: Any) -> Queue:
    """The queue of the database at `url`.

    The daemon opens it read-write and migrates it (creating it if need be). The operator's
    commands never change its shape: `migrate_schema=False` requires the current schema as it
    is, and `readonly=True` also never writes or creates anything.
    """
    engine = open_engine(url, readonly=readonly, create=migrate_schema, postgres=postgres)
    if migrate_schema and not readonly:
        migrate(engine)
    else:
        require_current(engine)
    return Queue(engine, owner=owner, box_id=box_id, shared=shared, **options)
