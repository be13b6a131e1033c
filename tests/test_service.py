"""Running as a service: drain on SIGTERM, SIGHUP reload, processing windows, low disk,
throughput rows, status and metrics. The real daemon as a subprocess with the echo double."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

import yaml

from conftest import DaemonProcess


def _drop(d: DaemonProcess, n: int, prefix: str = "f", lang: str = "de") -> list[Path]:
    paths = []
    for i in range(n):
        p = d.spool / "inbox" / "translate" / lang / f"{prefix}{i}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"Text number {i} of {prefix}.\n")
        paths.append(p)
    return paths


def _count(d: DaemonProcess, sql: str) -> int:
    return d.query(sql)[0][0]


def _wait_running(d: DaemonProcess, n: int) -> None:
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'running'") == n,
                 timeout=30, what=f"{n} running jobs")


def test_sigterm_lets_the_batch_in_flight_finish_within_the_grace(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"delay_s": 2.0}}, queue={"drain_grace_seconds": 30})
    _drop(d, 3)
    d.start()
    _wait_running(d, 3)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0
    rows = d.query("SELECT status, attempts FROM jobs")
    assert rows == [("done", 1)] * 3
    assert _count(d, "SELECT COUNT(*) FROM results") == 3
    assert not list((d.spool / "inbox" / "translate" / "de").iterdir())
    assert d.last_event("stopped")


def test_a_batch_past_the_grace_is_handed_back_and_runs_once_after_restart(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"delay_s": 60.0}}, queue={"drain_grace_seconds": 1})
    files = _drop(d, 3)
    d.start()
    _wait_running(d, 3)
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=30) == 0
    assert time.monotonic() - t0 < 15  # not the 60 s the engine call wanted
    # Handed back untouched: queued, the attempt not counted, the files still in the inbox.
    assert d.query("SELECT status, attempts FROM jobs") == [("queued", 0)] * 3
    assert all(p.exists() for p in files)
    assert d.last_event("drain_timeout") and d.last_event("released_jobs")["jobs"] == 3
    d._log.close()

    d.config["model"]["options"]["delay_s"] = 0
    d.config_path.write_text(__import__("yaml").safe_dump(d.config))
    d.start()
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'done'") == 3, what="3 done")
    assert d.stop() == 0
    assert _count(d, "SELECT COUNT(*) FROM results") == 3  # no duplicate
    assert d.query("SELECT attempts FROM jobs") == [(1,)] * 3


def test_a_second_sigterm_stops_at_once_without_losing_the_batch(daemon_factory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"options": {"delay_s": 60.0, "calls_file": str(calls)}},
                       queue={"drain_grace_seconds": 600})
    _drop(d, 2)
    d.start()
    _wait_running(d, 2)
    d.wait_until(lambda: calls.exists() and "start" in calls.read_text(), what="the batch in the model")
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for_event("stopping")
    # Draining: the daemon is up and the model call it was in has not ended.
    assert d.proc.poll() is None and "end" not in calls.read_text()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=15) == 0
    assert d.query("SELECT status, attempts FROM jobs") == [("queued", 0)] * 2
    assert d.last_event("stopped_at_once")


def test_sighup_reload_uses_the_new_prompt_for_the_next_job(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"mode": "echo"}},
                       tasks={"translate": {"prompt": "FIRST {language}: {text}"}})
    d.start()
    _drop(d, 1, prefix="a")
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM results") == 1, what="first result")
    d.reconfigure(tasks={"translate": {"prompt": "SECOND {language}: {text}"}}, log={"level": "debug"},
                  model={"threads": 1})
    reloaded = d.last_event("config_reloaded")
    assert reloaded["changed"]["tasks.translate.prompt"]["new"] == "SECOND {language}: {text}"
    assert "log.level" in reloaded["changed"]
    assert reloaded["restart_needed"] == ["model.threads"]
    _drop(d, 1, prefix="b")
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM results") == 2, what="second result")
    outputs = [r[0] for r in d.query("SELECT output FROM results ORDER BY id")]
    assert outputs == ["FIRST German: Text number 0 of a.\n", "SECOND German: Text number 0 of b.\n"]
    # A broken file is refused and the running config stays.
    d.config_path.write_text("model: [not, a, mapping\n")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for_event("reload_failed")
    assert d.stop() == 0


def _edged(d: DaemonProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args, "-c", str(d.config_path)], capture_output=True,
                          text=True, env=d.env(), timeout=120)


def test_edged_reload_returns_once_the_daemon_has_reloaded_and_fails_on_a_refused_file(daemon_factory) -> None:
    """The unit's ExecReload: `systemctl reload` must wait for the reload and report a refusal."""
    d = daemon_factory(model={"options": {"mode": "echo"}})
    d.start()
    d.config["model"]["batch_size"] = 2
    d.config_path.write_text(yaml.safe_dump(d.config))
    res = _edged(d, "reload")
    assert res.returncode == 0, res.stderr
    assert "changed model.batch_size" in res.stdout
    assert d.last_event("config_reloaded")["changed"]["model.batch_size"]["new"] == 2  # done when it returned
    d.config["model"]["batch_size"] = -1
    d.config_path.write_text(yaml.safe_dump(d.config))
    res = _edged(d, "reload", "--pid", str(d.proc.pid))
    assert res.returncode == 3 and "reload refused" in res.stderr and "model.batch_size" in res.stderr
    # A file that moves the state (a key that waits for a restart): the daemon is told, and the
    # command does not wait on a database the daemon does not use.
    d.config["model"]["batch_size"] = 2
    d.config["state_dir"] = str(d.root / "state-elsewhere")
    d.config_path.write_text(yaml.safe_dump(d.config))
    before = len([e for e in d.events() if e.get("event") == "config_reloaded"])
    res = _edged(d, "reload", "--pid", str(d.proc.pid))
    assert res.returncode == 0 and "not the one it runs on" in res.stdout, res.stdout + res.stderr
    d.wait_for_event("config_reloaded", count=before + 1)
    assert "state_dir" in d.last_event("config_reloaded")["restart_needed"]
    assert d.stop() == 0


