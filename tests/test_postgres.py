"""What only the PostgreSQL backend has, on a real server: its schema's types, migrations that
boxes starting together serialise, the server's clock, a box's own recovery, a connection the
server kills, a transaction it ends for idling, names that are not UTF-8 in text columns, and
the real daemon (and the operator's commands) on it."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from edged.cli import main
from edged.pathnames import BYTES_MARK
from edged.store import NewFile, PgOptions, Queue, ResultData, StoreUnavailable, open_engine, open_queue
from edged.store.db import read, run, write
from edged.store.errors import UnsupportedDatabase
from edged.store.schema import SCHEMA_VERSION, migrate
from edged.timeutil import parse_iso, utcnow


def _one(engine: Engine, sql: str, **params):
    with read(engine) as conn:
        return run(conn, sql, **params).one()


def test_the_schema_has_64_bit_integers_and_numbered_keys(pg_url: str) -> None:
    q = open_queue(pg_url)
    types = dict(_row for _row in q.engine.connect().exec_driver_sql(
        "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = current_schema()").all())
    assert types["files.mtime_ns"] == "bigint" and types["jobs.size_bytes"] == "bigint"
    assert types["throughput.output_tok_per_s"] == "double precision"
    assert types["files.path"] == "text"
    n = q.enqueue([NewFile("caption", "caption/a", "s1", size_bytes=5 * 2**40, mtime_ns=time.time_ns())], "m")
    assert n[0].job_id == 1 and q.files_of([1])[1][0].size_bytes == 5 * 2**40


def _migrate(url: str, start, out) -> None:  # multiprocessing objects
    engine = open_engine(url)
    start.wait(timeout=60)
    out.put(migrate(engine))


def test_boxes_starting_together_migrate_once(pg_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_migrate, args=(pg_url, start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    applied = sorted((out.get(timeout=120) for _ in procs), key=len)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert applied == [[], [], [], list(range(1, SCHEMA_VERSION + 1))]  # one migrated, three found it done
    engine = open_engine(pg_url)
    assert _one(engine, "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations") == (SCHEMA_VERSION,
                                                                                               SCHEMA_VERSION)


def test_queue_times_are_the_servers_whatever_the_box_clock_says(pg_url: str, monkeypatch) -> None:
    import edged.store.queue as queue_module

    monkeypatch.setattr(queue_module, "utcnow", lambda: utcnow() + timedelta(hours=3))  # a box clock 3 h fast
    q = open_queue(pg_url, backoff_seconds=0)
    q.enqueue([NewFile("caption", "caption/a", "s1", size_bytes=1)], "m")
    created = parse_iso(_one(q.engine, "SELECT created_at FROM jobs")[0])
    assert abs((created - utcnow()).total_seconds()) < 60
    (job,) = q.claim(1)  # ready by the server's clock, not 3 h in the future
    expires = parse_iso(_one(q.engine, "SELECT lease_expires_at FROM jobs")[0])
    assert abs((expires - utcnow()).total_seconds() - q.lease_seconds) < 60


def test_start_up_recovery_takes_back_only_this_boxs_jobs(pg_url: str) -> None:
    a = open_queue(pg_url, box_id="box-a")
    b = Queue(a.engine, box_id="box-b")
    twin = Queue(a.engine, box_id="box-ab")  # a prefix of nothing: "box-a" must not match it
    a.enqueue([NewFile("ocr", f"ocr/{n}", f"s{n}", size_bytes=1) for n in range(3)], "m")
    (ja,) = a.claim(1)
    (jb,) = b.claim(1)
    (jt,) = twin.claim(1)
    assert a.owner == f"box-a:{os.getpid()}"
    restarted = Queue(a.engine, box_id="box-a")  # box-a again after a crash: same pid or not
    assert restarted.recover(everything=True) == (1, 0)
    assert [a.job_status(j.id)[0] for j in (ja, jb, jt)] == ["queued", "running", "running"]


def test_a_connection_the_server_kills_mid_transaction_changes_nothing(pg_url: str, pg_server) -> None:
    q = open_queue(pg_url)
    q.enqueue([NewFile("caption", "caption/a", "s1", size_bytes=1)], "m")
    with pytest.raises(StoreUnavailable, match="server"):
        with write(q.engine) as conn:
            run(conn, "UPDATE jobs SET status = 'running'")
            pid = run(conn, "SELECT pg_backend_pid()").scalar_one()
            pg_server.psql(f"SELECT pg_terminate_backend({pid})")
            run(conn, "SELECT 1")
    assert q.job_status(1) == ("queued", None, 0)  # rolled back; and the pool gave a live connection
    (job,) = q.claim(1)
    assert q.complete([(job, ResultData("ok"))]) == [True]


def test_a_box_that_hangs_in_a_transaction_is_freed_by_the_server(pg_url: str) -> None:
    hung = open_queue(pg_url, postgres=PgOptions(idle_in_transaction_timeout_s=1.0))
    other = Queue(open_engine(pg_url), owner="other:1")
    hung.enqueue([NewFile("caption", "caption/a", "s1", size_bytes=1)], "m")
    failed: list[BaseException] = []
    inside = threading.Event()

    def hang() -> None:
        try:
            with write(hung.engine) as conn:
                run(conn, "SELECT id FROM jobs FOR UPDATE")
                inside.set()
                time.sleep(3)  # hung, holding the row
        except BaseException as error:  # noqa: B036 - the test looks at it
            failed.append(error)

    thread = threading.Thread(target=hang)
    thread.start()
    assert inside.wait(10)
    assert other.claim(1) == []  # the row is locked: skipped, not waited for
    deadline = time.monotonic() + 10
    while not (got := other.claim(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [j.id for j in got] == [1]  # the server ended the idle transaction and its lock
    thread.join()
    assert failed and isinstance(failed[0], StoreUnavailable) and "idle" in str(failed[0])


@pytest.mark.parametrize("name", [os.fsdecode(b"caption/caf\xe9.png"), f"caption/{BYTES_MARK}x.png",
                                  "caption/plain.png"])
def test_any_linux_name_round_trips_through_text_columns(pg_url: str, name: str) -> None:
    q = open_queue(pg_url)
    (e,) = q.enqueue([NewFile("caption", name, "s1", size_bytes=1, inode=7)], "m")
    assert q.files_of([e.job_id])[e.job_id][0].path == name
    assert q.pending_fingerprints() == {name: (7, 1, None, None)}
    assert q.enqueue([NewFile("caption", name, "s1", size_bytes=1, inode=7)], "m")[0].outcome == "known"


def test_urls_it_cannot_use_are_refused_with_the_fix(monkeypatch) -> None:
    with pytest.raises(UnsupportedDatabase, match="SQLite .* or PostgreSQL"):
        open_engine("mysql://box@db/edged")
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as on a box without the postgres extra
    with pytest.raises(UnsupportedDatabase, match=r"pip install 'edged\[postgres\]'"):
        open_engine("postgresql+psycopg://box@db.example/edged")


def test_the_daemon_and_the_commands_on_postgresql(daemon_factory, pg_url: str, capsys) -> None:
    d = daemon_factory(database=pg_url, schedule={"summary_seconds": 0.5})
    d.start()
    box = (d.root / "state" / "box_id").read_text().strip()
    inbox = d.spool / "inbox" / "translate"
    inbox.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (inbox / f"doc{n}.txt").write_text(f"Text number {n}.")
    (inbox / "empty.txt").write_bytes(b"")
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')")[0][0] == 4,
                 what="4 jobs finished")
    d.wait_until(lambda: len(list((d.spool / "done" / "translate").glob("*.txt"))) == 3, what="files settled")
    assert d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(3, 3)]
    owners = d.query("SELECT application_name FROM pg_stat_activity WHERE left(application_name, 6) = 'edged '")
    assert (f"edged {box}",) in owners
    assert not (d.root / "edged.lock").exists()  # the lock is in the state folder, not the cwd
    assert d.stop() == 0
    assert main(["status", "-c", str(d.config_path), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["jobs"]["done"] == 3 and status["jobs"]["failed"] == 1
    assert main(["results", "-c", str(d.config_path), "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("translate") >= 3


def test_doctor_and_status_before_the_first_start_on_a_server(tmp_path, pg_url: str, capsys) -> None:
    """A server database no daemon has started on yet is a warning, not a broken schema; the
    password in the URL is never printed."""
    import yaml

    from conftest import base_config

    url = pg_url.replace("postgres@", "postgres:s3cret@")  # trust auth: the password is not checked
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path, database=url)))
    main(["doctor", "-c", str(cfg)])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.split()[1:2] == ["database"])
    assert line.startswith("warn") and "no edged tables yet" in line and "s3cret" not in out
    assert main(["status", "-c", str(cfg)]) == 0
    assert "s3cret" not in capsys.readouterr().out


def test_a_shared_queue_keeps_an_input_only_while_a_job_needs_it(pg_url: str) -> None:
    a = open_queue(pg_url, box_id="box-a", shared=True, backoff_seconds=0)
    b = Queue(a.engine, box_id="box-b", shared=True, backoff_seconds=0)
    b.serve("m", ["ocr"])
    img = NewFile("ocr", "ocr/p.png", "s1", size_bytes=3, data=b"png")
    (first,) = a.enqueue([img], "m")
    assert b.blob("s1") == b"png"
    (job,) = b.claim(1)  # box-b runs box-a's job from the blob
    assert b.files_of([job.id])[job.id] == []  # and sees none of box-a's files
    assert b.complete([(job, ResultData("text"))]) == [True]
    assert b.blob("s1") is None  # done: no box needs the bytes
    (again,) = b.enqueue([NewFile("ocr", "ocr/p.png", "s1", size_bytes=3, data=b"png")], "m")
    assert again.outcome == "duplicate" and b.blob("s1") is None  # a duplicate of a done job stores nothing
    (bad,) = a.enqueue([NewFile("ocr", "ocr/q.png", "s2", size_bytes=3, data=b"bad")], "m")
    (job2,) = b.claim(1)
    b.fail(job2, "unreadable", permanent=True)
    assert b.blob("s2") == b"bad"  # failed: kept for a retry
    # Each box settles only the files in its own spool: box-a its two, box-b its duplicate.
    assert sorted(f.id for f, _ in a.unsettled()) == [first.file_id, bad.file_id]
    assert [f.id for f, _ in b.unsettled()] == [again.file_id]
