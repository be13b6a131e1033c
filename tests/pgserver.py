"""A real PostgreSQL server for the tests: Debian's `postgresql` binaries, one throw-away cluster.

`initdb` and `pg_ctl` refuse to run as root, so under root they run as the `postgres` user
(the Debian package creates it). The cluster listens on a Unix socket in its own temp folder
only (`listen_addresses=''`): nothing on the machine's network sees it. Each test gets a
schema of its own (`search_path` in the URL), so tests never see each other's tables and no
database has to be created per test. The server is stopped by the PID in its
`postmaster.pid`, whatever happened to the test that started it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional
from urllib.parse import quote

RUN_AS = "postgres"


def bindir() -> Optional[Path]:
    """Where initdb and pg_ctl are (pg_config's answer, else the newest Debian version), or None."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if (Path(out) / "initdb").exists():
            return Path(out)
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PgServer:
    """One cluster in a temp folder; `url(schema)` is a SQLAlchemy URL for a schema in it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="edged-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root  # the socket lives beside the data, in the same private folder
        self.user: Optional[pwd.struct_passwd] = None
        if os.geteuid() == 0:
            self.user = pwd.getpwnam(RUN_AS)
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        # Other test users (the daemon run as its own user) must reach the socket.
        os.chmod(self.root, 0o755)
        self.log = self.root / "server.log"
        self.pid: Optional[int] = None

    def _as_owner(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--init-groups", "--", *argv]

    def start(self) -> PgServer:
        """Make the cluster (the first time) and start the server on it."""
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(self._as_owner([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                           "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
                           check=True, capture_output=True, cwd=self.root)
        options = " ".join([
            "-c listen_addresses=''", f"-c unix_socket_directories={self.socket_dir}",
            # A test server: durability is not under test here (SQLite's is), speed is.
            "-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c max_connections=200", "-c shared_buffers=64MB",
        ])
        subprocess.run(self._as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                                       "-o", options, "-w", "-t", "60", "start"]),
                       check=True, capture_output=True, cwd=self.root)
        self.pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        return self

    def url(self, schema: Optional[str] = None, database: str = "postgres") -> str:
        url = f"postgresql+psycopg://postgres@/{database}?host={quote(str(self.socket_dir))}"
        if schema:
            url += "&options=" + quote(f"-csearch_path={schema}")
        return url

    def psql(self, sql: str, database: str = "postgres") -> str:
        """One statement through psql (the tests' own look at the server, apart from edged's code)."""
        out = subprocess.run([str(self.bin / "psql") if (self.bin / "psql").exists() else "psql", "-X", "-q", "-At",
                              "-h", str(self.socket_dir), "-U", "postgres", "-d", database, "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def new_schema(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE SCHEMA {name}")
        return name

    def stop(self, remove: bool = True) -> None:
        """Stop the server; `remove`: and delete the cluster (else `start` brings it back as it was)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGINT)  # fast shutdown: rolls back what is open, then exits
                deadline = time.monotonic() + 30
                # The postmaster removes its pid file as its last act (it is not our child: a
                # zombie of it would still answer kill 0 where nothing reaps it).
                while time.monotonic() < deadline and (self.data / "postmaster.pid").exists():
                    os.kill(self.pid, 0)
                    time.sleep(0.05)
                else:
                    if (self.data / "postmaster.pid").exists():
                        os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.pid = None
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)
