"""Scheduled upkeep and its helpers: processing windows, reload rules, retention, the disk guard."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edged.reload import changed_keys, live_settings, needs_restart
from edged.spool.space import SpaceGuard
from edged.store import NewFile, ResultData, Settled
from edged.store.db import run
from edged.store.stats import Stats
from edged.timeutil import iso, utcnow
from edged.upkeep import checkpoint, retention
from edged.windows import is_open, next_opening, parse_window
from edged.wiring import open_parts


def _at(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 28, hh, mm).astimezone()


def test_processing_windows() -> None:
    assert is_open([], _at(3))
    night = ["22:00-06:00"]
    assert is_open(night, _at(23)) and is_open(night, _at(5, 59)) and not is_open(night, _at(6))
    assert not is_open(night, _at(12)) and next_opening(night, _at(12)) == _at(22)
    assert is_open(["09:00-10:00", "13:00-24:00"], _at(23, 30)) and next_opening(night, _at(23)) is None
    assert is_open(["00:00-24:00"], _at(0)) and is_open(["00:00-24:00"], _at(23, 59))
    for bad in ("22-06", "25:00-01:00", "10:00-10:00", "10:61-11:00"):
        with pytest.raises(ValueError):
            parse_window(bad)


def test_reload_keeps_restart_only_keys_and_reports_the_rest(make_settings) -> None:
    old = make_settings()
    new = make_settings(model={"threads": 3, "batch_size": 2}, tasks={"translate": {"prompt": "x {text}"}})
    changes = changed_keys(old, new)
    assert set(changes) == {"model.threads", "model.batch_size", "tasks.translate.prompt"}
    assert needs_restart("model.threads") and not needs_restart("model.batch_size")
    assert needs_restart("model.options.name") and not needs_restart("tasks.translate.prompt")
    live = live_settings(old, new)
    assert (live.model.threads, live.model.batch_size, live.tasks.translate.prompt) == (0, 2, "x {text}")


def test_config_rejects_bad_windows_languages_and_listen(make_settings) -> None:
    from edged.config import ConfigError

    with pytest.raises(ConfigError, match="processing_windows"):
        make_settings(schedule={"processing_windows": ["late"]})
    with pytest.raises(ConfigError, match="unknown language 'xx'"):
        make_settings(tasks={"ocr": {"translate_to": "xx"}})
    with pytest.raises(ConfigError, match="metrics.listen"):
        make_settings(metrics={"listen": "localhost"})


def test_retention_deletes_old_done_inputs_and_rows_only(make_settings, db_url: str) -> None:
    s = make_settings(retention={"days": 7}, database=db_url)
    parts = open_parts(s)
    parts.layout.ensure()
    q, stats = parts.queue, Stats(parts.queue.engine)
    for name in ("old.txt", "new.txt", "bad.txt"):
        (parts.layout.inbox / "translate" / name).write_text(name)
    enq = q.enqueue([NewFile("translate", f"translate/{n}", n) for n in ("old.txt", "new.txt", "bad.txt")], "m")
    jobs = {j.source_path: j for j in q.claim(10)}
    q.complete([(jobs["translate/old.txt"], ResultData("o")), (jobs["translate/new.txt"], ResultData("n"))])
    q.fail(jobs["translate/bad.txt"], "broken", permanent=True)
    for e in enq:
        parts.settler.job(e.job_id, "translate")
    with q.engine.begin() as conn:  # the old job finished ten days ago
        run(conn, "UPDATE jobs SET finished_at = :t WHERE source_path IN ('translate/old.txt', 'translate/bad.txt')",
            t=iso(utcnow() - timedelta(days=10)))
    assert retention(stats, parts.files, s.retention) == (1, 1)
    done = parts.layout.root / "done" / "translate"
    assert sorted(p.name for p in done.iterdir()) == ["new.txt"]
    assert (parts.layout.root / "failed" / "translate" / "bad.txt").exists()  # failed kept unless asked
    with q.engine.connect() as conn:
        assert sorted(r[0] for r in conn.exec_driver_sql("SELECT source_path FROM jobs")) == [
            "translate/bad.txt", "translate/new.txt"]
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM results").scalar() == 1
    s.retention.include_failed = True
    assert retention(stats, parts.files, s.retention) == (1, 1)
    assert not list((parts.layout.root / "failed" / "translate").iterdir())  # with its .error.json
    checkpoint(stats)  # runs on a live database without error


def test_space_guard_pauses_once_and_resumes(tmp_path: Path) -> None:
    free = [100]
    resumed = []
    guard = SpaceGuard(tmp_path, 50, on_resume=lambda: resumed.append(1), measure=lambda _p: free[0])
    assert guard.check() and not guard.paused
    free[0] = 10
    assert not guard.check() and guard.paused and not guard.check()
    free[0] = 60
    assert guard.check() and resumed == [1]


def test_retention_keeps_a_parent_while_its_child_is_kept(make_settings, db_url: str) -> None:
    s = make_settings(retention={"days": 1}, database=db_url)
    parts = open_parts(s)
    parts.layout.ensure()
    q, stats = parts.queue, Stats(parts.queue.engine)
    (added,) = q.enqueue([NewFile("ocr", "ocr/a.png", "a")], "m")
    (ocr,) = q.claim(1)
    q.complete([(ocr, ResultData("text", spawn=("translate", {"target_language": "de"})))])
    q.settle_files([Settled(added.file_id, "done", "done/ocr/a.png")])
    (child,) = q.claim(1)
    q.fail(child, "loop", permanent=True)  # a failed child: kept unless include_failed
    with q.engine.begin() as conn:
        run(conn, "UPDATE jobs SET finished_at = :t", t=iso(utcnow() - timedelta(days=3)))
    assert retention(stats, parts.files, s.retention) == (0, 0)
    s.retention.include_failed = True
    assert retention(stats, parts.files, s.retention)[0] >= 1  # the parent, and its child by cascade
    with q.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM jobs").scalar() == 0


def test_a_failed_summary_write_keeps_the_period_for_the_next_one(tmp_path: Path) -> None:
    from edged.throughput import BatchReport, Meter

    class FlakyStats:
        def __init__(self) -> None:
            self.rows, self.fail = [], True

        def queued_by_task(self) -> dict:
            return {}

        def record(self, period) -> None:
            if self.fail:
                raise OSError("disk full")
            self.rows.append(period)

    stats = FlakyStats()
    meter = Meter(stats)  # type: ignore[arg-type]
    meter.add(BatchReport("translate", 2, done=2, output_tokens=10, engine_ms=100.0, waits_ms=[5.0, 7.0]))
    with pytest.raises(OSError):
        meter.flush()
    stats.fail = False
    meter.add(BatchReport("translate", 1, done=1, output_tokens=4, engine_ms=50.0, waits_ms=[3.0]))
    period = meter.flush()
    assert (period.jobs_done, period.output_tokens, period.avg_wait_ms) == (3, 14, 5.0)
    assert meter.flush() is None  # nothing left over, nothing counted twice


def test_a_key_is_live_only_when_the_schema_says_so() -> None:
    from pydantic import BaseModel

    from edged.config import live
    from edged.reload import live_keys

    class Section(BaseModel):
        marked: int = live(1)
        added_later: int = 2  # nobody thought about reloads: it waits for a restart

    class Top(BaseModel):
        section: Section = Section()
        path: str = "x"

    assert live_keys(Top) == {"section.marked"}
