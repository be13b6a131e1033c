"""After a job ends: JSON sidecars beside result files, and the post-job hook (the real daemon,
the echo double as its engine)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from conftest import DaemonProcess

RECORD = ("import json, os, sys; d = json.load(sys.stdin); "
          "open(os.path.join(sys.argv[1], os.environ['EDGED_JOB_ID'] + '.' + os.environ['EDGED_JOB_STATUS']), 'w')"
          ".write(json.dumps(d))")


def _drop(d: DaemonProcess, rel: str, data: bytes) -> Path:
    p = d.spool / "inbox" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _settled(d: DaemonProcess, n: int) -> None:
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM files WHERE state != 'pending'")[0][0] == n,
                 timeout=60, what=f"{n} files settled")


def test_a_sidecar_beside_each_result_file(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"mode": "echo"}}, spool={"write_result_json": True})
    _drop(d, "translate/de/a.txt", b"Hello there.\n")
    _drop(d, "caption/not-a-picture.jpg", b"plain text, not a JPEG")
    d.start()
    _settled(d, 2)
    job_id, tokens = d.query("SELECT j.id, r.output_tokens FROM jobs j JOIN results r ON r.job_id = j.id")[0]
    side = json.loads((d.spool / "out" / "translate" / "de" / "a.txt.translate.json").read_text())
    assert side["job_id"] == job_id and side["task"] == "translate" and side["status"] == "done"
    assert side["params"] == {"target_language": "de"} and side["model"] == "echo-test"
    assert side["result_file"] == "out/translate/de/a.txt.translate.txt" and side["output_tokens"] == tokens
    assert side["source"] == "translate/de/a.txt" and side["finished_at"].endswith("Z")
    assert not list((d.spool / "out").rglob("not-a-picture*"))  # a failed job has no result, no sidecar
    assert d.stop() == 0


def test_the_hook_gets_every_ended_job_and_its_failures_change_nothing(daemon_factory, tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    seen.mkdir()
    d = daemon_factory(model={"options": {"mode": "echo"}},
                       hooks={"post_job": [sys.executable, "-c", RECORD, str(seen)], "timeout_seconds": 20})
    _drop(d, "translate/de/a.txt", b"Hello there.\n")
    _drop(d, "caption/bad.png", b"not a picture")
    d.start()
    _settled(d, 2)
    d.wait_until(lambda: len(list(seen.iterdir())) == 2, timeout=30, what="two hook runs")
    got = {p.suffix: json.loads(p.read_text()) for p in seen.iterdir()}
    assert got[".done"]["result"]["output"] and got[".done"]["files"][0]["moved_to"].startswith("done/")
    assert got[".failed"]["status"] == "failed" and got[".failed"]["error"]
    assert d.stop() == 0


def test_the_hook_runs_once_per_job_end_though_its_move_is_retried(daemon_factory, tmp_path: Path) -> None:
    """A file whose move fails (a file where done/translate should be) is retried by upkeep; the
    hook and sidecar wait for the settle and run once, not at every retry nor again at restart."""
    runs = tmp_path / "runs.txt"
    append = "import os, sys; sys.stdin.read(); open(sys.argv[1], 'a').write(os.environ['EDGED_JOB_ID'] + '\\n')"
    d = daemon_factory(model={"options": {"mode": "echo"}}, queue={"recover_seconds": 0.5},
                       hooks={"post_job": [sys.executable, "-c", append, str(runs)]})
    _drop(d, "translate/a.txt", b"Hello there.\n")
    blocker = d.spool / "done" / "translate"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    d.start()
    d.wait_for_event("settle_failed", timeout=30)
    time.sleep(1.5)
    assert not runs.exists()  # the job is done, its file not yet settled: no hook yet
    blocker.unlink()
    _settled(d, 1)
    d.wait_until(runs.exists, timeout=30, what="the hook")
    time.sleep(2)  # further upkeep sweeps
    assert d.stop() == 0
    d.start()  # the start-up reconcile finds nothing left to do: no second run
    time.sleep(2)
    assert d.stop() == 0
    assert runs.read_text().split() == [str(d.query("SELECT id FROM jobs")[0][0])]


def test_a_hanging_hook_is_killed_with_what_it_started(daemon_factory, tmp_path: Path) -> None:
    marker = f"edged-hook-test-{tmp_path.name}"
    hang = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)',"
            f" {marker!r}]); sys.stdin.read(); time.sleep(120)")
    d = daemon_factory(model={"options": {"mode": "echo"}},
                       hooks={"post_job": [sys.executable, "-c", hang], "timeout_seconds": 1, "run_on": "done"})
    for i in range(3):
        _drop(d, f"translate/de/t{i}.txt", f"Text {i}.\n".encode())
    d.start()
    _settled(d, 3)
    d.wait_for_event("hook_timeout", timeout=30, count=3)
    assert d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 3
    assert d.stop() == 0
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    assert left.stdout == "", "the hook's own child outlived the timeout"


def test_a_hook_whose_child_escapes_the_group_does_not_hang_the_hooks(daemon_factory, tmp_path: Path) -> None:
    """A grandchild in a session of its own keeps the output pipe open past the kill: the hook
    thread stops reading it and goes on to the next job."""
    marker = f"edged-hook-setsid-{tmp_path.name}"
    escape = ("import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',"
              f" {marker!r}], start_new_session=True); sys.stdin.read(); time.sleep(60)")
    d = daemon_factory(model={"options": {"mode": "echo"}},
                       hooks={"post_job": [sys.executable, "-c", escape], "timeout_seconds": 1})
    for i in range(2):
        _drop(d, f"translate/de/s{i}.txt", f"Text {i}.\n".encode())
    d.start()
    _settled(d, 2)
    d.wait_for_event("hook_timeout", timeout=40, count=2)  # the second ran: the first did not hang the thread
    assert d.stop() == 0
    subprocess.run(["pkill", "-f", marker], capture_output=True)


def test_a_failing_hook_is_logged_and_the_job_stays_done(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"mode": "echo"}},
                       hooks={"post_job": [sys.executable, "-c", "import sys; print('no'); sys.exit(3)"]})
    _drop(d, "translate/de/x.txt", b"One more.\n")
    d.start()
    d.wait_for_event("hook_failed", timeout=30)
    failed = d.last_event("hook_failed")
    assert failed["exit_code"] == 3 and failed["output"] == "no"
    assert d.query("SELECT status FROM jobs") == [("done",)]
    assert d.stop() == 0
