"""Opening the store's database (SQLite or PostgreSQL) and the one way statements run on it.

The store's SQL is written once, with `:name` binds, in the part of SQL both engines share;
the few statements that must differ ask `backend(conn)`. Each engine's own set-up lives in
sqlite.py and postgres.py.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

from sqlalchemy import Connection, CursorResult, Engine, bindparam, exc, text
from sqlalchemy.engine import make_url

from edged.exitcodes import EdgedError, ExitCode
from edged.store.errors import StoreUnavailable, UnsupportedDatabase, unavailable_reason
from edged.store.postgres import PgOptions, open_postgres
from edged.store.sqlite import BUSY_TIMEOUT_MS, WAL_PAGES, file_of, open_sqlite

__all__ = ["BUSY_TIMEOUT_MS", "WAL_PAGES", "Backend", "DatabaseMissing", "PgOptions", "backend", "backend_of",
           "open_engine", "read", "run", "sqlite_path", "write"]

Backend = Literal["sqlite", "postgresql"]


class DatabaseMissing(EdgedError):
    """A read-only open of a database that does not exist yet (only the daemon creates it)."""

    code = ExitCode.NOT_FOUND


def backend_of(url: str) -> Backend:
    """Which engine a URL names; UnsupportedDatabase for any other."""
    try:
        name = make_url(url).get_backend_name()
    except exc.ArgumentError:
        name = ""
    if name in ("sqlite", "postgresql"):
        return name  # type: ignore[return-value]
    raise UnsupportedDatabase(f"database {url.split('@')[-1]!r}: edged keeps its queue in SQLite (sqlite:///path)"
                              " or PostgreSQL (postgresql+psycopg://user@host/dbname); set `database` in the config"
                              " to one, or leave it out for <state_dir>/edged.db")


def backend(bind: Engine | Connection) -> Backend:
    return "postgresql" if bind.dialect.name == "postgresql" else "sqlite"


def sqlite_path(url: str) -> Optional[Path]:
    """The file behind a sqlite URL; None for an in-memory or a PostgreSQL database."""
    return file_of(url) if backend_of(url) == "sqlite" else None


def open_engine(url: str, readonly: bool = False, create: bool = True,
                postgres: Optional[PgOptions] = None) -> Engine:
    """`create=False` (and `readonly`): DatabaseMissing instead of making a new SQLite file."""
    if backend_of(url) == "postgresql":
        return open_postgres(url, readonly, postgres or PgOptions())
    path = file_of(url)
    if (readonly or not create) and (path is None or not path.is_file()):
        raise DatabaseMissing(f"no database at {path or url} yet: the daemon creates it when it first starts")
    return open_sqlite(url, path, readonly, create)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A write transaction; a database that cannot take it (full disk, I/O error, the server out
    of reach) raises StoreUnavailable.

    The transaction is rolled back whole in that case, so the caller may try again later.
    """
    try:
        with engine.begin() as conn:
            yield conn
    except exc.DBAPIError as error:
        reason = unavailable_reason(error)
        if reason is None:
            raise
        raise StoreUnavailable(reason) from error


def run(conn: Connection, statement: str, expanding: tuple[str, ...] = (), **params: Any) -> CursorResult:
    """One statement with `:name` binds (the one SQL style of the store: portable, unlike the
    DB-API's own `?` or `%s`); `expanding` names the binds that take a list (`IN :ids`)."""
    clause = text(statement)
    # A name the statement does not use (a filter a caller's condition left out) is passed over.
    used = [name for name in expanding if f":{name}" in statement]
    if used:
        clause = clause.bindparams(*(bindparam(name, expanding=True) for name in used))
    return conn.execute(clause, params)


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A read transaction (deferred BEGIN on SQLite: it never blocks the writer)."""
    try:
        with engine.connect().execution_options(readonly=True) as conn, conn.begin():
            yield conn
    except exc.DBAPIError as error:
        reason = unavailable_reason(error) if backend(engine) == "postgresql" else None
        if reason is None:
            raise
        raise StoreUnavailable(reason) from error
