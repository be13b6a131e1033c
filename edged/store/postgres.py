"""SQLAlchemy engine set-up for PostgreSQL (psycopg 3), for boxes on real networks.

A box talks to a server across a LAN or a WAN link that drops: a small pool (a daemon is a
handful of threads), pre-ping (a connection the server or a NAT has dropped is replaced
before use, not failed mid-batch), TCP keepalives (a dead peer is noticed in about a minute,
not the kernel's two hours), a connect timeout, `statement_timeout` (a statement stuck on a
lock gives up), `idle_in_transaction_session_timeout` (a box that hangs inside a transaction
loses it, and its row locks, to the server) and an `application_name` naming the box in
`pg_stat_activity`. Times are read and compared in UTC.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url

from edged.store.errors import UnsupportedDatabase

# pg_advisory_xact_lock key taken by every migration: two boxes starting at once never migrate
# one database together ("edgedsch" in ASCII).
MIGRATION_LOCK = 0x6564676564736368


@dataclass(frozen=True)
class PgOptions:
    """Connection settings (config `postgres:`; the defaults suit a box on a LAN or a flaky WAN)."""

    pool_size: int = 2
    max_overflow: int = 3
    connect_timeout_s: int = 10
    statement_timeout_s: float = 60.0
    idle_in_transaction_timeout_s: float = 60.0
    keepalive_idle_s: int = 30
    keepalive_interval_s: int = 10
    keepalive_count: int = 3
    application_name: str = "edged"


def with_driver(url: str) -> URL:
    """A bare `postgresql://` URL means psycopg 3 here (SQLAlchemy 2.0 would take psycopg2, which
    edged does not install); a URL naming its driver keeps it."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg") if parsed.drivername == "postgresql" else parsed


def shown(url: str) -> str:
    """A URL fit for a message: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def open_postgres(url: str, readonly: bool, options: PgOptions) -> Engine:
    connect_args = {
        "connect_timeout": options.connect_timeout_s,
        "keepalives": 1,
        "keepalives_idle": options.keepalive_idle_s,
        "keepalives_interval": options.keepalive_interval_s,
        "keepalives_count": options.keepalive_count,
        "application_name": options.application_name[:63],  # the server cuts it at 63 bytes anyway
    }
    try:
        engine = create_engine(with_driver(url), pool_size=options.pool_size, max_overflow=options.max_overflow,
                               pool_pre_ping=True, pool_recycle=1800, connect_args=connect_args)
    except ModuleNotFoundError as error:
        raise UnsupportedDatabase(f"database {shown(url)} is PostgreSQL, whose driver is not installed"
                                  f" ({error.name}): pip install 'edged[postgres]'") from None

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # DB-API objects
        # Set per session rather than in the URL's `options`, which stays the operator's
        # (a search_path, a role).
        with dbapi_conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(f"SET statement_timeout = {int(options.statement_timeout_s * 1000)}")
            idle_ms = int(options.idle_in_transaction_timeout_s * 1000)
            cur.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
            if readonly:
                cur.execute("SET default_transaction_read_only = on")
        dbapi_conn.commit()

    return engine


CLOCK_SYNC_S = 30.0


def server_clock(engine: Engine, sync_s: float = CLOCK_SYNC_S) -> Callable[[], datetime]:
    """The server's time, for every queue time: boxes whose clocks disagree still agree on when a
    lease expires and a retry is due.

    Asking the server on every state change would cost a round trip each; instead the server's
    time is read every `sync_s` and carried forward on this box's monotonic clock, which no
    NTP step or operator's `date -s` moves. Between two reads the error is the monotonic
    clock's drift (parts per million) plus half a round trip.
    """
    synced: list[tuple[float, datetime]] = []

    def now() -> datetime:
        mono = time.monotonic()
        if not synced or mono - synced[0][0] >= sync_s:
            with engine.connect() as conn:
                sent = time.monotonic()
                value = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
                back = time.monotonic()
                conn.rollback()
            # The server read its clock about halfway through the round trip.
            synced[:] = [((sent + back) / 2, value.astimezone(timezone.utc))]
            mono = time.monotonic()
        at, value = synced[0]
        return value + timedelta(seconds=mono - at)

    return now
