"""Read-only queries behind `edged status` and `edged results`."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Optional

from sqlalchemy import Engine

from edged.store.db import read, run
from edged.timeutil import iso, parse_iso, utcnow


def _total(column: str) -> str:
    """The sum of a column, 0 for none, as an integer: PostgreSQL's SUM of a BIGINT is a NUMERIC
    (a Decimal in Python, which neither JSON nor float arithmetic takes); SQLite's is one already."""
    return f"CAST(COALESCE(SUM({column}), 0) AS BIGINT)"


def queue_summary(engine: Engine, now: Optional[datetime] = None) -> dict[str, Any]:
    """Counts by state and task, oldest queued job, and the last hour's throughput."""
    now = now or utcnow()
    hour_ago = iso(now - timedelta(hours=1))
    with read(engine) as conn:
        by_task: dict[str, dict[str, int]] = {}
        totals = {"queued": 0, "running": 0, "done": 0, "failed": 0}
        for task, status, n in run(conn, "SELECT task, status, COUNT(*) FROM jobs GROUP BY task, status ORDER BY task"):
            by_task.setdefault(task, dict.fromkeys(totals, 0))[status] = n
            totals[status] += n
        oldest = run(conn, "SELECT MIN(created_at) FROM jobs WHERE status = 'queued'").scalar()
        # Queued, but not before a time ahead: they failed (or their worker died) and wait for a retry.
        waiting, next_retry = run(conn, "SELECT COUNT(*), MIN(next_run_at) FROM jobs WHERE status = 'queued'"
                                        " AND next_run_at > :now", now=iso(now)).one()
        done, failed = run(conn, "SELECT COUNT(CASE WHEN status = 'done' THEN 1 END),"
                                 " COUNT(CASE WHEN status = 'failed' THEN 1 END) FROM jobs WHERE finished_at >= :since",
                           since=hour_ago).one()
        tokens, busy_ms = run(conn, f"SELECT {_total('output_tokens')}, {_total('duration_ms')} FROM results"
                                    " WHERE created_at >= :since", since=hour_ago).one()
        files_waiting = run(conn, "SELECT COUNT(*) FROM files WHERE state = 'pending'").scalar_one()
        stuck, left = run(conn,
            "SELECT (SELECT COUNT(*) FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.state = 'pending'"
            "   AND j.status IN ('done', 'failed') AND f.settle_error IS NOT NULL),"
            " (SELECT COUNT(*) FROM files WHERE left_in_inbox = 1)").one()
    oldest_age = (now - parse_iso(oldest)).total_seconds() if oldest else None
    return {
        "jobs": totals,
        "by_task": by_task,
        "files_in_inbox": files_waiting,
        # Finished, but their move out of the inbox failed (retried by the daemon; see doctor).
        "files_unsettled": stuck,
        # Copied to done/ or failed/ because the daemon may not remove them from their folder.
        "files_left_in_inbox": left,
        "oldest_queued_at": oldest,
        "oldest_queued_age_s": round(oldest_age, 1) if oldest_age is not None else None,
        "waiting_for_retry": waiting,
        "next_retry_at": next_retry,
        "last_hour": {
            "since": hour_ago,
            "until": iso(now),
            "done": done,
            "failed": failed,
            "jobs_per_min": round(done / 60.0, 2),
            "output_tokens": tokens,
            # tokens per second of model time, the figure that says whether the engine is healthy
            "output_tok_per_s": round(tokens / (busy_ms / 1000.0), 2) if busy_ms else None,
        },
    }


def throughput_since(engine: Engine, hours: float, now: Optional[datetime] = None) -> dict[str, Any]:
    """Totals of the daemon's own throughput rows of the periods that began in the last `hours`.

    A row is written when its period ends, so these figures cover [window_start, window_end]:
    the period in progress is not in them yet. Periods that began before the window are left
    out whole (counting one by its end, as before, shifted the window back by a period).
    """
    now = now or utcnow()
    with read(engine) as conn:
        row = run(conn, f"SELECT COUNT(*), {_total('jobs_done')}, {_total('jobs_failed')},"
                        f" {_total('output_tokens')}, {_total('engine_ms')}, MIN(period_start),"
                        " MAX(period_end) FROM throughput WHERE period_start >= :since",
                  since=iso(now - timedelta(hours=hours))).one()
    periods, done, failed, tokens, busy_ms, start, end = row
    span = (parse_iso(end) - parse_iso(start)).total_seconds() if start and end else 0
    return {
        "periods": periods, "jobs_done": done, "jobs_failed": failed, "output_tokens": tokens,
        "output_tok_per_s": round(tokens / (busy_ms / 1000), 2) if busy_ms else None,
        "engine_busy_pct": round(100 * busy_ms / 1000 / span, 1) if span else None,
        "window_start": start, "window_end": end,
    }


