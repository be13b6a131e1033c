"""The one place that opens the parts (store, spool, settler) for the daemon, the commands,
the tests and the benchmarks, so that each opens them the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edged.box import box_id
from edged.config import Settings
from edged.engine.api import Engine
from edged.engine.loader import load_engine, model_name
from edged.intake import Intake
from edged.settle import Settler
from edged.spool import IgnoreRules, SpoolFiles, SpoolLayout
from edged.store import PgOptions, Queue, open_queue
from edged.store.db import sqlite_path
from edged.tasks import TASK_NAMES

Access = Literal["daemon", "write", "read"]


def lock_path(settings: Settings) -> Path:
    """Next to a SQLite database file, so two configs sharing one database still exclude each
    other; in the state folder for a server's database (which boxes share by design: what one
    box must exclude is a second daemon of its own)."""
    db = sqlite_path(settings.database_url)
    return Path(f"{db}.lock") if db is not None else settings.state_dir / "edged.lock"


def postgres_options(settings: Settings, box: str) -> PgOptions:
    p = settings.postgres
    return PgOptions(pool_size=p.pool_size, max_overflow=p.max_overflow, connect_timeout_s=p.connect_timeout_seconds,
                     statement_timeout_s=p.statement_timeout_seconds,
                     idle_in_transaction_timeout_s=p.idle_in_transaction_timeout_seconds,
                     keepalive_idle_s=p.keepalive_idle_seconds, application_name=f"edged {box}")


def spool_lock_path(settings: Settings) -> Path:
    """In the spool root (a dotfile, outside inbox/): two daemons with different databases must
    not both take the same spool's files."""
    return settings.spool_dir / ".edged.lock"


def build_queue(settings: Settings, access: Access = "daemon") -> Queue:
    """The daemon's queue creates and migrates the database; the commands' never change its
    shape ("write": rows only, "read": nothing at all)."""
    q = settings.queue
    box = box_id(settings, create=access == "daemon")
    return open_queue(settings.database_url, readonly=access == "read", migrate_schema=access == "daemon",
                      box_id=box, shared=settings.shared, postgres=postgres_options(settings, box),
                      max_attempts=q.max_attempts,
                      backoff_seconds=q.backoff_seconds, backoff_max_seconds=q.backoff_max_seconds,
                      lease_seconds=q.lease_seconds)


def load_model(settings: Settings) -> Engine:
    """The engine the config names, loaded once for the process (ModelUnavailable says what is wrong)."""
    return load_engine(settings.model, settings.model_dir)


def build_layout(settings: Settings) -> SpoolLayout:
    return SpoolLayout(settings.spool_dir, TASK_NAMES, IgnoreRules(settings.watch.ignore),
                       allow_hard_links=settings.spool.allow_hard_links)


@dataclass
class Parts:
    queue: Queue
    layout: SpoolLayout
    files: SpoolFiles
    settler: Settler

    def intake(self, settings: Settings) -> Intake:
        return Intake(settings, self.queue, self.layout, self.settler, model_name(settings.model, settings.model_dir))


def open_parts(settings: Settings, access: Access = "daemon") -> Parts:
    queue = build_queue(settings, access)
    layout = build_layout(settings)
    files = SpoolFiles(layout, settings.spool.write_result_files)
    return Parts(queue, layout, files, Settler(queue, files))
