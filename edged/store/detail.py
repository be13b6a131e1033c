"""Everything the store knows about one job, for `edged show`."""

from __future__ import annotations

import json
from typing import Any, Optional

from sqlalchemy import Engine

from edged.pathnames import displayable, from_db
from edged.store.attempts import attempts_of
from edged.store.db import read, run


def _path(value: Any) -> Optional[str]:
    return None if value is None else displayable(from_db(value))


def job_detail(engine: Engine, job_id: int) -> Optional[dict[str, Any]]:
    """The job's row, its files, its result, its parent and children, and its attempts; None if unknown."""
    with read(engine) as conn:
        job = run(conn, "SELECT * FROM jobs WHERE id = :id", id=job_id).mappings().first()
        if job is None:
            return None
        files = run(conn, "SELECT id, path, state, duplicate, size_bytes, received_at, settled_at, moved_to,"
                          " result_file, left_in_inbox, settle_error FROM files WHERE job_id = :id ORDER BY id",
                    id=job_id).mappings().all()
        result = run(conn, "SELECT output, model, prompt_tokens, output_tokens, duration_ms, created_at FROM results"
                           " WHERE job_id = :id", id=job_id).mappings().first()
        parent = (run(conn, "SELECT id, task, status FROM jobs WHERE id = :id", id=job["parent_id"]).mappings().first()
                  if job["parent_id"] is not None else None)
        children = run(conn, "SELECT id, task, status, params FROM jobs WHERE parent_id = :id ORDER BY id",
                       id=job_id).mappings().all()
    out: dict[str, Any] = dict(job)
    out["params"] = json.loads(out["params"])
    out["files"] = [{**f, "path": _path(f["path"]), "moved_to": _path(f["moved_to"]),
                     "result_file": _path(f["result_file"]), "duplicate": bool(f["duplicate"]),
                     "left_in_inbox": bool(f["left_in_inbox"])} for f in files]
    out["result"] = dict(result) if result is not None else None
    out["parent"] = dict(parent) if parent is not None else None
    out["children"] = [{**c, "params": json.loads(c["params"])} for c in children]
    out["attempt_history"] = attempts_of(engine, job_id)
    return out
