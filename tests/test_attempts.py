"""The attempt history (job_attempts) on real SQLite files: written where the queue changes a job,
kept across an operator's retry, and shown whole by job_detail."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edged.store import NewFile, Queue, ResultData, migrate, open_engine, open_queue
from edged.store.attempts import attempts_of
from edged.store.detail import job_detail
from edged.store.schema import MIGRATIONS, SCHEMA_VERSION


def _file(name: str, sha: str, task: str = "caption") -> NewFile:
    return NewFile(task, f"{task}/{name}", sha, size_bytes=1)


@pytest.fixture
def queue(db_url: str) -> Queue:
    return open_queue(db_url, max_attempts=2, backoff_seconds=0, backoff_max_seconds=0)


def _ready_now(queue: Queue) -> None:
    with queue.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE jobs SET next_run_at = '2000-01-01T00:00:00.000Z'")


def _story(queue: Queue, job_id: int) -> list[tuple]:
    return [(a["round"], a["attempt"], a["outcome"], a["error"]) for a in attempts_of(queue.engine, job_id)]


def test_retry_starts_a_new_round_and_keeps_the_earlier_rounds(queue: Queue) -> None:
    (e,) = queue.enqueue([_file("a", "s")], "m")
    for n in (1, 2):
        _ready_now(queue)
        (job,) = queue.claim(1)
        queue.fail(job, f"boom {n}")
    assert queue.job_status(e.job_id) == ("failed", "boom 2", 2)
    assert queue.requeue([e.job_id]) == [e.job_id]
    assert queue.job_status(e.job_id) == ("queued", None, 0)  # the round's counters start again ...
    (job,) = queue.claim(1)
    assert queue.complete([(job, ResultData("ok"))]) == [True]
    # ... and the history keeps what happened before the retry.
    assert _story(queue, e.job_id) == [(1, 1, "retry", "boom 1"), (1, 2, "failed", "boom 2"), (2, 1, "done", None)]
    rows = attempts_of(queue.engine, e.job_id)
    assert all(r["started_at"].endswith("Z") and r["finished_at"] >= r["started_at"] for r in rows)


def test_a_failed_file_dropped_again_is_a_new_round(queue: Queue) -> None:
    (e,) = queue.enqueue([_file("a", "s")], "m")
    (job,) = queue.claim(1)
    queue.fail(job, "bad input", permanent=True)
    queue.supersede(e.file_id, "missing")
    assert queue.enqueue([_file("a", "s")], "m")[0].outcome == "requeued"
    (job,) = queue.claim(1)
    assert [r[:3] for r in _story(queue, e.job_id)] == [(1, 1, "failed"), (2, 1, "running")]


def test_release_and_crash_recovery_close_the_open_attempt(queue: Queue) -> None:
    queue.enqueue([_file("a", "s"), _file("b", "t")], "m")
    queue.claim(5)
    assert queue.release([1]) == 1
    assert queue.recover(everything=True, cause="died of a crash (Segmentation fault)") == (1, 0)
    assert _story(queue, 1) == [(1, 1, "released", "handed back untouched (not counted)")]
    ((_r, _a, outcome, error),) = _story(queue, 2)
    assert outcome == "interrupted" and "Segmentation fault" in error and "not counted" in error
    # Alone now, and the same cause again: this time the attempt is charged, and the last one fails it.
    for _ in range(2):
        _ready_now(queue)
        (job,) = queue.claim(1)
        assert job.id in (1, 2)
        queue.recover(everything=True, cause="died of a crash (Segmentation fault)")
    outcomes = [(o, e) for _r, _a, o, e in _story(queue, 2)]
    assert outcomes[-1][0] == "failed" and "giving up" in outcomes[-1][1]
    assert queue.job_status(2)[0] == "failed"


def test_job_detail_holds_files_result_children_and_history(queue: Queue) -> None:
    (e,) = queue.enqueue([_file("page.png", "s", "ocr")], "m")
    queue.enqueue([_file("copy.png", "s", "ocr")], "m")  # a duplicate joins the job
    (job,) = queue.claim(1)
    spawn = ("translate", {"target_language": "de"})
    assert queue.complete([(job, ResultData("text", prompt_tokens=5, output_tokens=2, duration_ms=7,
                                            spawn=spawn))]) == [True]
    info = job_detail(queue.engine, e.job_id)
    assert info is not None
    assert info["status"] == "done" and info["round"] == 1 and info["params"] == {}
    assert [f["path"] for f in info["files"]] == ["ocr/page.png", "ocr/copy.png"]
    assert info["files"][0]["state"] == "pending" and info["files"][0]["left_in_inbox"] is False
    assert info["result"]["output"] == "text" and info["result"]["output_tokens"] == 2
    assert [(c["task"], c["params"]) for c in info["children"]] == [("translate", {"target_language": "de"})]
    child = job_detail(queue.engine, info["children"][0]["id"])
    assert child is not None and child["parent"]["id"] == e.job_id and child["attempt_history"] == []
    assert [a["outcome"] for a in info["attempt_history"]] == ["done"]
    assert job_detail(queue.engine, 999) is None


def _database_at(db: Path, version: int) -> sqlite3.Connection:
    """A database as an edged of schema `version` left it (its migrations applied, nothing after)."""
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for v, statements in enumerate(MIGRATIONS[:version], start=1):
        for statement in statements:
            con.execute(statement)
        con.execute("INSERT INTO schema_migrations VALUES (?, '2026-11-30T00:00:00.000Z')", (v,))
    return con


def test_the_attempts_migration_keeps_a_v4_database_and_starts_its_history_empty(tmp_path: Path) -> None:
    db = tmp_path / "v4.db"
    con = _database_at(db, 4)
    t = "2026-11-30T10:00:00.000Z"
    con.execute("INSERT INTO jobs (id, task, source_path, sha256, status, attempts, error, created_at, finished_at,"
                " next_run_at) VALUES (1, 'ocr', 'ocr/a.png', 's', 'failed', 3, 'boom', ?, ?, ?)", (t, t, t))
    con.commit()
    con.close()
    engine = open_engine(f"sqlite:///{db}")
    assert migrate(engine) == list(range(5, SCHEMA_VERSION + 1))
    q = Queue(engine)
    assert q.job_status(1) == ("failed", "boom", 3) and attempts_of(engine, 1) == []
    assert q.requeue([1]) == [1]
    (job,) = q.claim(1)
    assert _story(q, 1) == [(2, 1, "running", None)]


def test_v6_indexes_when_attempts_ended_for_a_followers_poll(tmp_path: Path) -> None:
    """A v5 database gains job_attempts_finished and keeps its attempts (results --follow looks them up by it)."""
    db = tmp_path / "v5.db"
    con = _database_at(db, 5)
    t = "2026-12-01T10:00:00.000Z"
    con.execute("INSERT INTO jobs (id, task, source_path, created_at, next_run_at) VALUES (1, 'ocr', 'a', ?, ?)",
                (t, t))
    con.execute("INSERT INTO job_attempts (job_id, round, attempt, started_at, finished_at, outcome)"
                " VALUES (1, 1, 1, ?, ?, 'retry')", (t, t))
    con.commit()
    con.close()
    assert migrate(open_engine(f"sqlite:///{db}")) == list(range(6, SCHEMA_VERSION + 1))
    con = sqlite3.connect(db)
    columns = [row[2] for row in con.execute("PRAGMA index_info('job_attempts_finished')")]
    assert columns == ["finished_at"] and con.execute("SELECT COUNT(*) FROM job_attempts").fetchone() == (1,)
    con.close()
