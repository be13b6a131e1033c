"""A full disk, for real: the state folder and the spool each on a small tmpfs (needs root).

What must hold: nothing is lost, no job is failed or charged for it, intake and the model
pause, the daemon never exits (not even when restarted while the disk is still full), and
both resume by themselves once space is back.
"""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProcess

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")


@pytest.fixture
def tmpfs():
    mounted: list[Path] = []

    def mount(size_kb: int) -> Path:
        where = Path(tempfile.mkdtemp(prefix="edged-tmpfs-"))
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(where)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        os.rmdir(where)


def _fill(folder: Path) -> Path:
    """Write until the filesystem has no block left."""
    filler = folder / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        chunk = b"\0" * 65536
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                fh.write(b"\0" * 512)
        except OSError:
            pass
    return filler


def _drop(d: DaemonProcess, names: range, prefix: str) -> None:
    for i in names:
        p = d.spool / "inbox" / "translate" / f"{prefix}{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"Document {prefix} {i}.\n")


def _events(d: DaemonProcess, name: str) -> int:
    return sum(1 for e in d.events() if e.get("event") == name)


def _all_done(d: DaemonProcess, n: int) -> bool:
    return (d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == n
            and d.query("SELECT COUNT(*) FROM files WHERE state = 'done'")[0][0] == n)


def _working(daemon_factory, files: int, **places: Any) -> DaemonProcess:
    """A daemon with a slow model, started on `files` inputs and past its first results."""
    d: DaemonProcess = daemon_factory(**places, model={"batch_size": 2, "options": {"delay_s": 0.3}},
                                      queue={"recover_seconds": 1})
    _drop(d, range(files), "a")
    d.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM results")[0][0] >= 2, what="some work done")
    return d


def test_a_full_state_folder_pauses_everything_and_loses_nothing(daemon_factory, tmpfs) -> None:
    state = tmpfs(1024)
    d = _working(daemon_factory, 10, state_dir=str(state / "state"), spool={"min_free_mb": 0})
    filler = _fill(state)
    _drop(d, range(10), "b")
    d.wait_until(lambda: _events(d, "store_unavailable") + _events(d, "intake_paused") >= 1, timeout=30,
                 what="the full disk noticed")
    # A crash while the disk is full, and a restart into the full disk: it waits, it does not exit.
    assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    before = _events(d, "store_unavailable")
    d.start(wait_ready=False)
    d.wait_until(lambda: _events(d, "store_unavailable") > before or _events(d, "ready") >= 2, timeout=30,
                 what="the restart meeting the full disk")
    assert d.proc.poll() is None, "the daemon exited on a full disk"
    filler.unlink()
    d.wait_until(lambda: _all_done(d, 20), timeout=90, what="all 20 done once space is back")
    assert d.query("SELECT COUNT(*) FROM jobs WHERE status = 'failed'")[0][0] == 0
    # No attempt was charged for the disk: each job ran once to completion.
    assert d.query("SELECT MAX(attempts) FROM jobs")[0][0] == 1
    assert d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results")[0] == (20, 20)
    assert sqlite3.connect(d.db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The worker backed off while the disk was full (a probe that passes where a commit cannot
    # once made this a busy loop of thousands of lines, each growing the WAL).
    assert _events(d, "store_unavailable") < 40
    assert d.stop() == 0


def test_a_full_spool_pauses_intake_and_settles_later(daemon_factory, tmpfs) -> None:
    spool = tmpfs(2048)
    d = _working(daemon_factory, 12, spool_dir=str(spool / "spool"), spool={"min_free_mb": 1})
    filler = _fill(spool / "spool")
    d.wait_until(lambda: _events(d, "intake_paused") >= 1, timeout=30, what="intake paused")
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0] == 0,
                 timeout=60, what="the model went on (the database has room)")
    assert d.proc.poll() is None
    filler.unlink()
    d.wait_until(lambda: _events(d, "intake_resumed") >= 1, timeout=30, what="intake resumed")
    _drop(d, range(3), "b")
    d.wait_until(lambda: _all_done(d, 15), timeout=90, what="everything settled once space is back")
    outs = list((spool / "spool" / "out" / "translate").iterdir())
    assert len(outs) == 15 and all(p.stat().st_size > 0 for p in outs)
    assert d.query("SELECT COUNT(*) FROM jobs WHERE status = 'failed'")[0][0] == 0
    assert d.stop() == 0
