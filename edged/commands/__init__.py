"""The verbs of the `edged` command, each over the parts it needs (cli.py only parses).

The operator's commands never change the database's shape or ownership: they open it
read-only, or read-write without migrating, and only when it exists. Run as root, they act
as the database's owner, so that a file SQLite creates beside it (-wal, -shm) belongs to the
daemon's user and never locks the daemon out.
"""

from __future__ import annotations

import os
import pwd
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import exc

from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.store import DatabaseMissing, SchemaMismatch, StoreUnavailable
from edged.store.db import read, sqlite_path
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
    os.setegid(st.st_gid)
    os.seteuid(st.st_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def command_parts(settings: Settings, access: Access) -> Parts:
    """The parts a command needs, or a CliError whose message names the fix."""
    path = sqlite_path(settings.database_url)
    try:
        parts = open_parts(settings, access)
        with read(parts.queue.engine) as conn:  # open now: a permission problem shows here, not mid-command
            conn.exec_driver_sql("SELECT 1 FROM jobs LIMIT 1").all()
    except DatabaseMissing as error:
        raise CliError(str(error), ExitCode.NOT_FOUND) from None
    except SchemaMismatch as error:
        raise CliError(str(error), ExitCode.ERROR) from None
    except (exc.OperationalError, StoreUnavailable, PermissionError) as error:
        owner = _owner_name(Path(path).stat().st_uid) if path is not None and path.exists() else "edged"
        raise CliError(f"cannot open the database {path} as {_owner_name(os.geteuid())}"
                       f" ({getattr(error, 'orig', error)}): run the command as its owner, e.g."
                       f" sudo -u {owner} edged …", ExitCode.NO_ACCESS) from None
    return parts


__all__ = ["Parts", "as_database_owner", "command_parts", "open_parts"]
