"""The queue on both backends (real SQLite files, a real PostgreSQL server): migrations, idempotent
enqueue, claims, leases, retries. What only one backend has is tested in the tests named for it."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from edged.store import NewFile, Queue, ResultData, Settled, backoff_delay, migrate, open_engine, open_queue
from edged.store.db import read, run
from edged.store.schema import MIGRATIONS, SCHEMA_VERSION, SchemaMismatch, current_version
from edged.timeutil import parse_iso, utcnow


def _url(tmp_path: Path, name: str = "q.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def _file(name: str, sha: str, task: str = "caption", **kw) -> NewFile:
    return NewFile(task, f"{task}/{name}", sha, size_bytes=1, **kw)


def rows(engine: Engine, sql: str, **params) -> list[tuple]:
    with read(engine) as conn:
        return [tuple(r) for r in run(conn, sql, **params).all()]


@pytest.fixture
def queue(db_url: str) -> Queue:
    return open_queue(db_url, max_attempts=3, backoff_seconds=10, backoff_max_seconds=100)


def test_migrations_from_an_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    db.touch()  # an empty file, as a careless operator might create
    engine = open_engine(f"sqlite:///{db}")
    assert current_version(engine) == 0
    assert migrate(engine) == list(range(1, SCHEMA_VERSION + 1))
    assert migrate(engine) == []  # idempotent
    assert current_version(engine) == SCHEMA_VERSION
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "results", "files", "throughput", "runtime", "schema_migrations"} <= tables


def test_migrations_from_a_populated_v1_database_keep_every_row(tmp_path: Path) -> None:
    """A box that ran the first release for a while: its rows survive, new columns get defaults."""
    db = tmp_path / "v1.db"
    con = sqlite3.connect(db)
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    con.execute("INSERT INTO schema_migrations VALUES (1, '2026-11-27T00:00:00.000Z')")
    t = "2026-11-27T10:00:00.000Z"
    con.executemany("INSERT INTO jobs (id, task, params, model, source_path, sha256, size_bytes, status, attempts,"
                    " created_at, finished_at, next_run_at) VALUES (?, ?, '{}', 'm', ?, ?, 5, ?, ?, ?, ?, ?)",
                    [(1, "caption", "caption/a.png", "s1", "done", 1, t, t, t),
                     (2, "ocr", "ocr/b.png", "s2", "queued", 0, t, None, t),
                     (3, "translate", "translate/c.txt", "s3", "running", 1, t, None, t)])
    con.execute("INSERT INTO results (job_id, task, output, model, created_at) VALUES (1, 'caption', 'a cat', 'm', ?)",
                (t,))
    con.executemany("INSERT INTO files (job_id, path, inode, state, duplicate, received_at, moved_to)"
                    " VALUES (?, ?, ?, ?, 0, ?, ?)",
                    [(1, "caption/a.png", 11, "done", t, "done/caption/a.png"),
                     (2, "ocr/b.png", 12, "pending", t, None), (3, "translate/c.txt", 13, "pending", t, None)])
    con.commit()
    con.close()
    engine = open_engine(f"sqlite:///{db}")
    assert migrate(engine) == list(range(2, SCHEMA_VERSION + 1))
    q = Queue(engine)
    assert q.job_status(1) == ("done", None, 1) and q.result_output(1) == "a cat"
    assert q.files_of([2])[2][0].path == "ocr/b.png" and q.files_of([2])[2][0].inode == 12
    # The job a v1 daemon left running goes back, its attempt given back (no batch size was recorded).
    assert q.recover(everything=True) == (1, 0)
    assert q.job_status(3) == ("queued", None, 0)
    assert [j.id for j in q.claim(5)] == [3]  # it runs alone first
    con = sqlite3.connect(db)
    assert con.execute("SELECT solo, crashes, lease_batch FROM jobs WHERE id = 2").fetchone() == (0, 0, None)
    assert con.execute("SELECT left_in_inbox, moved_inode FROM files WHERE job_id = 1").fetchone() == (0, None)


def test_newer_schema_is_refused(db_url: str) -> None:
    engine = open_engine(db_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_migrations VALUES (999, 'x')")
    with pytest.raises(SchemaMismatch, match="newer than this edged"):
        migrate(engine)


def test_enqueue_is_idempotent_per_content_task_params_model(queue: Queue) -> None:
    a, b = queue.enqueue([_file("a.jpg", "s1"), _file("a-copy.jpg", "s1")], model="m")
    assert (a.outcome, b.outcome) == ("new", "attached") and a.job_id == b.job_id
    # The same path seen again by a rescan: nothing new.
    assert queue.enqueue([_file("a.jpg", "s1")], model="m")[0].outcome == "known"
    other = queue.enqueue([
        _file("a.jpg", "s1", task="ocr"),
        NewFile("translate", "translate/de/x", "s1", params={"target_language": "de"}),
        NewFile("translate", "translate/fr/x", "s1", params={"target_language": "fr"}),
        _file("b.jpg", "s1"),
    ], model="other-model")
    assert [o.outcome for o in other] == ["new", "new", "new", "new"]
    assert len({o.job_id for o in other} | {a.job_id}) == 5


def test_duplicate_of_done_and_redrop_of_failed(queue: Queue) -> None:
    first = queue.enqueue([_file("a.jpg", "s1"), _file("b.jpg", "s2")], model="m")
    jobs = queue.claim(10)
    assert queue.complete([(jobs[0], ResultData("out"))]) == [True]
    assert queue.fail(jobs[1], "bad", permanent=True) == "failed"
    queue.settle_files([Settled(first[0].file_id, "done", "done/caption/a.jpg"),
                        Settled(first[1].file_id, "failed", "failed/caption/b.jpg")])
    dup, again = queue.enqueue([_file("a.jpg", "s1"), _file("b.jpg", "s2")], model="m")
    assert dup.outcome == "duplicate" and dup.job_id == jobs[0].id
    assert again.outcome == "requeued" and again.job_id == jobs[1].id
    assert queue.job_status(jobs[1].id) == ("queued", "bad", 0)
    assert queue.files_of([jobs[0].id])[jobs[0].id][0].duplicate


def test_file_replaced_in_place_supersedes_the_old_record(queue: Queue) -> None:
    old = queue.enqueue([_file("a.jpg", "s1")], model="m")[0]
    new = queue.enqueue([_file("a.jpg", "s2")], model="m")[0]
    assert new.outcome == "new" and new.job_id != old.job_id
    assert queue.files_of([old.job_id])[old.job_id] == []
    assert len(queue.files_of([new.job_id])[new.job_id]) == 1


def test_claim_takes_one_task_oldest_first_and_respects_limit(queue: Queue) -> None:
    queue.enqueue([_file("1", "a", "ocr"), _file("2", "b"), _file("3", "c", "ocr"), _file("4", "d", "ocr")], "m")
    batch = queue.claim(2)
    assert [j.source_path for j in batch] == ["ocr/1", "ocr/3"]
    assert all(j.attempts == 1 for j in batch)
    assert [j.source_path for j in queue.claim(5)] == ["caption/2"]
    assert [j.source_path for j in queue.claim(5)] == ["ocr/4"]
    assert queue.claim(5) == []


def test_refused_file_is_a_failed_job_at_once(queue: Queue) -> None:
    res = queue.enqueue([NewFile("ocr", "ocr/link", None, refused="refused: symbolic link")], "m")[0]
    assert res.outcome == "refused"
    assert queue.job_status(res.job_id) == ("failed", "refused: symbolic link", 0)
    assert queue.claim(5) == []


def test_backoff_schedule() -> None:
    assert [backoff_delay(n, 10, 1000, rand=lambda: 0.5) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_delay(3, 10, 1000, rand=lambda: 0.0) == 20  # -50 %
    assert backoff_delay(3, 10, 1000, rand=lambda: 1.0) == 60  # +50 %
    assert backoff_delay(20, 10, 1000, rand=lambda: 0.5) == 1000  # capped


def test_failures_back_off_then_fail_for_good(queue: Queue) -> None:
    queue.enqueue([_file("a", "s")], "m")
    (job,) = queue.claim(1)
    before = utcnow()
    assert queue.fail(job, "transient") == "queued"
    with queue.engine.connect().execution_options(readonly=True) as conn:
        row = conn.exec_driver_sql("SELECT next_run_at FROM jobs").scalar()
    delay = (parse_iso(row) - before).total_seconds()
    assert 5 - 0.1 <= delay <= 15 + 0.1  # 10 s ± 50 %
    assert queue.claim(1) == []  # not ready yet
    for attempt in (2, 3):
        with queue.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE jobs SET next_run_at = '2000-01-01T00:00:00.000Z'")
        (job,) = queue.claim(1)
        assert job.attempts == attempt
        expected = "queued" if attempt < 3 else "failed"
        assert queue.fail(job, f"transient {attempt}") == expected
    assert queue.job_status(job.id) == ("failed", "transient 3", 3)


class Clock:
    """A clock a test moves by hand: lease expiry without sleeping."""

    def __init__(self) -> None:
        self.t = utcnow()

    def __call__(self):  # datetime
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def test_lease_expiry_requeues_and_counts_the_death_apart(db_url: str) -> None:
    clock = Clock()
    q = open_queue(db_url, max_attempts=2, lease_seconds=60, owner="dead-worker", backoff_seconds=0,
                   clock=clock)
    sweeper = Queue(q.engine, max_attempts=2, owner="sweeper", backoff_seconds=0, clock=clock)
    q.enqueue([_file("a", "s")], "m")
    (job,) = q.claim(1)
    assert sweeper.recover() == (0, 0)  # lease still valid
    clock.advance(61)
    assert q.recover() == (0, 0)  # a worker never expires its own batch in flight
    assert sweeper.recover() == (1, 0)
    # The old holder's late result is refused: the job is no longer its to finish.
    assert q.complete([(job, ResultData("late"))]) == [False]
    # Nothing says the job killed its worker: the attempt is given back, the death counted.
    for death in range(2, 5):
        (job,) = q.claim(1)
        assert job.attempts == 1
        clock.advance(61)
        assert sweeper.recover() == ((1, 0) if death < 4 else (0, 1))
    status, error, attempts = q.job_status(job.id)
    assert status == "failed" and "died 4 times while running this job alone, with no cause recorded" in error


def test_a_crash_with_a_known_cause_charges_only_the_job_that_ran_alone(db_url: str) -> None:
    queue = open_queue(db_url, max_attempts=3, backoff_seconds=0)
    queue.enqueue([_file("a", "s"), _file("b", "t")], "m")
    queue.claim(5)
    crash = "died of a crash (Segmentation fault)"
    assert queue.recover(everything=True, cause=crash) == (2, 0)  # batch-mates: not charged
    seen = []
    while (jobs := queue.claim(5)):
        (job,) = jobs  # they run alone now
        seen.append((job.source_path, job.attempts))
        if job.source_path == "caption/b":
            assert queue.complete([(job, ResultData("ok"))]) == [True]
        else:
            queue.recover(everything=True, cause=crash)  # "a" kills the process each time
    assert [n for p, n in seen if p == "caption/a"] == [1, 2, 3] and ("caption/b", 1) in seen

    status, error, _ = queue.job_status(1)
    assert status == "failed" and error.startswith(f"the worker {crash} while running this job alone, 3 time(s)")
    assert queue.job_status(2)[0] == "done"


def test_a_job_that_ran_alone_waits_a_back_off_before_it_runs_again(queue: Queue) -> None:
    queue.enqueue([_file("a", "s"), _file("b", "t")], "m")
    (a,) = queue.claim(1)
    assert queue.recover(everything=True) == (1, 0)
    assert [j.source_path for j in queue.claim(5)] == ["caption/b"]  # "a" waits 5-15 s (backoff 10 s)
    assert 4.9 < queue.next_ready_in() < 15.1


def test_release_does_not_count_the_attempt(queue: Queue) -> None:
    queue.enqueue([_file("a", "s")], "m")
    (job,) = queue.claim(1)
    assert queue.release([job.id]) == 1
    assert queue.job_status(job.id) == ("queued", None, 0)


def test_result_and_done_state_commit_together_and_only_once(queue: Queue) -> None:
    queue.enqueue([_file("a", "s")], "m")
    (job,) = queue.claim(1)
    assert queue.complete([(job, ResultData("hello", 3, 4, 5))]) == [True]
    assert queue.complete([(job, ResultData("again"))]) == [False]
    assert rows(queue.engine, "SELECT r.output, r.prompt_tokens, r.output_tokens, r.duration_ms, j.status"
                              " FROM results r JOIN jobs j ON j.id = r.job_id") == [("hello", 3, 4, 5, "done")]


def _claimer(url: str, owner: str, out, start) -> None:  # multiprocessing objects
    q = Queue(open_engine(url), owner=owner)
    got: list[int] = []
    start.wait(timeout=60)  # both processes begin together, or one may drain the queue alone
    while True:
        jobs = q.claim(3)
        if not jobs:
            break
        got.extend(j.id for j in jobs)
        q.complete([(j, ResultData(owner)) for j in jobs])
        time.sleep(0.002)  # a worker does work between claims; SQLite's lock is not fair to a busy rival
    out.put(got)


@pytest.mark.parametrize("workers", [2, 4])
def test_processes_never_claim_the_same_job(db_url: str, workers: int) -> None:
    url = db_url
    q = open_queue(url)
    n = 400
    q.enqueue([_file(f"f{i}", f"sha{i}") for i in range(n)], "m")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = ctx.Barrier(workers)
    procs = [ctx.Process(target=_claimer, args=(url, f"w{i}", out, start)) for i in range(workers)]
    for p in procs:
        p.start()
    got = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    sets = [set(g) for g in got]
    assert sum(map(len, sets)) == n and set().union(*sets) == set(range(1, n + 1))  # no job twice, none left
    assert sum(bool(s) for s in sets) >= 2, "more than one process should have claimed work"
    assert rows(q.engine, "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(n, n)]


def test_recover_everything_at_startup_requeues_unexpired_leases(queue: Queue) -> None:
    queue.enqueue([_file("a", "s"), _file("b", "t")], "m")
    queue.claim(5)
    assert queue.recover() == (0, 0)
    assert queue.recover(everything=True) == (2, 0)
    # Interrupted batch-mates get their attempt back and run alone, one after the other.
    first = queue.claim(5)
    assert [j.attempts for j in first] == [1]
    assert queue.complete([(first[0], ResultData("ok"))]) == [True]
    assert [j.attempts for j in queue.claim(5)] == [1]


def test_next_ready_in(queue: Queue) -> None:
    assert queue.next_ready_in() is None
    queue.enqueue([_file("a", "s")], "m")
    assert queue.next_ready_in() == 0
    with queue.engine.begin() as conn:
        future = (utcnow() + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        run(conn, "UPDATE jobs SET next_run_at = :f", f=future)
    assert 25 < queue.next_ready_in() <= 30


def test_the_wal_is_folded_back_and_cut_to_size(tmp_path: Path) -> None:
    """Every WAL_PAGES pages the WAL folds into the database and is cut back: on a nearly full
    disk the WAL alone cannot take the room the database needs (SQLite's own default: 4 MiB)."""
    from edged.store.db import WAL_PAGES, open_engine, run, write

    engine = open_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with write(engine) as conn:
        run(conn, "CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT)")
    for i in range(600):
        with write(engine) as conn:
            run(conn, "INSERT INTO t (body) VALUES (:b)", b="x" * 3000 + str(i))
    wal = tmp_path / "w.db-wal"
    assert wal.stat().st_size <= (WAL_PAGES + 16) * 4096, wal.stat().st_size
    engine.dispose()
