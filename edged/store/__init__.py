"""The store: SQLite engine, schema migrations and the job queue. Knows nothing of prompts or ONNX."""

from __future__ import annotations

from typing import Optional

from edged.store.db import open_engine
from edged.store.queue import (
    DONE, FAILED, QUEUED, RUNNING, Enqueued, FileRecord, Job, NewFile, Queue, ResultData,
    backoff_delay, canonical_params,
)
from edged.store.schema import migrate

__all__ = [
    "DONE", "FAILED", "QUEUED", "RUNNING", "Enqueued", "FileRecord", "Job", "NewFile", "Queue",
    "ResultData", "backoff_delay", "canonical_params", "migrate", "open_engine", "open_queue",
]


def open_queue(url: str, *, owner: Optional[str] = None, **options: float) -> Queue:
    """Open (and migrate) the database at `url` and return its queue."""
    engine = open_engine(url)
    migrate(engine)
    return Queue(engine, owner=owner, **options)
