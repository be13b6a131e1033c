"""`edged status`: its two "last hour" figures, each with its window, counted alike from the jobs table."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from edged.cli import main
from edged.store import open_queue
from edged.store.db import run
from edged.store.queries import finished_between, throughput_since
from edged.store.stats import Period, Stats
from edged.timeutil import iso, utcnow
from test_show import _setup


@pytest.fixture(autouse=True)
def _utc(monkeypatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def _period(start, minutes: float, done: int) -> Period:
    return Period(start=start, end=start + timedelta(minutes=minutes), jobs_done=done, jobs_failed=0, jobs_retried=0,
                  batches=done, prompt_tokens=0, output_tokens=10 * done, engine_ms=1000.0 * done, avg_wait_ms=None,
                  queued_by_task={}, model="m", provider="cpu")


def _finish_jobs_at(engine, times: list[str]) -> None:
    with engine.begin() as conn:
        for n, t in enumerate(times):
            run(conn, "INSERT INTO jobs (task, source_path, sha256, status, attempts, created_at, finished_at,"
                      " next_run_at) VALUES ('caption', :path, :sha, 'done', 1, :t, :t, :t)",
                path=f"caption/{n}", sha=f"s{n}", t=t)


def test_the_throughput_window_leaves_out_a_period_begun_before_the_hour(db_url: str) -> None:
    q = open_queue(db_url)
    now = utcnow()
    stats = Stats(q.engine)
    early = _period(now - timedelta(minutes=61), 2, done=5)  # ends inside the hour, began before it
    inside = _period(now - timedelta(minutes=30), 1, done=2)
    stats.record(early)
    stats.record(inside)
    # The jobs table, as the worker left it: 5 done in the early period, 2 in the later one.
    _finish_jobs_at(q.engine, [iso(early.start + timedelta(seconds=10 + n)) for n in range(5)]
                    + [iso(inside.start + timedelta(seconds=10 + n)) for n in range(2)])
    t = throughput_since(q.engine, hours=1, now=now)
    assert t["periods"] == 1 and t["jobs_done"] == 2  # before: 7, a period's worth from before the hour
    assert (t["window_start"], t["window_end"]) == (iso(inside.start), iso(inside.end))
    # Over the same window the jobs table says the same.
    assert finished_between(q.engine, t["window_start"], t["window_end"]) == {"done": 2, "failed": 0}


def test_status_names_the_window_of_each_last_hour_figure(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path)
    q = open_queue(f"sqlite:///{tmp_path / 'state' / 'edged.db'}")
    now = utcnow()
    period = _period(now - timedelta(minutes=20), 1, done=3)
    Stats(q.engine).record(period)
    _finish_jobs_at(q.engine, [iso(period.start + timedelta(seconds=5))] * 1
                    + [iso(now - timedelta(minutes=2))])  # one in the period, one since the last row
    q.engine.dispose()
    assert main(["status", "-c", cfg]) == 0
    out = capsys.readouterr().out
    hour = next(line for line in out.splitlines() if line.startswith("last hour"))
    measured = next(line for line in out.splitlines() if line.startswith("measured"))
    assert "to now, from the jobs) 2 done" in hour
    start, end = period.start.strftime("%H:%M:%S"), period.end.strftime("%H:%M:%S")
    # The jobs table over the rows' window: 1 (before: the row's own 3, beside the line above's 2).
    assert f"({start} to {end} +00:00, 1 summary periods) 1 done, 0 failed" in measured
    assert main(["status", "-c", cfg, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    t = info["throughput_last_hour"]
    assert t["window_start"] == iso(period.start) and t["window_end"] == iso(period.end)
    assert t["jobs_table"] == {"done": 1, "failed": 0} and t["jobs_done"] == 3  # --json keeps both
    assert info["last_hour"]["since"].endswith("Z") and info["last_hour"]["done"] == 2


def test_a_real_daemon_run_shows_the_same_counts_on_both_lines(daemon_factory, capsys) -> None:
    """Jobs a real daemon ran, its own summary rows: every job finished inside the rows' window, so
    both lines must say the same, counting a file refused at intake (a failed job) alike."""
    d = daemon_factory(schedule={"summary_seconds": 0.5})
    d.start()
    inbox = d.spool / "inbox" / "translate"
    inbox.mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (inbox / f"doc{n}.txt").write_text(f"Text number {n}.")
    (inbox / "empty.txt").write_bytes(b"")  # the worker fails it: in the rows too
    (inbox / "link.txt").symlink_to(inbox / "doc0.txt")  # refused at intake: a failed job the worker never saw
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')")[0][0] == 5,
                 what="5 jobs finished")
    last = d.query("SELECT MAX(finished_at) FROM jobs")[0][0]
    d.wait_until(lambda: (d.query("SELECT MAX(period_end) FROM throughput")[0][0] or "") > last,
                 what="a summary row after the last job")
    assert d.stop() == 0
    assert main(["status", "-c", str(d.config_path)]) == 0
    out = capsys.readouterr().out
    hour = next(line for line in out.splitlines() if line.startswith("last hour"))
    measured = next(line for line in out.splitlines() if line.startswith("measured"))
    assert "from the jobs) 3 done, 2 failed," in hour
    assert "summary periods) 3 done, 2 failed," in measured, measured  # before: the rows' 3 done, 1 failed
    assert main(["status", "-c", str(d.config_path), "--json"]) == 0
    t = json.loads(capsys.readouterr().out)["throughput_last_hour"]
    assert t["jobs_table"] == {"done": 3, "failed": 2}  # before: 1, the refused file left out
    assert (t["jobs_done"], t["jobs_failed"]) == (3, 1)  # the rows: the worker's own count
