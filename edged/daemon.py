"""`edged run`: the start-up order, the parts' upkeep, reload, and a graceful stop.

Signals are control.py's, scheduled jobs schedule.py's, what `edged status` is told
facts.py's; each part applies its own share of a reloaded config (`apply`). What is here is
the order things start and stop in, and which part each scheduled job calls.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from edged import death, tasks, upkeep
from edged.config import ConfigError, Settings, load_config
from edged.control import Control, StopNow
from edged.engine.api import Engine, ModelUnavailable, sees_images
from edged.engine.loader import model_name
from edged.exitcodes import EdgedError, ExitCode
from edged.facts import RuntimeFacts
from edged.hooks import AfterJob
from edged.intake import Intake
from edged.lock import StateLock
from edged.logs import configure_logging, get_logger
from edged.notify import Notifier
from edged.reload import changed_keys, live_settings, needs_restart
from edged.schedule import Schedule
from edged.settle import Settler
from edged.shipper import Shipper
from edged.spool import SpoolFiles, SpoolLayout, SpoolWatcher
from edged.spool.space import SpaceGuard
from edged.store import Queue, StoreUnavailable
from edged.store.db import sqlite_path
from edged.store.outbox import Outbox
from edged.store.stats import Stats
from edged.tasks import TASK_NAMES
from edged.throughput import BatchReport, Meter, log_batch
from edged.timeutil import now_iso
from edged.windows import WindowWatch
from edged.wiring import build_layout, build_queue, load_model, lock_path, postgres_options, spool_lock_path
from edged.worker import Worker

log = get_logger("edged.daemon")

STORE_RETRY_MAX_S = 30.0


@dataclass
class Running:
    """Everything the daemon opened at start-up."""

    queue: Queue
    stats: Stats
    layout: SpoolLayout
    files: SpoolFiles
    settler: Settler
    guard: SpaceGuard
    facts: RuntimeFacts
    intake: Intake
    watcher: SpoolWatcher
    meter: Meter
    windows: WindowWatch
    after: AfterJob
    schedule: Optional[Schedule] = None
    engine: Optional[Engine] = None
    worker: Optional[Worker] = None
    shipper: Optional[Shipper] = None
    served: tuple[str, ...] = ()  # the tasks this box's model can run


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notify = Notifier()
        self._reloads = 0
        self.control = Control(lambda: self.settings.queue.drain_grace_seconds, on_stopping=self.notify.stopping)
        self.parts: Optional[Running] = None
        self._started_at = now_iso()

    def run(self) -> ExitCode:
        s = self.settings
        try:
            s.state_dir.mkdir(parents=True, exist_ok=True)
            s.spool_dir.mkdir(parents=True, exist_ok=True)
            locks = [StateLock(lock_path(s)).acquire()]
            locks.append(StateLock(spool_lock_path(s), "another daemon (with another database) uses this spool")
                         .acquire())
        except EdgedError as exc:
            for lock in locals().get("locks", []):
                lock.release()
            log.error("already_running", error=str(exc))
            return exc.code
        self.control.install()
        try:
            return self._run()
        except StopNow:
            if self.control.why_at_once == "second signal":
                log.warning("stopped_at_once", detail="second signal; the batch in flight was handed back")
            else:
                log.warning("drain_timeout", grace_s=s.queue.drain_grace_seconds,
                            detail="the batch in flight was handed back to the queue; it runs again at the next start")
            return ExitCode.OK
        except EdgedError as exc:  # the daemon's own reasons: a config, a database, a model it cannot use
            log.error("cannot_run", error=str(exc), exit_code=int(exc.code))
            return exc.code
        finally:
            self.control.quiet()
            self._shutdown()
            for lock in reversed(locks):
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
                if self.control.stop.wait(delay):
                    raise StopNow from None
                delay = min(delay * 2, STORE_RETRY_MAX_S)

    # -- start-up ------------------------------------------------------------------------

    def _open(self, s: Settings) -> Running:
        """Store, recovery, spool, settling, intake: everything but the model, in that order."""
        queue = self._until_stored("open", lambda: build_queue(s))
        stats = Stats(queue.engine, queue.spool_box)
        cause = death.previous_death(s.state_dir)
        death.watch_faults(s.state_dir)
        requeued, failed = self._until_stored(
            "recover", lambda: queue.recover(everything=True, cause=f"died of {cause}" if cause else None))
        if requeued or failed or cause:
            log.warning("recovered_jobs", requeued=requeued, failed=failed, cause=cause,
                        detail="jobs left running by a process that died: they run alone first, and only a job"
                               " that was running alone when the process died of a known cause is charged")
        shipper = self._until_stored("ship", lambda: self._shipper(s, queue))
        layout = build_layout(s)
        for problem in layout.ensure():
            log.error("spool_folder_unusable", problem=problem,
                      detail="nothing is taken from or moved into it until it is a plain folder again")
        files = SpoolFiles(layout, s.spool.write_result_files)
        files.remove_debris()
        settler = Settler(queue, files)
        after = AfterJob(s, queue.engine, files)
        settler.after = after.ended  # reconciled jobs too: their sidecars and hooks were due
        self._until_stored("reconcile", lambda: settler.reconcile(force=True))
        model = model_name(s.model, s.model_dir)
        db_file = sqlite_path(s.database_url)
        guard = SpaceGuard({"spool": s.spool_dir, "state": db_file.parent if db_file else s.state_dir},
                           s.spool.min_free_mb, on_resume=self._rescan)
        guard.check()
        facts = RuntimeFacts(stats, guard)
        facts.publish(model=model, provider=None, next_opening=None)  # replaces what the last run left
        intake = Intake(s, queue, layout, settler, model, on_queued=self.control.wake.set,
                        paused=lambda: guard.paused)
        self._until_stored("load", intake.load_known)
        watcher = SpoolWatcher(layout, s.watch.stability_seconds, intake.take, polling=s.watch.polling,
                               poll_interval=s.watch.poll_interval_seconds)
        return Running(queue, stats, layout, files, settler, guard, facts, intake, watcher,
                       Meter(stats, model=model), WindowWatch(facts.publish), after, shipper=shipper)

    @staticmethod
    def _shipper(s: Settings, queue: Queue) -> Optional[Shipper]:
        """Mode "ship" when ship.url is set; otherwise nothing is kept for shipping."""
        if not s.ship.url:
            dropped = Outbox(queue.engine).disable()
            if dropped:
                log.warning("shipping_disabled", dropped_rows=dropped,
                            detail="ship.url is no longer set: the rows not yet shipped will not be")
            return None
        shipper = Shipper(queue.engine, s.ship.url, queue.box_id, postgres_options(s, queue.box_id),
                          batch_rows=s.ship.batch_rows)
        shipper.enable()
        return shipper

    def _run(self) -> ExitCode:
        s = self.settings
        p = self.parts = self._open(s)
        p.watcher.start()
        log.info("startup_scan", files=p.watcher.scan())
        p.schedule = Schedule(s, {"rescan": self._rescan, "recover": self._recover, "summary": self._summary,
                                  "maintenance": self._maintenance, "disk": p.guard.check, "ship": self._ship})
        p.schedule.start()
        model = p.meter.model
        if s.model.path is None and s.model.engine == "onnx":
            log.info("default_model", path=str(s.model_dir),
                     detail="model.path is not set: using the built-in Gemma 3 270M (base model, text only)")
        log.info("loading_model", engine=s.model.engine, path=str(s.model_dir), model=model)
        self.notify.extend_timeout(600)
        self.notify.status(f"loading model {model}")
        try:
            p.engine = load_model(s)
        except ModelUnavailable as exc:
            log.error("model_unavailable", error=str(exc), detail="files keep being queued; fix the model and restart")
            return exc.code
        p.meter.provider = p.engine.provider
        p.facts.publish(model=model, provider=p.engine.provider)
        p.served = tasks.served(sees_images(p.engine))
        if s.shared:
            # Only jobs this box can run: its model's, of the tasks its model can do.
            p.queue.serve(model_name(s.model, s.model_dir), p.served)
            log.info("site_queue", box_id=p.queue.box_id, model=model, tasks=list(p.served),
                     detail="mode shared: claiming from the site's queue")
        self._seen()
        if s.metrics.listen:
            from edged.metrics import EdgedCollector, serve

            serve(s.metrics.listen, EdgedCollector(p.queue.engine, p.meter, p.facts.snapshot))
        log.info("ready", model=model, provider=p.engine.provider, batch_size=s.model.batch_size,
                 inbox=str(p.layout.inbox), drop_files_into=[str(p.layout.inbox / t) for t in TASK_NAMES])
        p.worker = Worker(s, p.queue, p.layout, p.settler, p.engine, on_batch=self._batch_done,
                          may_run=self._may_run, control=self.control)
        self.notify.ready(f"ready: model {model} on {p.engine.provider}")
        idle = min(1.0, self.notify.watchdog_interval / 2) if self.notify.watchdog_interval else 1.0
        p.worker.run(idle_seconds=idle, tick=self._tick)
        log.info("stopped")
        return ExitCode.OK

    # -- scheduled work and the worker's hooks --------------------------------------------

    def _rescan(self) -> None:
        p = self.parts
        if p is not None:
            n = p.watcher.scan()
            p.intake.forget_missing()
            p.settler.forget_departed()
            log.debug("rescan", files=n)

    def _recover(self) -> None:
        p = self.parts
        assert p is not None
        back, gave_up = p.queue.recover()
        if back or gave_up:
            log.warning("recovered_jobs", requeued=back, failed=gave_up, detail="leases expired")
            self.control.wake.set()
        p.settler.reconcile()  # files whose move failed before (a full disk, a folder fixed since)

    def _summary(self) -> None:
        p = self.parts
        assert p is not None
        p.meter.flush()
        p.facts.publish()
        self._seen()

    def _seen(self) -> None:
        """This box is alive, with what it runs (the `boxes` table: `edged status` lists a site's boxes)."""
        p = self.parts
        if p is None or p.engine is None:
            return
        p.stats.seen(p.queue.box_id, socket.gethostname(), os.getpid(), p.meter.model, p.engine.provider,
                     list(p.served), self._started_at)

    def _ship(self) -> None:
        p = self.parts
        if p is not None and p.shipper is not None:
            p.shipper.batch_rows = self.settings.ship.batch_rows
            p.shipper.round(max_seconds=self.settings.ship.interval_seconds)

    def _maintenance(self) -> None:
        p = self.parts
        assert p is not None
        upkeep.checkpoint(p.stats)
        upkeep.retention(p.stats, p.files, self.settings.retention)

    def _may_run(self) -> bool:
        p = self.parts
        assert p is not None
        if p.guard.store_low:
            return False  # its results could not be committed; intake is paused too
        return p.windows.check(self.settings.schedule.processing_windows)

    def _tick(self) -> None:
        self.notify.watchdog()
        if self.control.reload.is_set():
            self.control.reload.clear()
            self.reload()

    def _batch_done(self, report: BatchReport) -> None:
        p = self.parts
        assert p is not None
        log_batch(report)
        p.meter.add(report)
        self.notify.status(f"{p.queue.queued_count()} queued; last batch {report.task}: {report.done} done, "
                           f"{report.failed} failed, {report.output_tok_per_s:.1f} tok/s")

    # -- SIGHUP --------------------------------------------------------------------------

    def reload(self) -> None:
        """Take on the config file's live keys; name the ones that wait for a restart.

        The outcome goes to the runtime table (`reload`), where `edged reload` (the unit's
        ExecReload) waits for it, so that `systemctl reload edged` returns once it is done
        and fails when the file was refused."""
        self.notify.reloading()
        self._reloads += 1  # a count, not a clock: `edged reload` waits for the next one
        outcome: dict[str, Any] = {"seq": self._reloads, "pid": os.getpid(), "at": time.time(), "ok": True}
        try:
            outcome.update(self._reload())
        except ConfigError as exc:
            log.error("reload_failed", error=str(exc), detail="the running configuration stays in force")
            outcome.update(ok=False, error=str(exc))
        except Exception as exc:  # a part refused its share: say so, to `edged reload` too
            log.exception("reload_failed", error=f"{type(exc).__name__}: {exc}")
            outcome.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        if self.parts is not None:
            self.parts.facts.publish(reload=outcome)
        self.notify.ready("configuration reloaded" if outcome["ok"] else "reload refused; running configuration kept")

    def _reload(self) -> dict[str, Any]:
        old = self.settings
        if old.source is None:
            log.warning("reload_ignored", detail="settings did not come from a file")
            return {"ignored": True}
        new = load_config(old.source)
        changes = changed_keys(old, new)
        restart = [k for k in changes if needs_restart(k)]
        live = {k: {"old": a, "new": b} for k, (a, b) in changes.items() if k not in restart}
        self._apply(live_settings(old, new))
        log.info("config_reloaded", source=str(old.source), changed=live or None,
                 restart_needed=restart or None,
                 detail="restart the service for the keys in restart_needed" if restart else None)
        return {"changed": sorted(live), "restart_needed": restart}

    def _apply(self, s: Settings) -> None:
        """Each part takes its own share of the new settings."""
        self.settings = s
        configure_logging(s.log.level, s.log.format)
        p = self.parts
        if p is not None:
            for part in (p.queue, p.files, p.intake, p.watcher, p.guard, p.schedule, p.worker, p.after):
                if part is not None:
                    part.apply(s)
            p.facts.publish()
        self.control.wake.set()

    def _shutdown(self) -> None:
        p = self.parts
        if p is None:
            return
        if p.schedule is not None:
            p.schedule.shutdown()
        p.watcher.stop()
        try:
            p.meter.flush()  # the last partial period, so the table adds up to the jobs done
        except Exception:
            log.exception("throughput_flush_error")
        p.after.close()
        if p.shipper is not None:
            p.shipper.close()
        if p.engine is not None:
            p.engine.close()
