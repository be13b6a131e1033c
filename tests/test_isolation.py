"""One file's trouble stays that file's: each defect of issue #10 run against the real daemon.

Every test here drives `edged run` as a subprocess on a temp spool (the echo engine double)
and checks what an operator would: the daemon stays up, each file ends in done/ or failed/
exactly once with a reason, and nothing outside the spool is read, moved or written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from conftest import REPO, DaemonProcess, base_config

CANARY = "CANARY-7f3a-outside-the-spool"


def _put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _count(d: DaemonProcess, sql: str, args: tuple = ()) -> int:
    return d.query(sql, args)[0][0]


def _settled(d: DaemonProcess, n: int, timeout: float = 60) -> None:
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM files WHERE state != 'pending'") >= n
                 and _count(d, "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')") == 0,
                 timeout=timeout, what=f"{n} files settled")


def _calls(path: Path) -> list[str]:
    return path.read_text().split("\n") if path.exists() else []


def _wait_in_model(d: DaemonProcess, calls: Path, starts: int = 1) -> None:
    d.wait_until(lambda: sum(1 for line in _calls(calls) if line.startswith("start")) >= starts,
                 timeout=30, what="a batch in the model")


def _all_results(d: DaemonProcess) -> str:
    return "\n".join(r[0] for r in d.query("SELECT output FROM results"))


# -- 1. crash loops from one file ---------------------------------------------------------

def test_a_name_long_enough_to_overflow_the_result_file_name_is_processed(daemon_factory) -> None:
    d = daemon_factory(model={"options": {"mode": "echo"}})
    name = "字" * 76 + ".txt"  # 232 bytes: '<name>.translate.txt' and its temp name pass 255
    assert len(name.encode()) >= 228
    _put(d.spool / "inbox" / "translate" / name, b"A long name.\n")
    _put(d.spool / "inbox" / "translate" / ("x" * 251 + ".txt"), b"The longest name a file may have.\n")
    _put(d.spool / "inbox" / "translate" / "short.txt", b"Short.\n")
    d.start()
    _settled(d, 3)
    assert d.proc.poll() is None, "the daemon died"
    assert d.query("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 3)]
    done = {p.name for p in (d.spool / "done" / "translate").iterdir()}
    assert name in done and "short.txt" in done
    outs = list((d.spool / "out" / "translate").iterdir())
    assert len(outs) == 3 and all(len(p.name.encode()) <= 255 for p in outs)
    recorded = {r[0] for r in d.query("SELECT result_file FROM files")}
    assert {f"out/translate/{p.name}" for p in outs} == recorded  # where each result went is on record
    assert d.stop() == 0


# -- 2. intake jammed by one name -----------------------------------------------------------

def test_a_name_that_is_not_utf8_does_not_jam_intake(daemon_factory) -> None:
    d = daemon_factory()
    inbox = os.fsencode(d.spool / "inbox" / "translate")
    os.makedirs(inbox, exist_ok=True)
    with open(os.path.join(inbox, b"caf\xe9-latin1.txt"), "wb") as fh:
        fh.write(b"Named by an old FTP client.\n")
    for i in range(5):
        _put(d.spool / "inbox" / "translate" / f"ok{i}.txt", f"File {i}.\n".encode())
    d.start()
    _settled(d, 6)
    assert d.query("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 6)]
    (path, moved, source), = d.query("SELECT f.path, f.moved_to, j.source_path FROM files f JOIN jobs j"
                                     " ON j.id = f.job_id WHERE typeof(f.path) = 'blob'")
    assert path == b"translate/caf\xe9-latin1.txt" and moved == b"done/translate/caf\xe9-latin1.txt"
    assert source == "translate/caf\\xe9-latin1.txt"  # readable, for people
    assert os.path.exists(os.path.join(os.fsencode(d.spool / "done" / "translate"), b"caf\xe9-latin1.txt"))
    assert not any(e.get("event") == "intake_error" for e in d.events())
    assert d.stop() == 0


# -- 3. reads outside the spool -----------------------------------------------------------

def test_a_folder_replaced_by_a_link_after_intake_is_not_followed(daemon_factory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"batch_size": 1, "options": {"mode": "echo", "delay_s": 1.0,
                                                            "calls_file": str(calls)}})
    outside = tmp_path / "outside"
    _put(outside / "doc.txt", CANARY.encode())
    inbox = d.spool / "inbox" / "translate"
    _put(inbox / "first.txt", b"Keeps the model busy.\n")
    _put(inbox / "de" / "doc.txt", b"The real document.\n")
    d.start()
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM files") == 2, what="both recorded")
    _wait_in_model(d, calls)
    os.rename(inbox / "de", inbox / "de.moved")
    os.symlink(outside, inbox / "de")
    _settled(d, 2)
    assert CANARY not in _all_results(d) and CANARY not in d.log_path.read_text()
    assert (outside / "doc.txt").read_text() == CANARY  # never moved
    assert d.proc.poll() is None
    assert d.stop() == 0


# -- 4. group-writable folders ------------------------------------------------------------

def test_daemon_folders_and_files_are_never_group_writable(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(model={"options": {"fail_on": "FAIL"}})
    _put(d.spool / "inbox" / "translate" / "de" / "deep" / "ok.txt", b"Fine.\n")
    _put(d.spool / "inbox" / "translate" / "bad.txt", b"FAIL here.\n")
    d.start(umask=0o007)
    _settled(d, 2)
    assert d.stop() == 0
    made = [p for area in ("done", "failed", "out") for p in (d.spool / area).rglob("*")] + \
           [d.spool / a for a in ("done", "failed", "out")]
    for p in made:
        mode = p.stat().st_mode
        assert not mode & 0o022, f"{p} is {oct(mode)} under UMask=0007"
        written = p.is_file() and ("out" in p.relative_to(d.spool).parts[:1] or p.name.endswith(".error.json"))
        if written:  # what the daemon writes (inputs keep the mode their producer gave them)
            assert mode & 0o777 == 0o640, f"{p} is {oct(mode)}"


def test_retention_deletes_only_the_recorded_file_never_through_a_link(daemon_factory, tmp_path: Path) -> None:
    from edged.config import load_config
    from edged.spool import SpoolFiles
    from edged.wiring import build_layout

    d = daemon_factory()
    _put(d.spool / "inbox" / "translate" / "de" / "a.txt", b"Old.\n")
    d.start()
    _settled(d, 1)
    assert d.stop() == 0
    settings = load_config(d.config_path)
    files = SpoolFiles(build_layout(settings))
    (moved, inode), = d.query("SELECT moved_to, moved_inode FROM files")
    # A producer (or an old group-writable folder) swaps done/translate/de for a link to the
    # state folder, where a file of that name is the live database's neighbour.
    state = Path(d.config["state_dir"])
    victim = _put(state / "a.txt", b"precious")
    folder = d.spool / "done" / "translate" / "de"
    os.rename(folder, folder.with_name("de.real"))
    os.symlink(state, folder)
    assert files.discard(moved, inode) is False
    assert victim.read_bytes() == b"precious" and (state / "edged.db").exists()
    # The same name with another inode is not the recorded file either.
    os.unlink(folder)
    os.rename(folder.with_name("de.real"), folder)
    assert files.discard(moved, inode + 1) is False and files.discard(moved, inode) is True


# -- 5. a replaced input is lost ------------------------------------------------------------

def test_a_file_replaced_while_its_job_runs_gets_its_own_job_and_result(daemon_factory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"batch_size": 1, "options": {"mode": "echo", "delay_s": 1.5,
                                                            "calls_file": str(calls)}})
    inbox = d.spool / "inbox" / "translate"
    _put(inbox / "report.txt", b"First version.\n")
    d.start()
    _wait_in_model(d, calls)
    _put(inbox / ".report.txt.part", b"Second version.\n")
    os.rename(inbox / ".report.txt.part", inbox / "report.txt")  # what the README tells producers to do
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM results") == 2
                 and _count(d, "SELECT COUNT(*) FROM files WHERE state = 'pending'") == 0,
                 what="both versions done")
    outputs = _all_results(d)
    assert "First version." in outputs and "Second version." in outputs
    assert (d.spool / "done" / "translate" / "report.txt").read_text() == "Second version.\n"
    assert not (inbox / "report.txt").exists()
    states = sorted(r[0] for r in d.query("SELECT state FROM files"))
    assert states == ["done", "superseded"]  # the first version's file was replaced, not moved
    # Only the input that reached done/ has a result file; the replaced one's result is in the database.
    (out,) = (d.spool / "out" / "translate").iterdir()
    assert out.name == "report.txt.translate.txt" and "Second version." in out.read_text()
    assert d.stop() == 0


def test_a_file_rewritten_before_its_job_runs_is_not_processed_as_the_old_job(daemon_factory,
                                                                               tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"batch_size": 1, "options": {"mode": "echo", "delay_s": 1.5,
                                                            "calls_file": str(calls)}},
                       watch={"stability_seconds": 4})  # the worker gets there before intake does
    inbox = d.spool / "inbox" / "translate"
    _put(inbox / "busy.txt", b"Keeps the model busy.\n")
    _put(inbox / "later.txt", b"Original bytes.\n")
    d.start()
    _wait_in_model(d, calls)
    with open(inbox / "later.txt", "r+b") as fh:  # rewritten in place, same size
        fh.write(b"Modified bytes.\n")
    d.wait_until(lambda: "Modified bytes." in _all_results(d)
                 and _count(d, "SELECT COUNT(*) FROM files WHERE state = 'pending'") == 0, what="the new bytes done")
    # Every result is the result of its own job's bytes: the old job never ran on the new bytes.
    texts = {hashlib.sha256(t).hexdigest(): t.decode() for t in (b"Original bytes.\n", b"Modified bytes.\n",
                                                                  b"Keeps the model busy.\n")}
    for sha, output in d.query("SELECT j.sha256, r.output FROM jobs j JOIN results r ON r.job_id = j.id"):
        assert texts[sha] in output
    (status, error), = d.query("SELECT status, error FROM jobs WHERE sha256 = ?",
                               (hashlib.sha256(b"Original bytes.\n").hexdigest(),))
    assert status == "failed" and "changed before it ran" in error
    assert d.stop() == 0


# -- 6. innocent jobs failed by kills -------------------------------------------------------

def test_three_kills_during_one_batch_fail_none_of_its_jobs(daemon_factory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"batch_size": 4, "options": {"delay_s": 3.0, "calls_file": str(calls)}})
    for i in range(4):
        _put(d.spool / "inbox" / "translate" / f"doc{i}.txt", f"Document {i}.\n".encode())
    for kill in range(3):  # the default max_attempts
        d.start(wait_ready=False)
        _wait_in_model(d, calls, starts=kill + 1)
        assert d.kill(signal.SIGKILL) == -signal.SIGKILL
    d.start()
    _settled(d, 4)
    assert d.query("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 4)]
    assert d.stop() == 0


@pytest.mark.parametrize("how, deaths, error", [
    ("crash_on", 3, "died of a crash (Aborted) while running this job alone, 3 time(s)"),  # SIGABRT: evidence
    ("kill_on", 6, "died 6 times while running this job alone, with no cause recorded"),  # SIGKILL: none
])
def test_a_job_that_kills_the_process_fails_alone_and_its_batch_mates_are_done(daemon_factory, how, deaths,
                                                                                error) -> None:
    d = daemon_factory(model={"batch_size": 4, "options": {how: "POISON", "delay_s": 0.2}})
    for i in range(3):
        _put(d.spool / "inbox" / "translate" / f"good{i}.txt", f"Good document {i}.\n".encode())
    _put(d.spool / "inbox" / "translate" / "poison.txt", b"POISON for the decoder.\n")
    restarts = 0
    while True:  # what systemd's Restart=on-failure does
        d.start(wait_ready=False)
        d.wait_until(lambda: d.proc.poll() is not None or _all_finished(d), timeout=60, what="a crash or the end",
                     stop_on_exit=False)
        if d.proc.poll() is None:
            break
        assert d.reap() in (-signal.SIGKILL, -signal.SIGABRT)
        restarts += 1
        assert restarts < 10
    _settled(d, 4)
    rows = dict(d.query("SELECT source_path, status FROM jobs"))
    assert rows == {"translate/poison.txt": "failed", **{f"translate/good{i}.txt": "done" for i in range(3)}}
    (err,), = d.query("SELECT error FROM jobs WHERE source_path = 'translate/poison.txt'")
    assert error in err
    assert restarts == 1 + deaths  # the batch, then the poison alone
    assert d.stop() == 0


def _all_finished(d: DaemonProcess) -> bool:
    try:
        return _count(d, "SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')") == 4
    except sqlite3.OperationalError:
        return False  # no database yet


# -- 7. the smaller ones --------------------------------------------------------------------

def test_a_copy_attached_to_a_running_job_settles_with_it(daemon_factory, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    d = daemon_factory(model={"options": {"delay_s": 2.0, "calls_file": str(calls)}})
    inbox = d.spool / "inbox" / "translate"
    _put(inbox / "a.txt", b"Same bytes.\n")
    d.start()
    _wait_in_model(d, calls)
    _put(inbox / "copy-of-a.txt", b"Same bytes.\n")
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM files WHERE state = 'done'") == 2, timeout=30,
                 what="the copy settled without a restart")
    assert sorted(p.name for p in (d.spool / "done" / "translate").iterdir()) == ["a.txt", "copy-of-a.txt"]
    assert _count(d, "SELECT COUNT(*) FROM jobs") == 1
    assert d.stop() == 0


def test_a_repeated_name_never_overwrites_a_result_file(daemon_factory) -> None:
    d = daemon_factory()
    inbox = d.spool / "inbox" / "translate"
    _put(inbox / "x.txt", b"Monday's letter.\n")
    d.start()
    _settled(d, 1)
    _put(inbox / "x.txt", b"Tuesday's letter.\n")
    _settled(d, 2)
    outs = sorted(p.name for p in (d.spool / "out" / "translate").iterdir())
    assert outs == ["x.txt.translate.1.txt", "x.txt.translate.txt"]
    assert sorted(p.name for p in (d.spool / "done" / "translate").iterdir()) == ["x.1.txt", "x.txt"]
    assert d.stop() == 0


def test_hard_links_are_refused_by_default(daemon_factory, tmp_path: Path) -> None:
    secret = _put(tmp_path / "secret.txt", CANARY.encode())
    d = daemon_factory()
    inbox = d.spool / "inbox" / "translate"
    inbox.mkdir(parents=True)
    os.link(secret, inbox / "linked.txt")
    d.start()
    _settled(d, 1)
    (status, error), = d.query("SELECT status, error FROM jobs")
    assert status == "failed" and "hard links" in error and "allow_hard_links" in error
    assert CANARY not in _all_results(d) and secret.read_text() == CANARY
    assert d.stop() == 0


def test_two_daemons_with_different_databases_on_one_spool(daemon_factory, tmp_path: Path) -> None:
    first = daemon_factory().start()
    cfg = base_config(tmp_path, state_dir=str(tmp_path / "state2"))
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)], capture_output=True, text=True,
                         timeout=60, env=first.env())
    assert res.returncode == 5 and "uses this spool" in res.stderr
    assert first.stop() == 0


def test_the_state_folder_inside_the_spool_is_refused(tmp_path: Path) -> None:
    for key, value in [("state_dir", "spool/inbox/translate/state"), ("database", "sqlite:///spool/x/edged.db"),
                       ("model", {"path": "spool/models/m"})]:
        cfg = base_config(tmp_path, spool_dir=str(tmp_path / "spool"), **{key: value})
        if key != "state_dir":
            cfg["state_dir"] = str(tmp_path / "state")
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        res = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)], capture_output=True,
                             text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == 3, res.stderr
        assert f"{key if key != 'model' else 'model.path'}:" in res.stderr and "inside spool_dir" in res.stderr


def test_retry_never_follows_a_link_on_the_inbox_side(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(model={"options": {"fail_on": "FAIL"}})
    _put(d.spool / "inbox" / "translate" / "sub" / "x.txt", b"FAIL me.\n")
    d.start()
    _settled(d, 1)
    assert d.stop() == 0
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    os.rmdir(d.spool / "inbox" / "translate" / "sub")
    os.symlink(outside, d.spool / "inbox" / "translate" / "sub")
    res = subprocess.run([sys.executable, "-m", "edged", "retry", "--failed", "-c", str(d.config_path)],
                         capture_output=True, text=True, timeout=60, env=d.env())
    assert "cannot restore" in res.stdout
    assert not list(outside.iterdir())
    assert (d.spool / "failed" / "translate" / "sub" / "x.txt").exists()


def test_a_refused_input_that_cannot_be_moved_is_one_job(daemon_factory, tmp_path: Path) -> None:
    d = daemon_factory(watch={"stability_seconds": 0.2, "rescan_seconds": 0.5}, log={"level": "debug"})
    inbox = d.spool / "inbox" / "translate"
    inbox.mkdir(parents=True)
    os.symlink("/etc/hostname", inbox / "link.txt")
    # failed/translate is taken by a file: nothing can be moved into it (a stand-in for a
    # folder the daemon may not write, which root cannot be refused).
    _put(d.spool / "failed" / "translate", b"in the way")
    d.start()
    d.wait_until(lambda: sum(1 for e in d.events() if e.get("event") == "settle_failed") >= 1, what="a failed move")
    rescans = sum(1 for e in d.events() if e.get("event") == "rescan")
    d.wait_for_event("rescan", count=rescans + 5)  # five more rescans: none may record the link again
    assert _count(d, "SELECT COUNT(*) FROM jobs") == 1
    assert sum(1 for e in d.events() if e.get("event") == "settle_failed") == 1  # logged once so far
    (err,), = d.query("SELECT settle_error FROM files")
    assert err and "failed/translate" in err
    os.unlink(d.spool / "failed" / "translate")
    d.wait_until(lambda: _count(d, "SELECT COUNT(*) FROM files WHERE state = 'failed'") == 1, timeout=60,
                 what="the refusal settled once the way is clear")
    assert (d.spool / "failed" / "translate" / "link.txt").is_symlink()
    assert d.stop() == 0


def test_checkpoint_never_waits_for_a_reader(tmp_path: Path) -> None:
    from edged.store import open_queue
    from edged.store.stats import Stats

    q = open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    with q.engine.begin() as conn:
        for i in range(2000):
            conn.exec_driver_sql("INSERT INTO runtime (key, value, updated_at) VALUES (?, '1', 'x')", (f"k{i}",))
    reader = sqlite3.connect(tmp_path / "q.db")
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM runtime").fetchall()  # holds a snapshot
    with q.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE runtime SET value = '2'")
    done = threading.Event()
    result = []
    threading.Thread(target=lambda: (result.append(Stats(q.engine).checkpoint(truncate_above_pages=0)),
                                     done.set()), daemon=True).start()
    assert done.wait(10), "the checkpoint waited for the reader (TRUNCATE under a 30 s busy timeout)"
    assert result[0][2] is True  # reported as partial, not dropped
    reader.rollback()
    reader.close()


def test_json_tracebacks_carry_no_frame_locals(daemon_factory) -> None:
    d = daemon_factory(model={"engine": "echo_engine:no_such_factory"})
    res = subprocess.run([sys.executable, "-c", (
        "import io, sys; from edged.logs import configure_logging, get_logger; buf = io.StringIO();"
        " configure_logging('info', 'json', buf)\n"
        "def f(text):\n    raise ValueError('bad')\n"
        "try:\n    f('" + CANARY + "')\n"
        "except ValueError:\n    get_logger('t').exception('boom')\n"
        "print(buf.getvalue())")], capture_output=True, text=True, env=d.env(), timeout=60)
    assert '"exc_type": "ValueError"' in res.stdout and CANARY not in res.stdout
