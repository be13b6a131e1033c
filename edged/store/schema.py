"""Tables and append-only schema migrations.

Migrations are a list: a released entry is never edited, a change is a new entry (the way
simonw/llm does it). `schema_migrations` records what was applied, so an old database file
upgrades itself at start-up. The migrations are the one description of the schema.

They are written in SQLite's spelling; `for_backend` gives PostgreSQL's, where the types differ
(64-bit integers, identity keys, double precision) and nothing else. The rules are few and
exact on purpose: a statement that needs more than a type's name changed is written for each
backend (a dict of backend -> statement in the list).
"""

from __future__ import annotations

import re
from typing import Optional, Union

from sqlalchemy import Connection, Engine, inspect

from edged.exitcodes import EdgedError, ExitCode
from edged.store.db import Backend, DatabaseMissing, backend, read, run, write
from edged.store.postgres import MIGRATION_LOCK
from edged.timeutil import now_iso

Statement = Union[str, dict[str, Optional[str]]]  # None: nothing to do on that backend

MIGRATIONS: list[list[Statement]] = [
    # v1: the queue, its results, and the files that brought each job in.
    [
        """
        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            task TEXT NOT NULL,
            params TEXT NOT NULL DEFAULT '{}',
            model TEXT NOT NULL DEFAULT '',
            source_path TEXT NOT NULL,
            sha256 TEXT,
            size_bytes INTEGER,
            status TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            next_run_at TEXT NOT NULL,
            lease_owner TEXT,
            lease_pid INTEGER,
            lease_expires_at TEXT
        )
        """,
        # One job per content, task, parameters and model. Refused inputs (never read) have
        # no sha256; NULLs are distinct in SQLite, so each refusal is its own job.
        "CREATE UNIQUE INDEX jobs_identity ON jobs (task, sha256, params, model)",
        "CREATE INDEX jobs_ready ON jobs (status, next_run_at)",
        "CREATE INDEX jobs_finished ON jobs (finished_at)",
        """
        CREATE TABLE results (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL UNIQUE REFERENCES jobs (id) ON DELETE CASCADE,
            task TEXT NOT NULL,
            output TEXT NOT NULL,
            model TEXT NOT NULL,
            prompt_tokens INTEGER,
            output_tokens INTEGER,
            duration_ms INTEGER,
            created_at TEXT NOT NULL
        )
        """,
        "CREATE INDEX results_created ON results (created_at)",
        """
        CREATE TABLE files (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            path TEXT NOT NULL,
            size_bytes INTEGER,
            mtime_ns INTEGER,
            ctime_ns INTEGER,
            inode INTEGER,
            state TEXT NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'done', 'failed', 'superseded', 'missing')),
            duplicate INTEGER NOT NULL DEFAULT 0,
            received_at TEXT NOT NULL,
            settled_at TEXT,
            moved_to TEXT
        )
        """,
        # A path in the inbox belongs to at most one unsettled file record.
        "CREATE UNIQUE INDEX files_pending_path ON files (path) WHERE state = 'pending'",
        "CREATE INDEX files_job ON files (job_id, state)",
    ],
    # v2: per-period throughput for SQL, and what the running daemon reports about itself.
    [
        """
        CREATE TABLE throughput (
            id INTEGER PRIMARY KEY,
            period_start TEXT NOT NULL,
            period_end TEXT NOT NULL,
            jobs_done INTEGER NOT NULL,
            jobs_failed INTEGER NOT NULL,
            jobs_retried INTEGER NOT NULL,
            batches INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            engine_ms INTEGER NOT NULL,
            avg_wait_ms INTEGER,
            output_tok_per_s REAL,
            queued INTEGER NOT NULL,
            queued_by_task TEXT NOT NULL DEFAULT '{}',
            model TEXT,
            provider TEXT
        )
        """,
        "CREATE INDEX throughput_end ON throughput (period_end)",
        """
        CREATE TABLE runtime (
            key TEXT PRIMARY KEY,
            value TEXT,
            updated_at TEXT NOT NULL
        )
        """,
    ],
    # v3: jobs spawned by other jobs (OCR -> translate). A child's input is its parent's
    # result; children are not deduplicated by content (each source image keeps its own
    # translation), and a parent spawns at most one child per task.
    [
        "ALTER TABLE jobs ADD COLUMN parent_id INTEGER REFERENCES jobs (id) ON DELETE CASCADE",
        "DROP INDEX jobs_identity",
        "CREATE UNIQUE INDEX jobs_identity ON jobs (task, sha256, params, model) WHERE parent_id IS NULL",
        "CREATE UNIQUE INDEX jobs_parent ON jobs (parent_id, task) WHERE parent_id IS NOT NULL",
    ],
    # v4: what a file's trouble needs recorded so that it stays that file's own. (From v4 on,
    # files.path, moved_to and result_file hold a BLOB of the name's bytes when they are not
    # UTF-8; jobs.source_path holds a readable form with the bytes as \\xNN.)
    [
        # Settled by a copy because the daemon may not remove it from a producer's folder:
        # the original stays in the inbox, and intake knows it by this row.
        "ALTER TABLE files ADD COLUMN left_in_inbox INTEGER NOT NULL DEFAULT 0",
        # Where the input went and what it is there: retention deletes only that inode.
        "ALTER TABLE files ADD COLUMN moved_inode INTEGER",
        "ALTER TABLE files ADD COLUMN result_file TEXT",
        # Why the last attempt to move it out of the inbox failed (upkeep tries again).
        "ALTER TABLE files ADD COLUMN settle_error TEXT",
        "CREATE INDEX files_left ON files (path) WHERE left_in_inbox = 1",
        # Crash attribution: how many jobs were claimed together with this one, and whether
        # it was running when a process died (then it runs alone until it ends).
        "ALTER TABLE jobs ADD COLUMN lease_batch INTEGER",
        "ALTER TABLE jobs ADD COLUMN solo INTEGER NOT NULL DEFAULT 0",
        # Deaths of the worker while this job ran alone that nothing explains (no fault, no OOM
        # recorded): a SIGKILL from outside looks the same, so these count apart.
        "ALTER TABLE jobs ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
    ],
    # v5: every attempt of a job, kept across `edged retry` (which resets jobs.attempts and
    # jobs.error): a round is one set of attempts, and each operator retry (or the same file
    # dropped again after a failure) starts the next. History begins with this migration.
    [
        "ALTER TABLE jobs ADD COLUMN round INTEGER NOT NULL DEFAULT 1",
        """
        CREATE TABLE job_attempts (
            id INTEGER PRIMARY KEY,
            job_id INTEGER NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            round INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT,
            outcome TEXT NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'done', 'retry', 'failed', 'released', 'interrupted')),
            error TEXT
        )
        """,
        "CREATE INDEX job_attempts_job ON job_attempts (job_id, id)",
    ],
    # v6: `edged results --follow` asks each second for what changed since its last poll: the
    # attempts that ended since then, found by this index rather than by reading every attempt.
    [
        "CREATE INDEX job_attempts_finished ON job_attempts (finished_at)",
    ],
    # v7: the outbox of mode "ship" (store/outbox.py). While shipping is on (ship_state.enabled),
    # every insert and update of a shipped table adds a row here in the same transaction as the
    # change, so a change and its outbox row commit or roll back together; the shipper sends
    # the rows' current state and deletes what the central database took. AUTOINCREMENT: a seq
    # is never reused after its row is deleted (the central copy keeps the highest seq it took,
    # and refuses any state older than that). Deletions are not shipped: retention keeps what
    # is unshipped, and the central copy keeps its own history. A PostgreSQL store is central
    # already: there the tables exist (the SQL that reads them is the same) and stay empty.
    [
        {"sqlite": "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL,"
                   " row_id INTEGER NOT NULL, job_id INTEGER)",
         "postgresql": "CREATE TABLE outbox (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl TEXT NOT NULL,"
                       " row_id BIGINT NOT NULL, job_id BIGINT)"},
        "CREATE INDEX outbox_job ON outbox (job_id)",
        """
        CREATE TABLE ship_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            enabled INTEGER NOT NULL DEFAULT 0,
            central TEXT,
            -- Names this database file to the central one: a box whose database was replaced
            -- (same box_id, ids counting from 1 again) must not overwrite its old rows there.
            database_id TEXT,
            shipped_seq INTEGER NOT NULL DEFAULT 0,
            shipped_rows INTEGER NOT NULL DEFAULT 0,
            last_ok_at TEXT,
            last_try_at TEXT,
            last_error TEXT
        )
        """,
        "INSERT INTO ship_state (id, enabled) VALUES (1, 0)",
        # One trigger per shipped table and kind of change (v7's own list: never to be edited).
        *({"sqlite": f"CREATE TRIGGER outbox_{table}_{op.lower()} AFTER {op} ON {table}"
                     " WHEN (SELECT enabled FROM ship_state) BEGIN INSERT INTO outbox (tbl, row_id, job_id)"
                     f" VALUES ('{table}', NEW.id, {job}); END",
           "postgresql": None}
          for table, job in (("jobs", "NEW.id"), ("results", "NEW.job_id"), ("files", "NEW.job_id"),
                             ("job_attempts", "NEW.job_id"), ("throughput", "NULL"))
          for op in ("INSERT", "UPDATE")),
    ],
    # v8: mode "shared" (boxes of one site on one PostgreSQL queue). A file row belongs to the
    # box whose spool holds it ('' on a box of its own), and a path is unique per box; a job
    # remembers the box that queued it and whether its input is in the database (a blob, or a
    # parent's result), which is what lets another box run it. Blobs are inputs by sha256.
    # `boxes` says who is there and what each can run; throughput rows, results and attempts say
    # whose they are.
    [
        "ALTER TABLE files ADD COLUMN box_id TEXT NOT NULL DEFAULT ''",
        "DROP INDEX files_pending_path",
        "CREATE UNIQUE INDEX files_pending_path ON files (box_id, path) WHERE state = 'pending'",
        "ALTER TABLE jobs ADD COLUMN origin_box TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN input_in_db INTEGER NOT NULL DEFAULT 0",
        "UPDATE jobs SET input_in_db = 1 WHERE parent_id IS NOT NULL",
        "ALTER TABLE throughput ADD COLUMN box_id TEXT NOT NULL DEFAULT ''",
        # Which box ran it (its box_id): written by every box, in every mode.
        "ALTER TABLE results ADD COLUMN box_id TEXT",
        "ALTER TABLE job_attempts ADD COLUMN box_id TEXT",
        {"sqlite": "CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, size_bytes INTEGER NOT NULL,"
                   " created_at TEXT NOT NULL)",
         "postgresql": "CREATE TABLE blobs (sha256 TEXT PRIMARY KEY, data BYTEA NOT NULL, size_bytes BIGINT NOT NULL,"
                       " created_at TEXT NOT NULL)"},
        """
        CREATE TABLE boxes (
            box_id TEXT PRIMARY KEY,
            host TEXT,
            pid INTEGER,
            model TEXT,
            provider TEXT,
            tasks TEXT NOT NULL DEFAULT '[]',
            started_at TEXT,
            last_seen_at TEXT NOT NULL
        )
        """,
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)

# (pattern, PostgreSQL spelling), applied in order. SQLite's INTEGER is 64 bits wide, and its
# `INTEGER PRIMARY KEY` is the row id that numbers itself; PostgreSQL's INTEGER is 32 bits
# (an mtime in ns or a file size would not fit).
_POSTGRES_TYPES = [
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
]


def for_backend(statement: Statement, kind: Backend) -> Optional[str]:
    """A migration statement in the spelling of `kind` (None: that backend has nothing to do)."""
    if isinstance(statement, dict):
        return statement[kind]
    if kind == "sqlite":
        return statement
    for pattern, spelling in _POSTGRES_TYPES:
        statement = pattern.sub(spelling, statement)
    return statement


def _begin_migrations(conn: Connection) -> None:
    """Create the bookkeeping table, holding the lock that keeps two processes from migrating at once."""
    if backend(conn) == "postgresql":
        # SQLite's BEGIN IMMEDIATE already holds the database's write lock; a PostgreSQL server
        # is shared by boxes that may all start at once: they queue on one advisory lock, held
        # until this transaction ends.
        run(conn, "SELECT pg_advisory_xact_lock(:key)", key=MIGRATION_LOCK)
    run(conn, "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at TEXT NOT NULL)")


class SchemaMismatch(EdgedError):
    """The database is not at this edged's schema, and only the daemon may change that."""

    code = ExitCode.DATABASE


def current_version(engine: Engine) -> int:
    with read(engine) as conn:
        if not inspect(conn).has_table("schema_migrations"):
            return 0
        return run(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").scalar_one()


def migrate(engine: Engine) -> list[int]:
    """Apply every migration newer than the database; return the versions applied."""
    applied: list[int] = []
    with write(engine) as conn:
        _begin_migrations(conn)
        kind = backend(conn)
        have = run(conn, "SELECT COALESCE(MAX(version), 0) FROM schema_migrations").scalar_one()
        if have > SCHEMA_VERSION:
            raise SchemaMismatch(
                f"database schema v{have} is newer than this edged (v{SCHEMA_VERSION}); upgrade edged"
            )
        for version in range(have + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[version - 1]:
                spelled = for_backend(statement, kind)
                if spelled is not None:
                    run(conn, spelled)
            run(conn, "INSERT INTO schema_migrations (version, applied_at) VALUES (:v, :now)", v=version, now=now_iso())
            applied.append(version)
    return applied


def require_current(engine: Engine) -> None:
    """For the operator's commands: the schema as this edged knows it, or a message naming the fix."""
    have = current_version(engine)
    if have == 0:
        # Not the operator's trouble: an empty file, or a server database no daemon has started on.
        raise DatabaseMissing("the database has no edged tables yet: the daemon creates them when it first starts")
    if have < SCHEMA_VERSION:
        raise SchemaMismatch(f"the database is at schema v{have}, this edged expects v{SCHEMA_VERSION}: restart the"
                             " daemon once (only the daemon migrates), then run this again")
    if have > SCHEMA_VERSION:
        raise SchemaMismatch(f"database schema v{have} is newer than this edged (v{SCHEMA_VERSION}); upgrade edged")
