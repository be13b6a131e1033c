"""The daemon's scheduled jobs (APScheduler): rescan, lease recovery, summaries, upkeep, disk.

Each job has `coalesce` and `max_instances=1`: after a pause (a suspended box, a long
checkpoint) it runs once, not once per missed interval, and never twice at the same time.
A job's failure is logged and the next run tries again; a full disk is a line, not a traceback.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

from apscheduler.schedulers.background import BackgroundScheduler

from edged.config import Settings
from edged.logs import get_logger
from edged.store import StoreUnavailable

log = get_logger("edged.schedule")

DISK_CHECK_SECONDS = 5.0  # statvfs is cheap; a filling disk should pause intake within seconds


def intervals(s: Settings) -> dict[str, float]:
    """Seconds between runs of each scheduled job."""
    return {"rescan": s.watch.rescan_seconds, "recover": s.queue.recover_seconds,
            "summary": s.schedule.summary_seconds, "maintenance": s.schedule.maintenance_seconds,
            "disk": DISK_CHECK_SECONDS, "ship": s.ship.interval_seconds}


def _guarded(job_id: str, func: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            func()
        except StoreUnavailable as exc:
            log.warning("scheduled_job_deferred", job=job_id, error=str(exc))
        except Exception:
            log.exception("scheduled_job_error", job=job_id)
    return run


class Schedule:
    def __init__(self, settings: Settings, jobs: Mapping[str, Callable[[], Any]]) -> None:
        self._intervals = intervals(settings)
        self._scheduler: Optional[BackgroundScheduler] = BackgroundScheduler(timezone="UTC")
        for job_id, seconds in self._intervals.items():
            self._scheduler.add_job(_guarded(job_id, jobs[job_id]), "interval", seconds=seconds, id=job_id,
                                    coalesce=True, max_instances=1)

    def start(self) -> None:
        if self._scheduler is not None:
            self._scheduler.start()

    def apply(self, settings: Settings) -> None:
        new = intervals(settings)
        for job_id, seconds in new.items():
            if self._scheduler is not None and self._intervals[job_id] != seconds:
                self._scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
        self._intervals = new

    def shutdown(self) -> None:
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
