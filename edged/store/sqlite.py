"""SQLAlchemy engine set-up for SQLite: WAL, busy timeout, foreign keys, durable commits.

pysqlite's own transaction handling issues a deferred BEGIN lazily, which lets two writers
both read a row and then race to update it. We turn it off and issue `BEGIN IMMEDIATE`
ourselves, so every write transaction holds the write lock from its first statement.
Read-only work asks for `BEGIN` (deferred) with the `readonly` execution option and never
blocks the daemon.

The daemon opens the database read-write (and creates it); the operator's commands open it
read-only (`readonly=True`: a `mode=ro` URI, never created, never migrated), so that `edged
status` run by root or by a member of the spool group can never leave a file the daemon
cannot open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

BUSY_TIMEOUT_MS = 30_000
WAL_PAGES = 128


def file_of(url: str) -> Optional[Path]:
    """The file behind a sqlite URL (None for an in-memory database)."""
    db = make_url(url).database
    return Path(db) if db and db != ":memory:" else None


def _readonly_url(path: Path, immutable: bool) -> str:
    return f"sqlite:///file:{quote(str(path))}?mode=ro{'&immutable=1' if immutable else ''}&uri=true"


def open_sqlite(url: str, path: Optional[Path], readonly: bool, create: bool) -> Engine:
    if readonly and path is not None:
        # A WAL database has its -wal file while any connection is open. Without one, nobody
        # is writing and everything is folded into the main file: read it as immutable, which
        # needs no -shm (a group member cannot create one in the daemon's state folder, and
        # another user must not leave one behind that the daemon cannot open).
        immutable = not Path(f"{path}-wal").exists()
        engine = create_engine(_readonly_url(path, immutable), poolclass=NullPool,
                               connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
    else:
        if path is not None and create:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # DB-API objects
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        if readonly:
            cur.execute("PRAGMA query_only=1")
        else:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            # FULL: a committed job state survives power loss, the invariant the spool relies
            # on before it moves a file out of the inbox.
            cur.execute("PRAGMA synchronous=FULL")
            # The WAL folds back into the database every WAL_PAGES pages (512 KiB, not SQLite's
            # 4 MiB) and is cut back to that size after: on a nearly full disk the WAL alone
            # must not take the room the database needs to fold it in (it could never shrink).
            cur.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            cur.execute(f"PRAGMA journal_size_limit={WAL_PAGES * 4096}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN" if readonly or conn.get_execution_options().get("readonly") else "BEGIN IMMEDIATE")

    return engine
