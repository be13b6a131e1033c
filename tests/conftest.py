"""Shared fixtures: settings on temp folders, a daemon run as a subprocess, sample images."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import yaml
from PIL import Image

from edged.config import Settings, parse_config

REPO = Path(__file__).resolve().parent.parent
DOUBLES = Path(__file__).resolve().parent / "doubles"
sys.path.insert(0, str(DOUBLES))


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def base_config(root: Path, **extra: Any) -> dict:
    cfg = {
        "state_dir": str(root / "state"),
        "spool_dir": str(root / "spool"),
        "model": {"engine": "echo_engine:create", "batch_size": 4, "options": {"name": "echo-test"}},
        "queue": {"backoff_seconds": 0, "backoff_max_seconds": 0},
        "watch": {"stability_seconds": 0.5, "rescan_seconds": 30},
        # A CI machine's temp disk may be small; the low-disk test sets its own floor.
        "spool": {"min_free_mb": 0},
        "log": {"format": "json", "level": "info"},
    }
    return deep_merge(cfg, extra)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**extra: Any) -> Settings:
        return parse_config(base_config(tmp_path, **extra), tmp_path / "config.yaml")

    return make


def png_bytes(size: tuple[int, int] = (32, 24), color: Any = "red", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


class DaemonProcess:
    """`edged run` as a real subprocess, logging JSON lines to a file."""

    def __init__(self, root: Path, config: dict) -> None:
        self.root = root
        self.config = config
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = root / "daemon.log"
        self.proc: Optional[subprocess.Popen] = None
        url = config.get("database")
        self.db_url = url or f"sqlite:///{Path(config['state_dir']) / 'edged.db'}"
        self.db_path = Path(url[len("sqlite:///"):]) if url and url.startswith("sqlite:///") else \
            Path(config["state_dir"]) / "edged.db"
        self._pg: Any = None
        self.spool = Path(config["spool_dir"])
        self.prefix: list[str] = []  # a command that runs the daemon as another user (tests/users.py)

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(DOUBLES), str(REPO), env.get("PYTHONPATH", "")])
        env.pop("EDGED_CONFIG", None)
        return env

    def start(self, wait_ready: bool = True, timeout: float = 30.0, umask: Optional[int] = None) -> DaemonProcess:
        """`umask`: as the unit sets it (UMask=0007), instead of the test runner's."""
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "edged", "run", "-c", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.root,
            preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
        )
        if wait_ready:
            self.wait_for_event("ready", timeout)
        return self

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def wait_for_event(self, name: str, timeout: float = 30.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for e in self.events() if e.get("event") == name) >= count:
                return
            if self.proc and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"no {name!r} event within {timeout}s:\n{self.log_path.read_text()[-4000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.reap()

    def reap(self, timeout: float = 30) -> int:
        """Wait for the process to end (it may already have); its exit status."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def stop(self) -> int:
        return self.kill(signal.SIGTERM)

    def reconfigure(self, **extra: Any) -> None:
        """Rewrite the config file with `extra` merged in and send SIGHUP; wait for the reload."""
        self.config = deep_merge(self.config, extra)
        self.config_path.write_text(yaml.safe_dump(self.config))
        before = sum(1 for e in self.events() if e.get("event") == "config_reloaded")
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for_event("config_reloaded", count=before + 1)

    def last_event(self, name: str) -> dict:
        return [e for e in self.events() if e.get("event") == name][-1]

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        """A look at the daemon's database apart from its code (`?` binds, on either backend)."""
        if self.db_url.startswith("postgresql"):
            import sqlalchemy

            if self._pg is None:
                self._pg = sqlalchemy.create_engine(self.db_url, poolclass=sqlalchemy.pool.NullPool)
            with self._pg.connect() as conn:
                return [tuple(r) for r in conn.exec_driver_sql(sql.replace("?", "%s"), args).all()]
        con = sqlite3.connect(self.db_path, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition",
                   stop_on_exit: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if stop_on_exit and self.proc and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log_path.read_text()[-4000:]}")
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log_path.read_text()[-4000:]}")


@pytest.fixture
def daemon_factory(tmp_path: Path):
    started: list[DaemonProcess] = []

    def make(**extra: Any) -> DaemonProcess:
        d = DaemonProcess(tmp_path, base_config(tmp_path, **extra))
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


# -- PostgreSQL ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server():
    """A real PostgreSQL server for the session (tests/pgserver.py). Without one the PostgreSQL
    half of the tests is skipped, except under CI, where that is a failure."""
    from pgserver import PgServer, bindir

    why = None
    found = bindir()
    if found is None:
        why = "no PostgreSQL server binaries (Debian: apt-get install postgresql)"
    else:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            why = "no psycopg (pip install 'edged[postgres]')"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL for the store's tests: {why}")
        pytest.skip(why)
    assert found is not None
    server = PgServer(found).start()
    yield server
    server.stop()


def _pg_url(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue("pg_server")
    schema = server.new_schema()

    def drop() -> None:
        # The test's engines may still hold pooled connections: end them, then the schema.
        server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend'"
                    " AND pid <> pg_backend_pid()")
        server.psql(f"DROP SCHEMA {schema} CASCADE")

    request.addfinalizer(drop)
    return server.url(schema)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database on each backend: a SQLite file, or a schema of its own on the server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'q.db'}"
    return _pg_url(request)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """A fresh schema on the test server, for the tests of what only PostgreSQL does."""
    return _pg_url(request)