def _window_away_from_now() -> str:
    start = datetime.now() + timedelta(hours=3)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_outside_the_processing_window_intake_goes_on_and_the_model_waits(daemon_factory) -> None:
    d = daemon_factory(schedule={"processing_windows": [_window_away_from_now()], "summary_seconds": 0.5})
    d.start()
    _drop(d, 3)
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'") == 3, what="3 queued")
    # A whole summary period went by with the three queued and nothing done.
    d.wait_until(lambda: any(e.get("event") == "throughput" and e["queued"] == 3 for e in d.events()),
                 what="a period with 3 queued")
    assert _count(d, "SELECT COUNT(*) FROM jobs WHERE status != 'queued'") == 0
    assert not any(e.get("event") == "batch" for e in d.events())
    state = dict(d.query("SELECT key, value FROM runtime"))
    assert json.loads(state["processing_open"]) is False and json.loads(state["next_opening"])
    d.reconfigure(schedule={"processing_windows": []})
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'done'") == 3, what="3 done")
    assert d.last_event("processing_window")["open"] is True
    assert d.stop() == 0


def test_low_disk_pauses_intake_and_it_resumes_by_itself(daemon_factory) -> None:
    d = daemon_factory(spool={"min_free_mb": 10**12}, log={"level": "debug"})
    d.start()
    paused = d.last_event("intake_paused")
    assert paused["min_free_mb"] == 10**12 and paused["free_mb"] < 10**12
    files = _drop(d, 2)
    d.wait_until(lambda: sum(e.get("files", 0) for e in d.events() if e.get("event") == "intake_declined") >= 2,
                 what="the watcher offered both and intake declined them")
    assert _count(d, "SELECT COUNT(*) FROM files") == 0 and all(p.exists() for p in files)
    status = subprocess.run([sys.executable, "-m", "edged", "status", "--json", "-c", str(d.config_path)],
                            capture_output=True, text=True, env=d.env(), check=True)
    assert json.loads(status.stdout)["daemon"]["intake_paused"] is True
    d.reconfigure(spool={"min_free_mb": 0})
    d.wait_for_event("intake_resumed")
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'done'") == 2, what="2 done")
    assert _count(d, "SELECT COUNT(*) FROM jobs WHERE status = 'failed'") == 0
    assert sum(1 for e in d.events() if e.get("event") == "intake_paused") == 1  # logged once
    assert d.stop() == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_throughput_rows_logs_status_and_metrics_agree_with_the_jobs_done(daemon_factory) -> None:
    port = _free_port()
    d = daemon_factory(model={"batch_size": 3, "options": {"mode": "echo", "delay_s": 0.2}},
                       schedule={"summary_seconds": 1}, metrics={"listen": f"127.0.0.1:{port}"})
    _drop(d, 7)
    bad = d.spool / "inbox" / "translate" / "bad.txt"
    bad.write_bytes(b"\x00\x01binary")
    d.start()
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')") == 8,
                 what="8 finished")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'edged_jobs{state="done",task="translate"} 7.0' in metrics
    assert 'edged_model_info{model="echo-test",provider="cpu"} 1.0' in metrics
    status = subprocess.run([sys.executable, "-m", "edged", "status", "-c", str(d.config_path)],
                            capture_output=True, text=True, env=d.env(), check=True).stdout
    assert "echo-test on cpu" in status and "MB free" in status
    assert d.stop() == 0

    done_tokens = d.query("SELECT COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM results")[0]
    rows = d.query("SELECT SUM(jobs_done), SUM(jobs_failed), SUM(prompt_tokens), SUM(output_tokens), SUM(batches),"
                   " MIN(provider), MIN(model) FROM throughput")[0]
    assert rows[:4] == (7, 1, *done_tokens)
    assert rows[5:] == ("cpu", "echo-test")
    batches = [e for e in d.events() if e.get("event") == "batch"]
    assert rows[4] == len(batches) >= 3  # batch_size 3: at least three batches for eight jobs
    assert sum(b["done"] for b in batches) == 7 and sum(b["output_tokens"] for b in batches) == done_tokens[1]
    assert all(b["engine_ms"] >= 150 and b["provider"] == "cpu" for b in batches if b["requests"])
    summaries = [e for e in d.events() if e.get("event") == "throughput"]
    assert sum(s["jobs_done"] for s in summaries) == 7
    assert any(s["avg_wait_ms"] is not None and s["avg_wait_ms"] > 0 for s in summaries)



def test_edged_reload_waits_for_the_next_reload_by_count_not_by_clock(monkeypatch, make_settings, capsys) -> None:
    """An earlier outcome stamped in the future (the clock stepped back since) is not this reload's."""
    import time as _time

    from edged.commands import reload as cmd
    from edged.exitcodes import ExitCode

    earlier = {"seq": 3, "pid": 4242, "at": _time.time() + 3600, "ok": False, "error": "an old refusal"}
    answers = iter([{"pid": 4242, "reload": earlier}] * 3 +
                   [{"pid": 4242, "reload": {**earlier, "seq": 4, "ok": True, "changed": ["log.level"]}}])
    monkeypatch.setattr(cmd, "_runtime", lambda _s: next(answers))
    monkeypatch.setattr(cmd.os, "kill", lambda pid, sig: None)
    monkeypatch.setattr(cmd.time, "sleep", lambda _s: None)
    assert cmd.reload(make_settings(), 4242, timeout=30) == ExitCode.OK
    assert "changed log.level" in capsys.readouterr().out
