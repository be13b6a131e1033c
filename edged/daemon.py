"""Wiring for `edged run`: start-up order, scheduled jobs, signals, and a graceful drain."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.engine import make_url

from edged.config import Settings
from edged.engine.api import Engine, ModelUnavailable
from edged.engine.loader import load_engine, model_name
from edged.exitcodes import ExitCode
from edged.intake import Intake
from edged.lock import AlreadyLocked, StateLock
from edged.logs import get_logger
from edged.notify import Notifier
from edged.settle import Settler
from edged.spool import IgnoreRules, SpoolFiles, SpoolLayout, SpoolWatcher
from edged.store import Queue, open_queue
from edged.tasks import TASK_NAMES
from edged.worker import BatchReport, Worker

log = get_logger("edged.daemon")


def lock_path(settings: Settings) -> Path:
    """Next to the database file, so two configs sharing one database still exclude each other."""
    db = make_url(settings.database_url).database
    return Path(db + ".lock") if db and db != ":memory:" else settings.state_dir / "edged.lock"


def build_queue(settings: Settings) -> Queue:
    q = settings.queue
    return open_queue(settings.database_url, max_attempts=q.max_attempts, backoff_seconds=q.backoff_seconds,
                      backoff_max_seconds=q.backoff_max_seconds, lease_seconds=q.lease_seconds)


def build_layout(settings: Settings) -> SpoolLayout:
    return SpoolLayout(settings.spool_dir, TASK_NAMES, IgnoreRules(settings.watch.ignore))


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self._signals = 0
        self.watcher: Optional[SpoolWatcher] = None
        self.scheduler: Optional[BackgroundScheduler] = None
        self.engine: Optional[Engine] = None
        self.notify = Notifier()

    def _on_signal(self, signum: int, _frame) -> None:  # noqa: ANN001 - signal frame
        self._signals += 1
        if self._signals == 1:
            log.info("stopping", signal=signal.Signals(signum).name,
                     detail="finishing the batch in flight; signal again to stop at once")
            self.notify.stopping()
            self.stop.set()
            self.wake.set()
        else:
            # Leases of the batch in flight are released on the way out (Worker.run).
            raise KeyboardInterrupt

    def run(self) -> ExitCode:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = StateLock(lock_path(s)).acquire()
        except AlreadyLocked as exc:
            log.error("already_running", error=str(exc))
            return ExitCode.ALREADY_RUNNING
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            return self._run()
        finally:
            self._shutdown()
            lock.release()

    def _run(self) -> ExitCode:
        s = self.settings
        queue = build_queue(s)
        requeued, failed = queue.recover(everything=True)
        if requeued or failed:
            log.warning("recovered_jobs", requeued=requeued, failed=failed,
                        detail="jobs left running by a previous process")
        layout = build_layout(s)
        layout.ensure()
        files = SpoolFiles(layout, s.spool.write_result_files)
        files.remove_debris()
        settler = Settler(queue, files)
        settler.reconcile()

        model = model_name(s.model, s.model_dir)
        intake = Intake(s, queue, layout, settler, model, on_queued=self.wake.set)
        intake.load_known()
        self.watcher = SpoolWatcher(layout, s.watch.stability_seconds, intake.take, polling=s.watch.polling,
                                    poll_interval=s.watch.poll_interval_seconds)
        self.watcher.start()
        found = self.watcher.scan()
        log.info("startup_scan", files=found)

        def rescan() -> None:
            n = self.watcher.scan()
            intake.forget_missing()
            log.debug("rescan", files=n)

        def recover() -> None:
            back, gave_up = queue.recover()
            if back or gave_up:
                log.warning("recovered_jobs", requeued=back, failed=gave_up, detail="leases expired")
                self.wake.set()

        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scheduler.add_job(rescan, "interval", seconds=s.watch.rescan_seconds, id="rescan",
                               coalesce=True, max_instances=1)
        self.scheduler.add_job(recover, "interval", seconds=s.queue.recover_seconds, id="recover",
                               coalesce=True, max_instances=1)
        self.scheduler.start()

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
        log.info("ready", model=model, provider=self.engine.provider, batch_size=s.model.batch_size,
                 inbox=str(layout.inbox), drop_files_into=[str(layout.inbox / t) for t in TASK_NAMES])
        def batch_done(report: BatchReport) -> None:
            tok_s = self._batch_logged(report)
            self.notify.status(f"{queue.queued_count()} queued; last batch {report.task}: {report.done} done, "
                               f"{report.failed} failed, {tok_s:.1f} tok/s")

        worker = Worker(s, queue, layout, settler, self.engine, on_batch=batch_done)
        self.notify.ready(f"ready: model {model} on {self.engine.provider}")
        idle = min(1.0, self.notify.watchdog_interval / 2) if self.notify.watchdog_interval else 1.0
        worker.run(self.stop, self.wake, idle_seconds=idle, tick=self.notify.watchdog)
        log.info("stopped")
        return ExitCode.OK

    @staticmethod
    def _batch_logged(report: BatchReport) -> float:
        tok_s = report.output_tokens / (report.engine_ms / 1000) if report.engine_ms else 0.0
        log.info("batch", task=report.task, claimed=report.claimed, done=report.done, failed=report.failed,
                 retried=report.retried, engine_ms=round(report.engine_ms, 1), prompt_tokens=report.prompt_tokens,
                 output_tokens=report.output_tokens, output_tok_per_s=round(tok_s, 1))
        return tok_s

    def _shutdown(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        if self.watcher is not None:
            self.watcher.stop()
        if self.engine is not None:
            self.engine.close()
