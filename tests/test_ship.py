"""Mode "ship": the outbox on the box's SQLite, the shipper, and the fleet's tables on a real
PostgreSQL server: changes and their outbox rows commit together, replays and reordering leave
the newer state, a shipper killed mid-round replays harmlessly, a link down for the whole run
ships everything once it is back, and retention keeps what has not shipped."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, pool

from edged.cli import main
from edged.shipper import Shipper
from edged.store import NewFile, PgOptions, Queue, ResultData, Settled, open_queue
from edged.store.central import Central, local_columns
from edged.store.db import read, run, write
from edged.store.outbox import Outbox
from edged.store.stats import Stats
from edged.timeutil import utcnow


def _central_rows(url: str, sql: str) -> list[tuple]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql).all()]
    finally:
        engine.dispose()


def _box(tmp_path: Path, name: str = "box.db", box_id: str = "box-1") -> Queue:
    return open_queue(f"sqlite:///{tmp_path / name}", box_id=box_id, backoff_seconds=0)


def _outbox_count(q: Queue) -> int:
    with read(q.engine) as conn:
        return run(conn, "SELECT COUNT(*) FROM outbox").scalar_one()


def _work(q: Queue, n: int, start: int = 0) -> None:
    """n files through the queue: even ones done, odd ones failed for good."""
    q.enqueue([NewFile("caption", f"caption/{i}.png", f"s{i}", size_bytes=i) for i in range(start, start + n)], "m")
    for job in q.claim(n):
        if job.id % 2:
            q.fail(job, "unreadable", permanent=True)
        else:
            q.complete([(job, ResultData(f"a picture {job.id}", 3, 4, 5))])


def test_outbox_rows_commit_and_roll_back_with_their_change(tmp_path: Path) -> None:
    q = _box(tmp_path)
    q.enqueue([NewFile("ocr", "ocr/a", "s0", size_bytes=1)], "m")
    assert _outbox_count(q) == 0  # shipping is off: nothing is kept for it
    assert Outbox(q.engine).enable("postgresql://fleet") == 2  # the job and its file, queued once
    q.enqueue([NewFile("ocr", "ocr/b", "s1", size_bytes=1)], "m")
    assert _outbox_count(q) == 4
    with pytest.raises(RuntimeError), write(q.engine) as conn:
        run(conn, "UPDATE jobs SET error = 'x'")
        assert run(conn, "SELECT COUNT(*) FROM outbox").scalar_one() == 6  # inside the transaction: there
        raise RuntimeError("rolled back")
    assert _outbox_count(q) == 4  # gone with the change
    assert Outbox(q.engine).enable("postgresql://fleet") == 0  # the same central: nothing to queue again
    assert Outbox(q.engine).enable("postgresql://other-fleet") == 4  # a new central gets everything
    assert Outbox(q.engine).disable() == 4 and _outbox_count(q) == 0


def test_ship_replay_and_reorder_leave_the_newer_state(tmp_path: Path, pg_url: str) -> None:
    q = _box(tmp_path)
    shipper = Shipper(q.engine, pg_url, "box-1", PgOptions())
    shipper.enable()
    q.enqueue([NewFile("caption", os.fsdecode(b"caption/caf\xe9.png"), "s0", size_bytes=1)], "m")
    old = shipper.outbox.pending(1000)  # the job as queued
    (job,) = q.claim(1)
    q.complete([(job, ResultData("a cat", 3, 4, 5))])
    done = shipper.round()
    assert done.error is None and done.backlog == 0 and done.rows >= 3
    rows = _central_rows(pg_url, "SELECT box_id, id, status FROM fleet_jobs")
    assert rows == [("box-1", 1, "done")]
    assert _central_rows(pg_url, "SELECT output FROM fleet_results") == [("a cat",)]
    # A name that is not UTF-8: marked text centrally, the same bytes when read back.
    from edged.pathnames import from_db

    (path,) = _central_rows(pg_url, "SELECT path FROM fleet_files")[0]
    assert os.fsencode(from_db(path)) == b"caption/caf\xe9.png"
    # The old batch (queued state, older seq) arrives again, late: nothing moves back.
    central = Central(create_engine(pg_url), "box-1", shipper.outbox.state().database_id)
    central.ensure(local_columns(q.engine))
    old.rows["jobs"] = [(seq, {**row, "status": "queued"}) for seq, row in old.rows["jobs"]]
    central.upsert(old, {})
    assert _central_rows(pg_url, "SELECT status FROM fleet_jobs") == [("done",)]
    # Two batches in the wrong order: the one with the newer seq wins, whenever it arrives.
    q.enqueue([NewFile("caption", "caption/x.png", "s9", size_bytes=1)], "m")
    first = shipper.outbox.pending(1000)  # job 2, queued
    (job2,) = q.claim(1)
    q.fail(job2, "unreadable", permanent=True)
    second = shipper.outbox.pending(1000)  # job 2, failed: a newer seq
    central.upsert(second, {})
    central.upsert(first, {})
    assert _central_rows(pg_url, "SELECT status, error FROM fleet_jobs WHERE id = 2") == [("failed", "unreadable")]
    central.engine.dispose()
    shipper.close()


def _killed_round(db: str, url: str) -> None:
    q = Queue(create_engine(db), box_id="box-1")
    Shipper(q.engine, url, "box-1", PgOptions(), batch_rows=7,
            after_upsert=lambda: os.kill(os.getpid(), signal.SIGKILL)).round()


def test_a_shipper_killed_between_the_upsert_and_its_bookkeeping_replays_harmlessly(tmp_path: Path,
                                                                                    pg_url: str) -> None:
    q = _box(tmp_path)
    Shipper(q.engine, pg_url, "box-1", PgOptions()).enable()
    _work(q, 10)
    before = _outbox_count(q)
    proc = multiprocessing.get_context("spawn").Process(target=_killed_round,
                                                        args=(f"sqlite:///{tmp_path / 'box.db'}", pg_url))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    assert _outbox_count(q) == before  # the central database took a batch, the box never heard
    assert _central_rows(pg_url, "SELECT COUNT(*) FROM fleet_jobs")[0][0] > 0
    shipper = Shipper(q.engine, pg_url, "box-1", PgOptions(), batch_rows=7)
    assert shipper.round().backlog == 0
    shipper.close()
    with read(q.engine) as conn:
        local = sorted(tuple(r) for r in run(conn, "SELECT id, status, attempts, error FROM jobs").all())
    assert sorted(_central_rows(pg_url, "SELECT id, status, attempts, error FROM fleet_jobs")) == local
    assert _central_rows(pg_url, "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM fleet_results") == [(5, 5)]


def test_retention_never_deletes_a_row_that_has_not_shipped(tmp_path: Path, pg_url: str) -> None:
    q = _box(tmp_path)
    shipper = Shipper(q.engine, pg_url, "box-1", PgOptions())
    shipper.enable()
    _work(q, 4)
    files = q.files_of([1, 2, 3, 4])
    q.settle_files([Settled(f.id, "done", f"done/{f.path}") for fs in files.values() for f in fs])
    stats = Stats(q.engine)
    later = utcnow().replace(year=utcnow().year + 1)
    assert stats.expired(later, include_failed=True) == []  # all finished, none shipped
    assert shipper.round().backlog == 0
    assert len(stats.expired(later, include_failed=True)) == 4
    shipper.close()


def test_a_second_database_under_one_box_id_is_refused(tmp_path: Path, pg_url: str) -> None:
    first = _box(tmp_path, "a.db")
    one = Shipper(first.engine, pg_url, "box-1", PgOptions())
    one.enable()
    _work(first, 2)
    assert one.round().error is None
    again = _box(tmp_path, "b.db")  # reinstalled, the same box_id in its config
    two = Shipper(again.engine, pg_url, "box-1", PgOptions())
    two.enable()
    _work(again, 2)
    refused = two.round()
    assert refused.error and "another database file" in refused.error and refused.backlog > 0
    assert Outbox(again.engine).state().last_error == refused.error
    assert _central_rows(pg_url, "SELECT COUNT(*) FROM fleet_jobs") == [(2,)]  # the first box's rows, untouched
    one.close()
    two.close()


def test_a_link_down_for_the_whole_run_ships_everything_once_it_is_back(daemon_factory, capsys) -> None:
    from pgserver import PgServer, bindir

    found = bindir()
    if found is None:
        pytest.skip("no PostgreSQL server binaries")
    fleet = PgServer(found).start()
    fleet.stop(remove=False)  # down before the box ever reaches it
    try:
        d = daemon_factory(ship={"url": fleet.url(), "interval_seconds": 0.5},
                           postgres={"connect_timeout_seconds": 2})
        d.start()
        inbox = d.spool / "inbox" / "translate"
        inbox.mkdir(parents=True, exist_ok=True)
        for n in range(6):
            (inbox / f"doc{n}.txt").write_text(f"Text number {n}.")
        d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 6,
                     what="work going on while the fleet is out of reach")
        d.wait_for_event("ship_failed")
        assert main(["status", "-c", str(d.config_path), "--json"]) == 0
        ship = json.loads(capsys.readouterr().out)["ship"]
        assert ship["backlog_rows"] > 0 and ship["last_error"] and ship["last_ok_at"] is None
        fleet.start()
        d.wait_until(lambda: d.query("SELECT COUNT(*) FROM outbox")[0][0] == 0, what="the backlog shipped")
        assert _central_rows(fleet.url(), "SELECT COUNT(*) FROM fleet_jobs WHERE status = 'done'") == [(6,)]
        assert _central_rows(fleet.url(), "SELECT COUNT(*) FROM fleet_results") == [(6,)]
        box = (d.root / "state" / "box_id").read_text().strip()
        assert _central_rows(fleet.url(), "SELECT box_id FROM fleet_boxes") == [(box,)]
        assert main(["status", "-c", str(d.config_path)]) == 0
        assert "0 changed rows waiting, last shipped" in capsys.readouterr().out
        assert main(["status", "-c", str(d.config_path), "--fleet", "--json"]) == 0
        (only,) = json.loads(capsys.readouterr().out)["boxes"]
        assert only["box_id"] == box and only["jobs"]["done"] == 6 and only["model"] == "echo-test"
        assert d.stop() == 0
    finally:
        fleet.stop()


def test_ship_needs_a_sqlite_queue_and_a_postgresql_url(tmp_path: Path) -> None:
    from edged.config import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("ship: {url: 'sqlite:///x.db'}\n")
    with pytest.raises(ConfigError, match="a PostgreSQL URL"):
        load_config(cfg)
    cfg.write_text("database: postgresql+psycopg://box@db/edged\nship: {url: 'postgresql://fleet/db'}\n")
    with pytest.raises(ConfigError, match="rows are central already"):
        load_config(cfg)
