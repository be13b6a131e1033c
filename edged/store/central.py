"""The fleet's side of mode "ship": one PostgreSQL database holding every box's rows.

Each shipped table `t` of a box has a central twin `fleet_t`: the box's columns, plus `box_id`
(whose row it is), `seq` (the newest outbox row of the box this state answers for) and
`shipped_at` (the server's time of the commit), keyed by (box_id, id). An upsert changes a row
only when its seq is newer than the one held, so a batch replayed after a crash, or two
batches in the wrong order, leave the newer state. The columns follow the boxes: a box whose
schema has a column the central table lacks adds it (`ADD COLUMN IF NOT EXISTS`), so boxes
of different versions ship into one database; a column an older box lacks stays NULL.
`fleet_boxes` says who ships, what it runs and when it last shipped.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Connection, Engine, inspect, text

from edged.pathnames import from_db, to_db
from edged.store.db import read, run, write
from edged.store.outbox import SHIPPED, Batch

# pg_advisory_xact_lock key of the central schema ("edgedflt"): boxes starting together add
# tables and columns one at a time.
FLEET_LOCK = 0x6564676564666C74

_TYPES = {"INTEGER": "BIGINT", "REAL": "DOUBLE PRECISION", "TEXT": "TEXT", "BLOB": "TEXT"}
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS fleet_jobs_status ON fleet_jobs (status, finished_at)",
    "CREATE INDEX IF NOT EXISTS fleet_jobs_finished ON fleet_jobs (finished_at)",
    "CREATE INDEX IF NOT EXISTS fleet_results_job ON fleet_results (box_id, job_id)",
    "CREATE INDEX IF NOT EXISTS fleet_files_job ON fleet_files (box_id, job_id)",
    "CREATE INDEX IF NOT EXISTS fleet_job_attempts_job ON fleet_job_attempts (box_id, job_id)",
]


# The central key and bookkeeping: a box's own column of one of these names (files.box_id, ''
# on a box of its own) is left out, the central box_id being the one that counts.
_CENTRAL = frozenset({"box_id", "seq", "shipped_at"})


class CentralMismatch(Exception):
    """The central rows under this box_id came from another database file."""


def local_columns(engine: Engine) -> dict[str, list[tuple[str, str]]]:
    """table -> [(column, SQLite declared type)] of the box's shipped tables."""
    insp = inspect(engine)
    return {t: [(c["name"], str(c["type"]).upper()) for c in insp.get_columns(t) if c["name"] not in _CENTRAL]
            for t in SHIPPED}


def _text_value(value: Any) -> Any:
    """A BLOB (a file name that is not UTF-8) as the marked text PostgreSQL's columns take."""
    return to_db(from_db(value), blob=False) if isinstance(value, bytes) else value


