"""Wiring for `edged run`: start-up order, scheduled jobs, signals, reload, and a graceful drain."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable, Optional

from apscheduler.schedulers.background import BackgroundScheduler

from edged import death, upkeep
from edged.config import ConfigError, Settings, load_config
from edged.engine.api import Engine, ModelUnavailable
from edged.engine.loader import load_engine, model_name
from edged.exitcodes import ExitCode
from edged.intake import Intake
from edged.lock import AlreadyLocked, StateLock
from edged.logs import configure_logging, get_logger
from edged.notify import Notifier
from edged.reload import changed_keys, live_settings, needs_restart
from edged.settle import Settler
from edged.spool import SpoolFiles, SpoolWatcher
from edged.spool.space import SpaceGuard
from edged.store import StoreUnavailable
from edged.store.db import sqlite_path
from edged.store.stats import Stats
from edged.tasks import TASK_NAMES
from edged.throughput import BatchReport, Meter, log_batch
from edged.timeutil import now_iso
from edged.windows import is_open, next_opening
from edged.wiring import build_layout, build_queue, lock_path, spool_lock_path
from edged.worker import Worker

log = get_logger("edged.daemon")

DISK_CHECK_SECONDS = 5.0  # statvfs is cheap; a filling disk should pause intake within seconds
STORE_RETRY_MAX_S = 30.0


class DrainTimeout(BaseException):
    """The batch in flight outlived the drain grace: its jobs are handed back, not finished."""


def intervals(s: Settings) -> dict[str, float]:
    """Seconds between runs of each scheduled job."""
    return {"rescan": s.watch.rescan_seconds, "recover": s.queue.recover_seconds,
            "summary": s.schedule.summary_seconds, "maintenance": s.schedule.maintenance_seconds,
            "disk": DISK_CHECK_SECONDS}


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = threading.Event()
        self._signals = 0
        self.watcher: Optional[SpoolWatcher] = None
        self.scheduler: Optional[BackgroundScheduler] = None
        self.engine: Optional[Engine] = None
        self.worker: Optional[Worker] = None
        self.meter: Optional[Meter] = None
        self.notify = Notifier()
        self.state: dict[str, Any] = {"pid": os.getpid(), "started_at": now_iso(), "intake_paused": False,
                                      "processing_open": True}

    # -- signals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame) -> None:  # noqa: ANN001 - signal frame
        self._signals += 1
        if self._signals > 1:
            signal.setitimer(signal.ITIMER_REAL, 0)  # no drain alarm in the middle of the release
            raise KeyboardInterrupt  # leases of the batch in flight are released on the way out
        grace = self.settings.queue.drain_grace_seconds
        log.info("stopping", signal=signal.Signals(signum).name, drain_grace_s=grace,
                 detail="no new batches; the batch in flight may finish within the grace; signal again to stop at once")
        self.notify.stopping()
        self.stop.set()
        self.wake.set()
        if grace <= 0:
            raise DrainTimeout
        signal.setitimer(signal.ITIMER_REAL, grace)

    def _on_alarm(self, _signum: int, _frame) -> None:  # noqa: ANN001
        raise DrainTimeout

    def _on_hup(self, _signum: int, _frame) -> None:  # noqa: ANN001
        self.reload_requested.set()
        self.wake.set()

    def run(self) -> ExitCode:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = StateLock(lock_path(s)).acquire()
        except AlreadyLocked as exc:
            log.error("already_running", error=str(exc))
            return ExitCode.ALREADY_RUNNING
        try:
            s.spool_dir.mkdir(parents=True, exist_ok=True)
            spool_lock = StateLock(spool_lock_path(s)).acquire()
        except AlreadyLocked as exc:
            lock.release()
            log.error("already_running", error=f"{exc}: another daemon (with another database) uses this spool")
            return ExitCode.ALREADY_RUNNING
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            return self._run()
        except DrainTimeout:
            log.warning("drain_timeout", grace_s=s.queue.drain_grace_seconds,
                        detail="the batch in flight was handed back to the queue; it runs again at the next start")
            return ExitCode.OK
        except KeyboardInterrupt:
            if self._signals < 2:
                raise
            log.warning("stopped_at_once", detail="second signal; the batch in flight was handed back")
            return ExitCode.OK
        finally:
            # Shutting down already: a further signal must not cut the flush or the lock release.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._shutdown()
            spool_lock.release()
            lock.release()

    def _until_stored(self, what: str, step: Callable[[], Any]) -> Any:
        """Run a start-up step, waiting (not exiting) while the database cannot take writes."""
        delay = 1.0
        while True:
            try:
                return step()
            except StoreUnavailable as exc:
                log.warning("store_unavailable", step=what, error=str(exc), retry_in_s=delay,
                            detail="waiting for the database to take writes (free some disk space)")
                self.notify.extend_timeout(600)
                self.notify.status(f"waiting for the database: {exc}")
                if self.stop.wait(delay):
                    raise DrainTimeout from None
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    # -- start-up ------------------------------------------------------------------------

    def _run(self) -> ExitCode:
        s = self.settings
        self.queue = queue = self._until_stored("open", lambda: build_queue(s))
        self.stats = Stats(queue.engine)
        cause = death.previous_death(s.state_dir)
        self._faults = death.watch_faults(s.state_dir)
        requeued, failed = self._until_stored(
            "recover", lambda: queue.recover(everything=True, cause=f"died of {cause}" if cause else None))
        if requeued or failed or cause:
            log.warning("recovered_jobs", requeued=requeued, failed=failed, cause=cause,
                        detail="jobs left running by a process that died: they run alone first, and only a job"
                               " that was running alone when the process died of a known cause is charged")
        layout = build_layout(s)
        for problem in layout.ensure():
            log.error("spool_folder_unusable", problem=problem,
                      detail="nothing is taken from or moved into it until it is a plain folder again")
        self.files = SpoolFiles(layout, s.spool.write_result_files)
        self.files.remove_debris()
        self.settler = settler = Settler(queue, self.files)
        self._until_stored("reconcile", lambda: settler.reconcile(force=True))

        model = model_name(s.model, s.model_dir)
        db_file = sqlite_path(s.database_url)
        self.guard = SpaceGuard({"spool": s.spool_dir, "state": db_file.parent if db_file else s.state_dir},
                                s.spool.min_free_mb, on_resume=self._rescan)
        self.guard.check()
        self._publish(model=model, provider=None, next_opening=None)  # replaces what the last run left
        self.intake = Intake(s, queue, layout, settler, model, on_queued=self.wake.set,
                             paused=lambda: self.guard.paused)
        self._until_stored("load", self.intake.load_known)
        self.watcher = SpoolWatcher(layout, s.watch.stability_seconds, self.intake.take, polling=s.watch.polling,
                                    poll_interval=s.watch.poll_interval_seconds)
        self.watcher.start()
        log.info("startup_scan", files=self.watcher.scan())
        self.meter = Meter(self.stats, model=model)
        self._start_scheduler()

        if s.model.path is None and s.model.engine == "onnx":
            log.info("default_model", path=str(s.model_dir),
                     detail="model.path is not set: using the built-in Gemma 3 270M (base model, text only)")
        log.info("loading_model", engine=s.model.engine, path=str(s.model_dir), model=model)
        self.notify.extend_timeout(600)
        self.notify.status(f"loading model {model}")
        try:
            self.engine = load_engine(s.model, s.model_dir)
        except ModelUnavailable as exc:
            log.error("model_unavailable", error=str(exc), detail="files keep being queued; fix the model and restart")
            return ExitCode.MODEL_UNAVAILABLE
        self.meter.provider = self.engine.provider
        self._publish(model=model, provider=self.engine.provider)
        if s.metrics.listen:
            from edged.metrics import EdgedCollector, serve

            serve(s.metrics.listen, EdgedCollector(queue.engine, self.meter, lambda: dict(self.state)))
        log.info("ready", model=model, provider=self.engine.provider, batch_size=s.model.batch_size,
                 inbox=str(layout.inbox), drop_files_into=[str(layout.inbox / t) for t in TASK_NAMES])
        self.worker = Worker(s, queue, layout, settler, self.engine, on_batch=self._batch_done,
                             may_run=self._may_run)
        self.notify.ready(f"ready: model {model} on {self.engine.provider}")
        idle = min(1.0, self.notify.watchdog_interval / 2) if self.notify.watchdog_interval else 1.0
        self.worker.run(self.stop, self.wake, idle_seconds=idle, tick=self._tick)
        signal.setitimer(signal.ITIMER_REAL, 0)  # drained in time: no alarm during shutdown
        log.info("stopped")
        return ExitCode.OK

    def _start_scheduler(self) -> None:
        # coalesce + max_instances=1: after a pause (a suspended box, a long checkpoint) a job
        # runs once, not once per missed interval, and never twice at the same time.
        funcs = {"rescan": self._rescan, "recover": self._recover, "summary": self._summary,
                 "maintenance": self._maintenance, "disk": self.guard.check}
        self.scheduler = BackgroundScheduler(timezone="UTC")
        for job_id, seconds in intervals(self.settings).items():
            self.scheduler.add_job(self._guarded(job_id, funcs[job_id]), "interval", seconds=seconds, id=job_id,
                                   coalesce=True, max_instances=1)
        self.scheduler.start()

    @staticmethod
    def _guarded(job_id: str, func: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            try:
                func()
            except StoreUnavailable as exc:  # a full disk: the next run tries again
                log.warning("scheduled_job_deferred", job=job_id, error=str(exc))
            except Exception:  # a scheduled job's failure is logged; the next run tries again
                log.exception("scheduled_job_error", job=job_id)
        return run

    # -- scheduled work ------------------------------------------------------------------

    def _rescan(self) -> None:
        if self.watcher is not None:
            n = self.watcher.scan()
            self.intake.forget_missing()
            self.settler.forget_departed()
            log.debug("rescan", files=n)

    def _recover(self) -> None:
        back, gave_up = self.queue.recover()
        if back or gave_up:
            log.warning("recovered_jobs", requeued=back, failed=gave_up, detail="leases expired")
            self.wake.set()
        self.settler.reconcile()  # files whose move failed before (a full disk, a folder fixed since)

    def _summary(self) -> None:
        if self.meter is not None:
            self.meter.flush()
        self._publish()

    def _maintenance(self) -> None:
        upkeep.checkpoint(self.stats)
        upkeep.retention(self.stats, self.files, self.settings.retention)

    def _publish(self, **facts: Any) -> None:
        """Record what `edged status` (another process) cannot see for itself (best effort)."""
        self.state.update(facts, intake_paused=self.guard.paused, spool_free_mb=self.guard.free,
                          min_free_mb=self.guard.min_free_mb, low_disk=dict(self.guard.low))
        try:
            self.stats.set_runtime(**self.state)
        except StoreUnavailable as exc:
            log.debug("runtime_unrecorded", error=str(exc))

    # -- the worker's hooks ---------------------------------------------------------------

    def _may_run(self) -> bool:
        if self.guard.store_low:
            return False  # its results could not be committed; intake is paused too
        windows = self.settings.schedule.processing_windows
        now_open = is_open(windows)
        if now_open != self.state["processing_open"]:
            opening = next_opening(windows)
            log.info("processing_window", open=now_open, windows=windows,
                     next_opening=opening.isoformat() if opening else None,
                     detail=None if now_open else "the model waits; intake continues")
            self._publish(processing_open=now_open, next_opening=opening.isoformat() if opening else None)
        return now_open

    def _tick(self) -> None:
        self.notify.watchdog()
        if self.reload_requested.is_set():
            self.reload_requested.clear()
            self.reload()

    def _batch_done(self, report: BatchReport) -> None:
        log_batch(report)
        if self.meter is not None:
            self.meter.add(report)
        self.notify.status(f"{self.queue.queued_count()} queued; last batch {report.task}: {report.done} done, "
                           f"{report.failed} failed, {report.output_tok_per_s:.1f} tok/s")

    # -- SIGHUP --------------------------------------------------------------------------

    def reload(self) -> None:
        """Take on the config file's live keys; name the ones that wait for a restart."""
        old = self.settings
        try:
            new = load_config(old.source) if old.source else None
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), detail="the running configuration stays in force")
            return
        if new is None:
            log.warning("reload_ignored", detail="settings did not come from a file")
            return
        changes = changed_keys(old, new)
        restart = [k for k in changes if needs_restart(k)]
        live = {k: {"old": a, "new": b} for k, (a, b) in changes.items() if k not in restart}
        self._apply(live_settings(old, new))
        log.info("config_reloaded", source=str(old.source), changed=live or None,
                 restart_needed=restart or None,
                 detail="restart the service for the keys in restart_needed" if restart else None)

    def _apply(self, s: Settings) -> None:
        old, self.settings = self.settings, s
        configure_logging(s.log.level, s.log.format)
        for part in (self.worker, self.intake):
            if part is not None:
                part.settings = s
        q = self.queue
        q.max_attempts, q.backoff_seconds = s.queue.max_attempts, s.queue.backoff_seconds
        q.backoff_max_seconds, q.lease_seconds = s.queue.backoff_max_seconds, s.queue.lease_seconds
        self.files.write_results = s.spool.write_result_files
        if self.watcher is not None:
            self.watcher.tracker.quiet = s.watch.stability_seconds
        self.guard.min_free_mb = s.spool.min_free_mb
        self.guard.check()
        self._publish()
        if self.scheduler is not None:
            before = intervals(old)
            for job_id, seconds in intervals(s).items():
                if before[job_id] != seconds:
                    self.scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
        self.wake.set()

    def _shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        if self.meter is not None:
            try:
                self.meter.flush()  # the last partial period, so the table adds up to the jobs done
            except Exception:
                log.exception("throughput_flush_error")
        if self.engine is not None:
            self.engine.close()
