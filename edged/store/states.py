"""The states a job and a file record can be in, and what enqueueing a file can come to."""

from __future__ import annotations

from typing import Literal, NamedTuple, Optional

JobStatus = Literal["queued", "running", "done", "failed"]
QUEUED: JobStatus = "queued"
RUNNING: JobStatus = "running"
DONE: JobStatus = "done"
FAILED: JobStatus = "failed"

# pending: in the inbox, its job not finished (or its move not done yet); done, failed: moved
# (or copied) out; superseded: what is at its path is another file now; missing: it vanished.
FileState = Literal["pending", "done", "failed", "superseded", "missing"]

# new: a job made for it; attached: it joined a queued or running job of the same content;
# duplicate: the same content was done before (it gets that result); requeued: a failed job of
# the same content is given another try; refused: never read (a link, a FIFO …), failed at
# once; known: already recorded as it is.
Outcome = Literal["new", "attached", "duplicate", "requeued", "refused", "known"]


class JobState(NamedTuple):
    status: JobStatus
    error: Optional[str]
    attempts: int


class Recovered(NamedTuple):
    requeued: int
    failed: int
