"""Mode "ship": the scheduled job that copies the box's changed rows into the fleet's PostgreSQL.

Offline first: the box's SQLite queue is the system of record and nothing the worker does
waits for the central database. Each round takes the outbox's oldest rows, upserts their
current state centrally in one transaction (store/central.py: a row only ever moves to a newer
state), then deletes them from the outbox. A round that cannot reach the server records why
and leaves everything for the next; a shipper killed between the central commit and the
outbox delete sends the same rows again, which changes nothing.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sqlalchemy import Engine, exc

from edged import __version__
from edged.logs import get_logger
from edged.store import StoreUnavailable, open_engine
from edged.store.central import Central, CentralMismatch, local_columns
from edged.store.errors import unavailable_reason
from edged.store.outbox import Outbox
from edged.store.postgres import PgOptions, shown
from edged.store.stats import Stats
from edged.timeutil import now_iso

log = get_logger("edged.shipper")


@dataclass(frozen=True)
class Round:
    rows: int  # table rows stored centrally (newer states; replays included)
    batches: int
    backlog: int  # outbox rows left
    error: Optional[str] = None


class Shipper:
    def __init__(self, local: Engine, url: str, box_id: str, options: PgOptions, batch_rows: int = 1000,
                 after_upsert: Callable[[], None] = lambda: None) -> None:
        self.local = local
        self.url = url
        self.box_id = box_id
        self.options = options
        self.batch_rows = batch_rows
        self.after_upsert = after_upsert  # between the central commit and the outbox delete (fault tests)
        self.outbox = Outbox(local)
        self._central: Optional[Central] = None

    def enable(self) -> int:
        """Start keeping changes for the central database named by the URL; rows queued at once."""
        queued = self.outbox.enable(shown(self.url))
        if queued:
            log.info("ship_backfill", rows=queued, central=shown(self.url),
                     detail="every row this box holds is shipped once")
        return queued

    def _connect(self) -> Central:
        if self._central is None:
            engine = open_engine(self.url, postgres=self.options)
            central = Central(engine, self.box_id, self.outbox.state().database_id)
            try:
                central.ensure(local_columns(self.local))
            except BaseException:
                engine.dispose()
                raise
            self._central = central
        return self._central

    def _facts(self, runtime: dict[str, Any], backlog: int) -> dict[str, Any]:
        return {"host": socket.gethostname(), "model": runtime.get("model"), "provider": runtime.get("provider"),
                "edged_version": __version__, "backlog": backlog, "json": json.dumps(runtime, sort_keys=True)}

    def round(self, max_seconds: float = 60.0) -> Round:
        """Ship until the outbox is empty or `max_seconds` have passed; never raises for the central side."""
        rows = batches = 0
        deadline = time.monotonic() + max_seconds
        try:
            central = self._connect()
            # Counted once a round, not per batch: a backlog of days would make each count a scan.
            backlog = self.outbox.state().backlog
            runtime = Stats(self.local).runtime()
            while True:
                batch = self.outbox.pending(self.batch_rows)
                if batch.empty:
                    break
                backlog = max(backlog - batch.entries, 0)
                rows += central.upsert(batch, self._facts(runtime, backlog))
                self.after_upsert()
                self.outbox.shipped(batch, now_iso())
                batches += 1
                if time.monotonic() > deadline:
                    break
        except StoreUnavailable as error:
            return self._failed(rows, batches, str(error))
        except CentralMismatch as error:
            return self._failed(rows, batches, str(error))
        except exc.DBAPIError as error:
            reason = unavailable_reason(error) or f"{type(error.orig).__name__}: {error.orig}"
            return self._failed(rows, batches, reason)
        if batches == 0:
            self.outbox.tried(now_iso(), None)
        left = self.outbox.state().backlog
        if rows:
            log.info("shipped", rows=rows, batches=batches, backlog=left, central=shown(self.url))
        return Round(rows, batches, left)

    def _failed(self, rows: int, batches: int, error: str) -> Round:
        self._drop()
        try:
            self.outbox.tried(now_iso(), error)
            left = self.outbox.state().backlog
        except StoreUnavailable:
            left = -1  # the box's own database cannot take the note either (a full disk): said elsewhere
        log.warning("ship_failed", error=error, shipped_rows=rows, backlog=left, central=shown(self.url),
                    detail="the rows wait in the outbox; work goes on and the next round tries again")
        return Round(rows, batches, left, error)

    def _drop(self) -> None:
        if self._central is not None:
            self._central.engine.dispose()
            self._central = None

    def close(self) -> None:
        self._drop()
