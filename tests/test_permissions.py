"""The daemon as its own user with the unit's umask, producers as other users (as on a box).

Users and folders are set up the way systemd/edged.sysusers.conf and edged.tmpfiles.conf
set them up: a spool group, the spool root and inbox/ not group-writable, inbox/<task>/
setgid and group-writable, done/, failed/, out/ the daemon's own.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import users
from conftest import DaemonProcess, base_config, png_bytes

pytestmark = pytest.mark.skipif(users.missing() is not None, reason=users.missing() or "")


@pytest.fixture
def box():
    """A base folder every test user can enter, with spool and state as tmpfiles.d makes them."""
    users.ensure_users()
    base = Path(tempfile.mkdtemp(prefix="edged-perm-", dir="/tmp"))
    os.chmod(base, 0o755)
    d_uid, g = users.uid(users.DAEMON), users.gid()
    state, spool = base / "state", base / "spool"
    for path, mode, owner in [(state, 0o750, d_uid), (spool, 0o2750, d_uid), (spool / "inbox", 0o2750, d_uid),
                              *[(spool / "inbox" / t, 0o2770, d_uid) for t in ("caption", "ocr", "translate")],
                              *[(spool / a, 0o2750, d_uid) for a in ("done", "failed", "out")]]:
        path.mkdir(exist_ok=True)
        os.chown(path, owner, g)
        os.chmod(path, mode)
    yield base
    for d in _started:  # a failed test must not leave its daemon running
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
    _started.clear()
    subprocess.run(["umount", "-R", str(base / "view")], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


_started: list[DaemonProcess] = []


def _daemon(box: Path, **extra) -> DaemonProcess:
    cfg = base_config(box, watch={"stability_seconds": 0.3, "rescan_seconds": 1}, log={"level": "debug"}, **extra)
    d = DaemonProcess(box, cfg)
    _started.append(d)
    os.chmod(d.config_path, 0o644)
    d.prefix = users.as_user(users.DAEMON, [], 0o007, box / "view")
    return d


def _edged_as(user: str, box: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = users.as_user(user, [sys.executable, "-m", "edged", *args, "-c", str(box / "config.yaml")], 0o022,
                        box / "view")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())


def _env() -> dict:
    from conftest import DOUBLES, REPO

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLES), str(REPO)])
    env.pop("EDGED_CONFIG", None)
    return env


def _producer(box: Path, script: str, umask: int = 0o022) -> None:
    res = users.shell_as(users.PRODUCER, script, umask, box / "spool" / "inbox")
    assert res.returncode == 0, res.stderr


def _settled(d: DaemonProcess, n: int) -> None:
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM files WHERE state != 'pending'")[0][0] >= n
                 and d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0] == 0,
                 timeout=60, what=f"{n} files settled")


def _state_files(box: Path) -> dict[str, int]:
    return {p.name: p.stat().st_uid for p in (box / "state").iterdir()}


def test_producers_folders_and_unreadable_files_never_stop_the_daemon(box: Path) -> None:
    d = _daemon(box)
    d.start(timeout=60)
    # A producer with umask 022 makes a language folder the daemon may not remove files from,
    # drops a file and a link there, an unreadable file (umask 077) and a picture.
    _producer(box, "mkdir -p translate/fr && printf 'Bonjour.\\n' > translate/fr/a.txt"
                   " && ln -s /etc/hostname translate/fr/link.txt")
    _producer(box, "printf 'Secret.\\n' > translate/b.txt", umask=0o077)
    (box / "p.png").write_bytes(png_bytes())
    _producer(box, f"cp {box / 'p.png'} caption/p.png")
    _settled(d, 4)
    rescans = sum(1 for e in d.events() if e.get("event") == "rescan")
    d.wait_for_event("rescan", count=rescans + 3)  # three more rescans: nothing may be taken twice
    assert d.proc.poll() is None, "the daemon died"
    jobs = {r[0]: r[1:] for r in d.query("SELECT source_path, status, error FROM jobs")}
    assert len(jobs) == 4, jobs
    assert jobs["translate/fr/a.txt"][0] == "done"
    assert jobs["caption/p.png"][0] == "done"
    assert jobs["translate/b.txt"][0] == "failed" and "may not read it" in jobs["translate/b.txt"][1]
    assert jobs["translate/fr/link.txt"][0] == "failed" and "symbolic link" in jobs["translate/fr/link.txt"][1]
    # The daemon could not take them out of fr/: copied, the originals stay, recorded as such.
    assert (box / "spool" / "done" / "translate" / "fr" / "a.txt").read_text() == "Bonjour.\n"
    assert (box / "spool" / "inbox" / "translate" / "fr" / "a.txt").exists()
    assert os.path.islink(box / "spool" / "failed" / "translate" / "fr" / "link.txt")
    left = d.query("SELECT path FROM files WHERE left_in_inbox = 1 ORDER BY path")
    assert left == [("translate/fr/a.txt",), ("translate/fr/link.txt",)]
    assert (box / "spool" / "failed" / "translate" / "b.txt").exists()  # moved: inbox/translate is the group's
    assert sum(1 for e in d.events() if e.get("event") == "inbox_folder_not_removable") == 1
    # What the daemon made is its own and not group-writable, whatever the umask.
    for path in [box / "spool" / "done" / "translate" / "fr", box / "spool" / "out" / "translate" / "fr"]:
        st = path.stat()
        assert st.st_uid == users.uid(users.DAEMON) and not st.st_mode & 0o022, (path, oct(st.st_mode))
    for out in (box / "spool" / "out").rglob("*.txt"):
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
    # The spool group can read the queue while the daemon runs.
    res = _edged_as(users.PRODUCER, box, "status", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["files_left_in_inbox"] == 2 and info["daemon"]["running"] is True
    assert d.stop() == 0
    # ... and while it is stopped, without leaving anything behind in the state folder.
    before = _state_files(box)
    for user in (users.PRODUCER, users.DAEMON):
        res = _edged_as(user, box, "status", "--json")
        assert res.returncode == 0, (user, res.stderr)
    res = subprocess.run([sys.executable, "-m", "edged", "status", "-c", str(box / "config.yaml")],
                         capture_output=True, text=True, timeout=60, env=_env())  # as root
    assert res.returncode == 0, res.stderr
    after = _state_files(box)
    assert set(after) <= set(before) | {"edged.db-wal", "edged.db-shm"}
    assert all(owner == users.uid(users.DAEMON) for owner in after.values()), after
    # The daemon starts again as its own user, with what the commands left.
    d.start(wait_ready=False)
    d.wait_for_event("ready", timeout=60, count=2)
    assert d.stop() == 0


def test_root_never_creates_the_database(box: Path) -> None:
    cfg = base_config(box)
    (box / "config.yaml").write_text(yaml.safe_dump(cfg))
    for verb in (["status"], ["results"], ["doctor"], ["retry", "--failed"]):
        subprocess.run([sys.executable, "-m", "edged", *verb, "-c", str(box / "config.yaml")], capture_output=True,
                       text=True, timeout=60, env=_env())
    assert list((box / "state").iterdir()) == []


def test_a_group_member_without_write_access_gets_the_fix_named(box: Path) -> None:
    d = _daemon(box)
    d.start(timeout=60)
    assert d.stop() == 0
    os.chmod(box / "state" / "edged.db", 0o600)  # the group may not even read it
    res = _edged_as(users.PRODUCER, box, "status")
    assert res.returncode == 9 and f"sudo -u {users.DAEMON} edged" in res.stderr, res.stderr


def test_submit_as_a_producer_gives_the_daemon_a_file_it_can_read(box: Path) -> None:
    d = _daemon(box)
    d.start(timeout=60)
    src = box / "letter.txt"
    src.write_text("Dear operator.\n")
    os.chmod(src, 0o644)
    res = _edged_as(users.PRODUCER, box, "submit", "--task", "translate", "--lang", "de", str(src))
    assert res.returncode == 0, res.stderr
    # The database is the daemon's to write (SQLite makes it 0640): spooled, the daemon queues it.
    assert res.stdout.split("\t") == ["-", "translate/de/letter.txt", "spooled\n"], res.stdout
    assert "not queued now" in res.stderr and f"sudo -u {users.DAEMON}" in res.stderr
    res = _edged_as(users.PRODUCER, box, "retry", "--failed")
    assert res.returncode == 9 and f"sudo -u {users.DAEMON}" in res.stderr
    _settled(d, 1)
    (status,), = d.query("SELECT status FROM jobs")
    assert status == "done"
    done = box / "spool" / "done" / "translate" / "de" / "letter.txt"
    st = done.stat()
    assert st.st_uid == users.uid(users.PRODUCER) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == users.gid()
    assert d.stop() == 0


def test_the_daemon_on_a_shared_postgresql_queue_as_its_own_user(box: Path, pg_url: str) -> None:
    """Mode shared as the service meets it: the daemon as its own user with UMask=0007, a producer's
    files (one unreadable to the daemon), the box's name made by the daemon, status by a producer."""
    d = _daemon(box, database=pg_url, shared=True)
    d.start(umask=0o007)
    _producer(box, "printf 'Bonjour.\\n' > translate/a.txt && printf 'x' > translate/secret.txt"
                   " && chmod 600 translate/secret.txt", umask=0o007)
    _settled(d, 2)
    jobs = dict(d.query("SELECT source_path, status FROM jobs"))
    assert jobs == {"translate/a.txt": "done", "translate/secret.txt": "failed"}
    assert "may not read it" in d.query("SELECT error FROM jobs WHERE source_path = 'translate/secret.txt'")[0][0]
    assert d.proc is not None and d.proc.poll() is None
    assert (box / "spool" / "done" / "translate" / "a.txt").exists()
    assert (box / "spool" / "failed" / "translate" / "secret.txt").exists()  # kept, not lost
    made = box / "state" / "box_id"
    assert made.stat().st_uid == users.uid(users.DAEMON) and not made.stat().st_mode & 0o007
    assert d.query("SELECT box_id FROM boxes") == [(made.read_text().strip(),)]
    res = _edged_as(users.PRODUCER, box, "status")
    assert res.returncode == 0 and "site boxes" in res.stdout, res.stderr
    assert d.stop() == 0
