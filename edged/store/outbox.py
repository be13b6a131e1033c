"""The box's side of mode "ship": the outbox that SQLite triggers fill, read and emptied by the shipper.

The box's SQLite queue stays the system of record; the outbox (schema v7) says which rows
changed since the central database last took them. A row's *current* state is what ships,
tagged with the seq of the newest outbox row it answers for, so a batch replayed after a crash
or arriving out of order can never overwrite a newer state centrally (central.py keeps the
highest seq it took). Rows leave the outbox only after the central commit; a shipper killed
in between sends them again, harmlessly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from sqlalchemy import Engine

from edged.store.db import read, run, write

SHIPPED = ("jobs", "results", "files", "job_attempts", "throughput")

# Rows already in the database when shipping is turned on: all of them are due once.
_BACKFILL = {table: f"INSERT INTO outbox (tbl, row_id, job_id) SELECT '{table}', id, {job} FROM {table} ORDER BY id"
             for table, job in (("jobs", "id"), ("results", "job_id"), ("files", "job_id"),
                                ("job_attempts", "job_id"), ("throughput", "NULL"))}


@dataclass
class Batch:
    """The oldest rows of the outbox, as their tables hold them now: table -> [(seq, row)]."""

    last_seq: int = 0
    entries: int = 0  # outbox rows this batch answers for (several may name one table row)
    rows: dict[str, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.entries == 0


@dataclass(frozen=True)
class ShipState:
    enabled: bool
    central: Optional[str]
    database_id: str
    backlog: int
    shipped_rows: int
    last_ok_at: Optional[str]
    last_try_at: Optional[str]
    last_error: Optional[str]


class Outbox:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def enable(self, central: str) -> int:
        """Ship from now on to `central` (a URL with its password masked); return the rows queued.

        The first time, and whenever the central database named changes, every row the box
        holds is queued once: the central copy must hold all of it, not only what changes next.
        """
        with write(self.engine) as conn:
            enabled, had = run(conn, "SELECT enabled, central FROM ship_state WHERE id = 1").one()
            if enabled and had == central:
                return 0
            run(conn, "DELETE FROM outbox")
            run(conn, "UPDATE ship_state SET enabled = 1, central = :central, shipped_seq = 0, last_error = NULL,"
                      " database_id = COALESCE(database_id, :made) WHERE id = 1", central=central,
                made=uuid.uuid4().hex)
            for statement in _BACKFILL.values():
                run(conn, statement)
            return run(conn, "SELECT COUNT(*) FROM outbox").scalar_one()

    def disable(self) -> int:
        """Ship no more (nothing is written to the outbox); return the unshipped rows dropped."""
        with write(self.engine) as conn:
            dropped = run(conn, "SELECT COUNT(*) FROM outbox").scalar_one()
            run(conn, "UPDATE ship_state SET enabled = 0, central = NULL WHERE id = 1 AND enabled = 1")
            run(conn, "DELETE FROM outbox")
        return dropped

    def pending(self, limit: int) -> Batch:
        """The oldest `limit` outbox rows with the current state of the rows they name (one snapshot)."""
        batch = Batch()
        with read(self.engine) as conn:
            entries = run(conn, "SELECT seq, tbl, row_id FROM outbox ORDER BY seq LIMIT :n", n=limit).all()
            if not entries:
                return batch
            batch.entries, batch.last_seq = len(entries), entries[-1].seq
            newest: dict[str, dict[int, int]] = {}
            for seq, table, row_id in entries:
                newest.setdefault(table, {})[row_id] = seq  # ascending: the last one wins
            for table, seqs in newest.items():
                if table not in SHIPPED:
                    continue
                found = run(conn, f"SELECT * FROM {table} WHERE id IN :ids ORDER BY id", expanding=("ids",),
                            ids=list(seqs)).mappings().all()
                # A row gone since (a retention that ran before shipping was on) has nothing to send.
                batch.rows[table] = [(seqs[r["id"]], dict(r)) for r in found]
        return batch

    def shipped(self, batch: Batch, now: str) -> None:
        """The central database committed `batch`: its outbox rows go, the state says when."""
        with write(self.engine) as conn:
            run(conn, "DELETE FROM outbox WHERE seq <= :last", last=batch.last_seq)
            run(conn, "UPDATE ship_state SET shipped_seq = :last, shipped_rows = shipped_rows + :n, last_ok_at = :now,"
                      " last_try_at = :now, last_error = NULL WHERE id = 1", last=batch.last_seq,
                n=sum(len(r) for r in batch.rows.values()), now=now)

    def tried(self, now: str, error: Optional[str]) -> None:
        """A round that shipped nothing: an empty outbox (error None) or a central database out of reach."""
        with write(self.engine) as conn:
            if error is None:
                run(conn, "UPDATE ship_state SET last_try_at = :now, last_ok_at = :now, last_error = NULL WHERE id = 1",
                    now=now)
            else:
                run(conn, "UPDATE ship_state SET last_try_at = :now, last_error = :error WHERE id = 1", now=now,
                    error=error)

    def state(self) -> ShipState:
        with read(self.engine) as conn:
            s = run(conn, "SELECT enabled, central, database_id, shipped_rows, last_ok_at, last_try_at, last_error"
                          " FROM ship_state WHERE id = 1").one()
            backlog = run(conn, "SELECT COUNT(*) FROM outbox").scalar_one()
        return ShipState(bool(s.enabled), s.central, s.database_id or "", backlog, s.shipped_rows, s.last_ok_at,
                         s.last_try_at, s.last_error)
