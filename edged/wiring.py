"""The one place that opens the parts (store, spool, settler) for the daemon, the commands,
the tests and the benchmarks, so that each opens them the same way."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url

from edged.config import Settings
from edged.engine.api import Engine
from edged.engine.loader import load_engine, model_name
from edged.intake import Intake
from edged.settle import Settler
from edged.spool import IgnoreRules, SpoolFiles, SpoolLayout
from edged.store import Queue, open_queue
from edged.tasks import TASK_NAMES

Access = Literal["daemon", "write", "read"]


def lock_path(settings: Settings) -> Path:
    """Next to the database file, so two configs sharing one database still exclude each other."""
    db = make_url(settings.database_url).database
    return Path(db + ".lock") if db and db != ":memory:" else settings.state_dir / "edged.lock"


def spool_lock_path(settings: Settings) -> Path:
    """In the spool root (a dotfile, outside inbox/): two daemons with different databases must
    not both take the same spool's files."""
    return settings.spool_dir / ".edged.lock"


def build_queue(settings: Settings, access: Access = "daemon") -> Queue:
    """The daemon's queue creates and migrates the database; the commands' never change its
    shape ("write": rows only, "read": nothing at all)."""
    q = settings.queue
    return open_queue(settings.database_url, readonly=access == "read", migrate_schema=access == "daemon",
                      max_attempts=q.max_attempts, backoff_seconds=q.backoff_seconds,
                      backoff_max_seconds=q.backoff_max_seconds, lease_seconds=q.lease_seconds)


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