def list_results(
    engine: Engine,
    *,
    task: Optional[str] = None,
    status: Optional[str] = None,
    since: Optional[datetime] = None,
    limit: Optional[int] = 50,
    now: Optional[datetime] = None,
    changed_since: Optional[datetime] = None,
) -> list[dict[str, Any]]:
    """Finished jobs, and those waiting for a retry (or, with `status`, any), with their result, newest first.

    `changed_since`: only jobs that finished, or ended an attempt (a failure that waits for its
    retry leaves finished_at empty), at or after it: what a follower has not seen yet."""
    where: list[str] = []
    args: dict[str, Any] = {"now": iso(now or utcnow())}
    if task:
        where.append("j.task = :task")
        args["task"] = task
    if status:
        where.append("j.status = :status")
        args["status"] = status
    else:
        # A job that failed and waits for its retry has something to show too: its last error.
        where.append("(j.status IN ('done', 'failed') OR (j.status = 'queued' AND j.next_run_at > :now))")
    if since:
        where.append("COALESCE(j.finished_at, j.created_at) >= :since")
        args["since"] = iso(since)
    source = "jobs j"
    if changed_since:
        # What changed comes from two index range lookups (jobs_finished, job_attempts_finished), and
        # CROSS JOIN makes SQLite start from them and fetch each job by its id. Before, an OR with a
        # correlated EXISTS made it walk every done and failed job on each poll of a follower (0.56 s
        # at a million jobs); left to choose, it still starts from jobs_ready's statuses.
        source = ("(SELECT id FROM jobs WHERE finished_at >= :changed UNION"
                  " SELECT job_id FROM job_attempts WHERE finished_at >= :changed) AS changed"
                  " CROSS JOIN jobs j ON j.id = changed.id")
        args["changed"] = iso(changed_since)
    sql = (
        "SELECT j.id AS job_id, j.task, j.status, j.source_path, j.params, j.sha256, j.attempts, j.error,"
        " j.created_at, j.finished_at, j.next_run_at, r.output, COALESCE(r.model, j.model) AS model, r.prompt_tokens,"
        f" r.output_tokens, r.duration_ms FROM {source} LEFT JOIN results r ON r.job_id = j.id"
        f" WHERE {' AND '.join(where)} ORDER BY COALESCE(j.finished_at, j.created_at) DESC, j.id DESC"
    )
    if limit:
        sql += " LIMIT :limit"
        args["limit"] = limit
    with read(engine) as conn:
        rows = run(conn, sql, **args).mappings().all()
    out = []
    for row in rows:
        item = dict(row)
        item["params"] = json.loads(item["params"])
        out.append(item)
    return out


def failed_job_ids(engine: Engine) -> list[int]:
    with read(engine) as conn:
        return list(run(conn, "SELECT id FROM jobs WHERE status = 'failed' ORDER BY id").scalars())


def finished_between(engine: Engine, start: str, end: str) -> dict[str, int]:
    """Jobs done and failed in [start, end] by the jobs table: the throughput rows' window, seen from the jobs.

    Counted as queue_summary counts its last hour (a file refused at intake is a failed job too),
    so status's two lines differ only by their windows."""
    with read(engine) as conn:
        done, failed = run(conn, "SELECT COUNT(CASE WHEN status = 'done' THEN 1 END), COUNT(CASE WHEN status ="
                                 " 'failed' THEN 1 END) FROM jobs WHERE finished_at >= :start"
                                 " AND finished_at <= :end", start=start, end=end).one()
    return {"done": done, "failed": failed}


LIVE_S = 300.0  # a box unseen for longer (its summary beats every minute by default) is not counted as live


def site_summary(engine: Engine, now: Optional[datetime] = None) -> dict[str, Any]:
    """Mode "shared": the boxes of the site, and the queued jobs that no live box can run."""
    now = now or utcnow()
    with read(engine) as conn:
        boxes = [dict(r) for r in run(conn, "SELECT box_id, host, pid, model, provider, tasks, started_at, last_seen_at"
                                            " FROM boxes ORDER BY box_id").mappings()]
        waiting = run(conn, "SELECT model, task, COUNT(*) FROM jobs WHERE status = 'queued' GROUP BY model, task"
                            " ORDER BY model, task").all()
    live: set[tuple[str, str]] = set()
    for box in boxes:
        box["tasks"] = json.loads(box["tasks"] or "[]")
        age = (now - parse_iso(box["last_seen_at"])).total_seconds()
        box["last_seen_age_s"] = round(age, 1)
        box["live"] = age <= LIVE_S
        if box["live"]:
            live.update((box["model"], t) for t in box["tasks"])
    stranded = [{"model": m, "task": t, "jobs": n} for m, t, n in waiting if (m, t) not in live]
    return {"boxes": boxes, "queued_no_live_box_can_run": stranded}
