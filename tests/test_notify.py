"""sd_notify: the daemon as a subprocess talking to a datagram socket this test owns."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, DaemonProcess
from edged.notify import Notifier


class Listener:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def keys(self) -> list[str]:
        return [line.split("=")[0] for _, m in self.messages for line in m.splitlines()
                if line.split("=")[0] in ("READY", "WATCHDOG", "STOPPING")]


def test_notifier_is_a_noop_without_systemd(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.address and n.watchdog_interval is None
    n.ready("x")
    n.watchdog()


def test_ready_watchdog_stopping_order_and_a_blocked_worker_goes_silent(daemon_factory, tmp_path: Path) -> None:
    listener = Listener(tmp_path / "notify.sock")
    d: DaemonProcess = daemon_factory(model={"batch_size": 1, "options": {"name": "echo-test", "delay_s": 4.0}})
    env = d.env()
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="1000000")
    d.env = lambda: env  # type: ignore[method-assign]
    d.start()
    listener.drain(2.5)  # idle: the worker loop pings every 0.25 s
    idle_pings = listener.keys().count("WATCHDOG")
    assert listener.keys()[0] == "READY" and idle_pings >= 4
    # A job whose engine call blocks for 4 s: no pings while it runs.
    p = d.spool / "inbox" / "translate" / "slow.txt"
    p.write_text("block the worker")
    d.wait_for_event("file_received", timeout=10)
    t_blocked = time.monotonic()
    listener.drain(3.0)
    during = [t for t, m in listener.messages if "WATCHDOG=1" in m and t > t_blocked + 0.6]
    assert during == [], "watchdog pings while the worker was blocked in the engine"
    d.wait_for_event("job_done", timeout=10)
    listener.drain(1.0)
    d.proc.send_signal(signal.SIGTERM)
    listener.drain(1.0)
    assert d.proc.wait(timeout=20) == 0
    keys = listener.keys()
    assert keys[0] == "READY" and keys[-1] == "STOPPING" and "WATCHDOG" in keys[1:-1]
    assert any("STATUS=" in m and "queued" in m for _, m in listener.messages)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "systemd" / "edged.service").read_text()
    # systemd-analyze checks that ExecStart's program exists: use the installed console script.
    exe = shutil.which("edged", path=str(Path(sys.executable).parent)) or shutil.which("edged") or sys.executable
    (tmp_path / "edged.service").write_text(unit.replace("/usr/local/bin/edged", exe))
    res = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "edged.service")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
                    reason="systemd-tmpfiles not installed, or not root")
def test_tmpfiles_make_the_spool_as_the_readme_says(tmp_path: Path) -> None:
    import grp
    import pwd

    import users

    users.ensure_users()  # test users stand in for edged (the ACL lines resolve names on this host)
    conf = (REPO / "systemd" / "edged.tmpfiles.conf").read_text()
    conf = conf.replace(" edged edged ", f" {users.DAEMON} {users.GROUP} ")
    conf = conf.replace(" root  edged ", f" root {users.GROUP} ")
    conf = conf.replace("d:g:edged:", f"d:g:{users.GROUP}:")
    (tmp_path / "t.conf").write_text(conf)
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    d = pwd.getpwnam(users.DAEMON)
    (root / "etc" / "passwd").write_text(
        f"root:x:0:0::/root:/bin/sh\n{d.pw_name}:x:{d.pw_uid}:{d.pw_gid}::/:/bin/false\n")
    (root / "etc" / "group").write_text(f"root:x:0:\n{users.GROUP}:x:{grp.getgrnam(users.GROUP).gr_gid}:\n")
    res = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(tmp_path / "t.conf")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "Failed" not in res.stderr, res.stderr
    spool = root / "var" / "spool" / "edged"
    modes = {str(p.relative_to(spool)): oct(p.stat().st_mode & 0o7777) for p in [spool, *spool.rglob("*")]}
    assert modes == {".": "0o2750", "inbox": "0o2750", "inbox/caption": "0o2770", "inbox/ocr": "0o2770",
                     "inbox/translate": "0o2770", "done": "0o2750", "failed": "0o2750", "out": "0o2750"}
    for task in ("caption", "ocr", "translate"):
        assert "system.posix_acl_default" in os.listxattr(spool / "inbox" / task)


def test_sighup_is_reloading_then_ready(daemon_factory, tmp_path: Path) -> None:
    """RELOADING=1 (with MONOTONIC_USEC, as sd_notify(3) asks) and READY=1 once the reload is done."""
    listener = Listener(tmp_path / "notify.sock")
    d: DaemonProcess = daemon_factory()
    env = d.env()
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"))
    d.env = lambda: env  # type: ignore[method-assign]
    d.start()
    listener.drain(0.5)
    before = len(listener.messages)
    d.reconfigure(log={"level": "debug"})
    listener.drain(1.0)
    after = [m for _, m in listener.messages[before:]]
    assert "RELOADING=1" in after[0] and "MONOTONIC_USEC=" in after[0], after
    assert any(m.startswith("READY=1") for m in after[1:]), after
    assert d.stop() == 0
