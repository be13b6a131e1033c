"""End to end: the real daemon as a subprocess on a temp spool, with the echo engine double."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import threading
import time
from pathlib import Path

from conftest import DaemonProcess, png_bytes


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _slow_write(path: Path, data: bytes, seconds: float, pieces: int = 10) -> None:
    step = len(data) // pieces + 1
    with open(path, "wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i:i + step])
            fh.flush()
            time.sleep(seconds / pieces)


def test_daemon_end_to_end(daemon_factory, tmp_path: Path) -> None:
    d: DaemonProcess = daemon_factory(watch={"stability_seconds": 1.0})
    inbox = d.spool / "inbox"
    pre = png_bytes((40, 30), "red")
    _put(inbox / "caption" / "pre.png", pre)
    _put(inbox / "ocr" / "sub" / "dir" / "nested.png", png_bytes((20, 20), "blue"))
    _put(inbox / "translate" / "de" / "hello.txt", b"Hello, world.\n")
    _put(inbox / "translate" / "xx-bogus" / "bad-lang.txt", b"Some text\n")
    _put(inbox / "caption" / "ignored.tmp", b"not yet")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes((10, 10), "green"))

    d.start()

    # Dropped while running.
    _put(inbox / "caption" / "live.png", png_bytes((50, 50), "yellow"))
    _put(inbox / "translate" / "live.txt", b"Good morning.\n")
    # A .part file renamed into place.
    part = inbox / "caption" / "renamed.png.part"
    _put(part, png_bytes((60, 20), "white"))
    os.rename(part, inbox / "caption" / "renamed.png")
    # A symlink to a file outside the spool.
    os.symlink(outside, inbox / "ocr" / "link.png")
    # A file written slowly in chunks over 5 s: picked up only once complete.
    slow_data = png_bytes((400, 300), "purple") + b"\0" * 0  # a complete PNG
    slow_path = inbox / "ocr" / "slow.png"
    writer = threading.Thread(target=_slow_write, args=(slow_path, slow_data, 5.0))
    writer.start()

    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM results")[0][0] >= 1, what="a first result")
    # A duplicate of a file already done: recorded, settled, never run again.
    d.wait_until(lambda: (d.spool / "done" / "caption" / "pre.png").exists(), what="pre.png done")
    _put(inbox / "caption" / "again.png", pre)
    writer.join()

    def settled() -> bool:
        pending = d.query("SELECT COUNT(*) FROM files WHERE state = 'pending'")[0][0]
        total = d.query("SELECT COUNT(*) FROM files")[0][0]
        return pending == 0 and total == 10

    d.wait_until(settled, timeout=60, what="all 10 files settled")
    assert d.stop() == 0

    done = {str(p.relative_to(d.spool / "done")) for p in (d.spool / "done").rglob("*") if p.is_file()}
    assert done == {"caption/pre.png", "caption/live.png", "caption/renamed.png", "caption/again.png",
                    "ocr/sub/dir/nested.png", "ocr/slow.png", "translate/de/hello.txt", "translate/live.txt"}
    failed = {str(p.relative_to(d.spool / "failed")) for p in (d.spool / "failed").rglob("*")
              if p.is_file() or p.is_symlink()}
    assert failed == {"ocr/link.png", "ocr/link.png.error.json",
                      "translate/xx-bogus/bad-lang.txt", "translate/xx-bogus/bad-lang.txt.error.json"}
    assert (d.spool / "failed" / "ocr" / "link.png").is_symlink()  # moved, never followed
    err = json.loads((d.spool / "failed" / "ocr" / "link.png.error.json").read_text())
    assert "symbolic link" in err["error"]
    err = json.loads((d.spool / "failed" / "translate" / "xx-bogus" / "bad-lang.txt.error.json").read_text())
    assert "unknown target language 'xx-bogus'" in err["error"] and "pt-BR" in err["error"]
    # Inbox keeps only what it must ignore.
    left = [str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file()]
    assert left == ["caption/ignored.tmp"]

    jobs = {row[0]: row[1:] for row in d.query("SELECT source_path, status, sha256, params FROM jobs")}
    assert jobs["ocr/slow.png"][0] == "done"
    assert jobs["ocr/slow.png"][1] == hashlib.sha256(slow_data).hexdigest()  # the whole file, not a prefix
    assert jobs["translate/de/hello.txt"][2] == '{"target_language":"de"}'
    assert jobs["translate/live.txt"][2] == '{"target_language":"en"}'
    assert jobs["ocr/link.png"][0] == "failed" and jobs["ocr/link.png"][1] is None
    assert "caption/again.png" not in jobs  # a duplicate joins the existing job
    (dup_job, dup_flag), = d.query("SELECT job_id, duplicate FROM files WHERE path = 'caption/again.png'")
    (pre_job,), = d.query("SELECT job_id FROM files WHERE path = 'caption/pre.png'")
    assert dup_job == pre_job and dup_flag == 1
    assert d.query("SELECT COUNT(*) FROM results WHERE job_id = ?", (pre_job,))[0][0] == 1
    assert d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 7
    assert d.query("SELECT COUNT(*) FROM results")[0][0] == 7
    # The duplicate gets the existing result as its own result file.
    out = d.spool / "out" / "caption"
    assert (out / "again.png.caption.txt").read_text() == (out / "pre.png.caption.txt").read_text()
    assert "images=[40x30]" in (out / "pre.png.caption.txt").read_text()
    # Exactly one model run per distinct input: the slow file was never taken half-written.
    done_events = [e for e in d.events() if e.get("event") == "job_done"]
    assert sorted(e["file"] for e in done_events) == sorted(p for p, v in jobs.items() if v[0] == "done")


def test_sigkill_at_random_moments_loses_nothing(daemon_factory) -> None:
    d: DaemonProcess = daemon_factory(
        model={"batch_size": 4, "options": {"name": "echo-test", "delay_s": 0.15}},
        watch={"stability_seconds": 0.3},  # the default max_attempts: kills must charge nothing
    )
    inbox = d.spool / "inbox"
    n_pre, n_live = 120, 40
    for i in range(n_pre):
        _put(inbox / "translate" / f"doc{i:03d}.txt", f"Document number {i}.\n".encode())
    rng = random.Random(int(os.environ.get("EDGED_TEST_SEED", "1234")))
    kills = 0
    dropped = 0
    while kills < 20:
        d.start(wait_ready=False)
        time.sleep(rng.uniform(0.4, 2.0))
        # Files keep arriving across crashes, some while the daemon is down.
        for _ in range(2):
            if dropped < n_live:
                _put(inbox / "translate" / f"live{dropped:03d}.txt", f"Live file {dropped}.\n".encode())
                dropped += 1
        assert d.kill(signal.SIGKILL) == -signal.SIGKILL
        kills += 1
    while dropped < n_live:
        _put(inbox / "translate" / f"live{dropped:03d}.txt", f"Live file {dropped}.\n".encode())
        dropped += 1
    total = n_pre + n_live
    d.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM files WHERE state = 'done'")[0][0] == total,
                 timeout=120, what=f"{total} files done")
    assert d.stop() == 0

    assert d.query("SELECT COUNT(*) FROM jobs")[0][0] == total
    assert d.query("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", total)]
    assert d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results")[0] == (total, total)
    assert d.query("SELECT COUNT(*) FROM files WHERE state != 'done'")[0][0] == 0
    assert d.query("SELECT COUNT(*), COUNT(DISTINCT path) FROM files")[0] == (total, total)
    done = sorted(p.name for p in (d.spool / "done" / "translate").iterdir())
    assert len(done) == total and not any(".1." in name for name in done)
    assert not [p for p in inbox.rglob("*") if p.is_file()]
    outs = list((d.spool / "out" / "translate").iterdir())
    assert len(outs) == total
    # Some kills must have landed mid-work for this test to mean anything.
    recovered = [e for e in d.events() if e.get("event") == "recovered_jobs"]
    assert recovered, "no kill interrupted a running batch"