class Central:
    def __init__(self, engine: Engine, box_id: str, database_id: str) -> None:
        self.engine = engine
        self.box_id = box_id
        self.database_id = database_id
        self.columns: dict[str, list[str]] = {}

    def ensure(self, columns: dict[str, list[tuple[str, str]]]) -> None:
        """Create the central tables, or add the columns this box has that they lack; claim box_id."""
        with write(self.engine) as conn:
            run(conn, "SELECT pg_advisory_xact_lock(:key)", key=FLEET_LOCK)
            run(conn, "CREATE TABLE IF NOT EXISTS fleet_boxes (box_id TEXT PRIMARY KEY, database_id TEXT NOT NULL,"
                      " host TEXT, model TEXT, provider TEXT, edged_version TEXT, first_shipped_at TEXT NOT NULL,"
                      " last_shipped_at TEXT NOT NULL, backlog BIGINT, facts TEXT)")
            for table, cols in columns.items():
                run(conn, f"CREATE TABLE IF NOT EXISTS fleet_{table} (box_id TEXT NOT NULL, id BIGINT NOT NULL,"
                          " seq BIGINT NOT NULL, shipped_at TEXT NOT NULL, PRIMARY KEY (box_id, id))")
                for name, kind in cols:
                    if name != "id":
                        run(conn, f"ALTER TABLE fleet_{table} ADD COLUMN IF NOT EXISTS {name}"
                                  f" {_TYPES.get(kind.split('(')[0], 'TEXT')}")
                self.columns[table] = [name for name, _ in cols]
            for statement in _INDEXES:
                run(conn, statement)
            self._claim_box(conn)

    def _claim_box(self, conn: Connection) -> None:
        held = run(conn, "SELECT database_id FROM fleet_boxes WHERE box_id = :box", box=self.box_id).scalar()
        if held is not None and held != self.database_id:
            raise CentralMismatch(
                f"the central database holds rows of box {self.box_id!r} from another database file (a box"
                " reinstalled or restored with the same box_id): its local ids start again and would overwrite"
                " them. Give this box a box_id of its own, or delete the old box's rows centrally"
                f" (DELETE FROM fleet_boxes WHERE box_id = '{self.box_id}', and its fleet_* rows)")
        if held is None:
            run(conn, "INSERT INTO fleet_boxes (box_id, database_id, first_shipped_at, last_shipped_at)"
                      " VALUES (:box, :db, :now, :now) ON CONFLICT (box_id) DO NOTHING",
                box=self.box_id, db=self.database_id, now=_now(conn))

    def upsert(self, batch: Batch, facts: dict[str, Any]) -> int:
        """Store a batch's rows (each only over an older state) and the box's facts, in one transaction."""
        stored = 0
        with write(self.engine) as conn:
            now = _now(conn)
            for table, rows in batch.rows.items():
                if rows:
                    stored += self._upsert(conn, table, rows, now)
            run(conn, "UPDATE fleet_boxes SET host = :host, model = :model, provider = :provider,"
                      " edged_version = :version, last_shipped_at = :now, backlog = :backlog, facts = :facts"
                      " WHERE box_id = :box AND database_id = :db",
                box=self.box_id, db=self.database_id, now=now, host=facts.get("host"), model=facts.get("model"),
                provider=facts.get("provider"), version=facts.get("edged_version"), backlog=facts.get("backlog"),
                facts=facts.get("json"))
        return stored

    def _upsert(self, conn: Connection, table: str, rows: Sequence[tuple[int, dict[str, Any]]], now: str) -> int:
        cols = [c for c in self.columns[table] if c != "id"]
        names = ", ".join(["box_id", "id", *cols, "seq", "shipped_at"])
        values = ", ".join([":box_id", ":id", *(f":c_{c}" for c in cols), ":seq", ":shipped_at"])
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*cols, "seq", "shipped_at"])
        statement = (f"INSERT INTO fleet_{table} ({names}) VALUES ({values}) ON CONFLICT (box_id, id) DO UPDATE SET"
                     f" {updates} WHERE fleet_{table}.seq < excluded.seq")
        params = [{"box_id": self.box_id, "id": row["id"], "seq": seq, "shipped_at": now,
                   **{f"c_{c}": _text_value(row.get(c)) for c in cols}} for seq, row in rows]
        conn.execute(text(statement), params)  # executemany: psycopg pipelines the rows
        return len(params)


def _now(conn: Connection) -> str:
    # exec_driver_sql: the format's colons are not binds.
    return conn.exec_driver_sql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                                ).scalar_one()


def fleet_summary(engine: Engine) -> list[dict[str, Any]]:
    """Every box that ships here: who, what it runs, when it last shipped, its jobs by state."""
    with read(engine) as conn:
        if not inspect(conn).has_table("fleet_boxes"):
            return []
        boxes = [dict(r) for r in run(conn, "SELECT box_id, host, model, provider, edged_version, first_shipped_at,"
                                            " last_shipped_at, backlog FROM fleet_boxes ORDER BY box_id").mappings()]
        counts: dict[str, dict[str, int]] = {}
        if inspect(conn).has_table("fleet_jobs"):
            for box, status, n in run(conn, "SELECT box_id, status, COUNT(*) FROM fleet_jobs GROUP BY box_id, status"):
                counts.setdefault(box, {})[status] = n
    for b in boxes:
        b["jobs"] = {s: counts.get(b["box_id"], {}).get(s, 0) for s in ("queued", "running", "done", "failed")}
    return boxes
