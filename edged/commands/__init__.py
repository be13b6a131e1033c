"""The verbs of the `edged` command, each over the parts it needs (cli.py only parses).

The operator's commands never change the database's shape or ownership: they open it
read-only, or read-write without migrating, and only when it exists. Run as root, they act
as the database's owner, so that a file SQLite creates beside it (-wal, -shm) belongs to the
daemon's user and never locks the daemon out.
"""

from __future__ import annotations

import importlib
import os
import pwd
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import exc

from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.store import StoreUnavailable
from edged.store.db import backend_of, read, run, sqlite_path
from edged.store.postgres import shown
from edged.wiring import Access, Parts, open_parts


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@contextmanager
def as_database_owner(settings: Settings) -> Iterator[None]:
    """While inside: when run as root, act as the owner of the database's folder."""
    path = sqlite_path(settings.database_url)
    folder = path.parent if path is not None else settings.state_dir
    try:
        st = os.stat(path if path is not None and path.exists() else folder)
    except OSError:
        st = None
    if os.geteuid() != 0 or st is None or st.st_uid == 0:
        yield
        return
    # Loaded lazily elsewhere: load them while root may still read wherever Python lives.

    modules = ["sqlite3", "sqlalchemy.dialects.sqlite.pysqlite"]
    if path is None and backend_of(settings.database_url) == "postgresql":
        modules += ["psycopg", "sqlalchemy.dialects.postgresql.psycopg"]
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # opening the database says what is missing, in words

    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def _may_write(db: Path) -> bool:
    """Whether SQLite could write `db` as this user: the file, and its -wal/-shm or their folder."""
    def ok(p: Path) -> bool:
        return os.access(p, os.W_OK, effective_ids=True)

    side = [Path(f"{db}-wal"), Path(f"{db}-shm")]
    return ok(db) and all(ok(p) for p in side if p.exists()) and (all(p.exists() for p in side) or ok(db.parent))


def command_parts(settings: Settings, access: Access) -> Parts:
    """The parts a command needs; DatabaseMissing, SchemaMismatch, or a CliError naming who may."""
    path = sqlite_path(settings.database_url)
    if path is None and backend_of(settings.database_url) == "postgresql":
        try:
            parts = open_parts(settings, access)
            with read(parts.queue.engine) as conn:
                run(conn, "SELECT 1 FROM jobs LIMIT 1").all()
        except (exc.OperationalError, StoreUnavailable) as error:
            raise CliError(f"cannot use the database {shown(settings.database_url)}: {getattr(error, 'orig', error)}"
                           " (is the server up and reachable from here, and does it accept this box's role?)",
                           ExitCode.UNAVAILABLE) from None
        return parts
    try:
        parts = open_parts(settings, access)
        # Open now, so that a permission problem shows here and not halfway through a command.
        with read(parts.queue.engine) as conn:
            run(conn, "SELECT 1 FROM jobs LIMIT 1").all()
        if access == "write" and path is not None and not _may_write(path):
            # SQLite makes the database 0640 under the unit's umask: the spool group reads it,
            # only the daemon's user writes it.
            raise PermissionError(f"{path} is not writable by this user")
    except (exc.OperationalError, StoreUnavailable, PermissionError) as error:
        owner = _owner_name(Path(path).stat().st_uid) if path is not None and path.exists() else "edged"
        raise CliError(f"cannot use the database {path} as {_owner_name(os.geteuid())}"
                       f" ({getattr(error, 'orig', error)}): run the command as its owner, e.g."
                       f" sudo -u {owner} edged …", ExitCode.NO_ACCESS) from None
    return parts


__all__ = ["Parts", "as_database_owner", "command_parts"]
