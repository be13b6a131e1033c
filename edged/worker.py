"""The model worker: claim a batch of one task, prepare it, run the engine, commit, settle."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

from sqlalchemy import exc

from edged import tasks
from edged.config import Settings
from edged.control import Control
from edged.engine.api import Engine, Generation, Request, RequestError, model_info
from edged.leases import LeaseKeeper
from edged.logs import get_logger
from edged.settle import Settler
from edged.spool import InputChanged, InputRefused, SpoolLayout
from edged.store import FAILED, FileRecord, Job, Queue, ResultData, StoreUnavailable
from edged.tasks import InputError, Prepared
from edged.throughput import BatchReport
from edged.timeutil import parse_iso, utcnow

log = get_logger("edged.worker")

STORE_RETRY_MAX_S = 30.0


@dataclass
class _Item:
    job: Job
    files: list[FileRecord]
    prepared: Prepared
    prepare_ms: float
    notes: dict[str, Any] = field(default_factory=dict)  # prepare's and assemble's, for the job's line


class Worker:
    def __init__(self, settings: Settings, queue: Queue, layout: SpoolLayout, settler: Settler, engine: Engine,
                 on_batch: Optional[Callable[[BatchReport], None]] = None,
                 may_run: Optional[Callable[[], bool]] = None, control: Optional[Control] = None) -> None:
        self.settings = settings  # replaced on a reload: read it afresh for every job
        self.control = control or Control(lambda: 0.0)
        self.queue = queue
        self.layout = layout
        self.settler = settler
        self.engine = engine
        self.model = model_info(engine)
        self.on_batch = on_batch or (lambda report: None)
        self.may_run = may_run or (lambda: True)
        self.tick: Callable[[], None] = lambda: None
        self.leases = LeaseKeeper(queue)
        # Kept across a "store_available" that a failing commit follows at once (a probe may
        # pass where a real write cannot: a full disk): reset only by a stored batch.
        self._store_delay = 1.0

    def apply(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, idle_seconds: float = 1.0, tick: Optional[Callable[[], None]] = None) -> None:
        """Process batches until the control says stop; sleep on its `wake` while there is nothing to do.

        `tick` runs once per loop turn and between the engine calls of a batch: the systemd
        watchdog is fed from here, so an engine call that hangs stops the pings and systemd
        restarts the service. Nothing a job does ends this loop; a database that cannot take
        writes (a full disk) pauses it until it can.
        """
        outer = tick or (lambda: None)

        def tick_and_renew() -> None:
            outer()
            self.leases.tick()

        self.tick = tick_and_renew
        if hasattr(self.engine, "heartbeat"):
            self.engine.heartbeat = self.tick  # a long continuous-batching call keeps the watchdog fed
        stop, wake = self.control.stop, self.control.wake
        try:
            while not stop.is_set():
                self.tick()
                if not self.may_run():
                    wake.wait(idle_seconds)
                    wake.clear()
                    continue
                try:
                    ran = self.run_stream() if self.streams else self.run_batch()
                except StoreUnavailable as exc:
                    self._wait_for_store(exc, stop, wake)
                    continue
                if ran == 0:
                    ready_in = self.queue.next_ready_in()
                    wake.wait(idle_seconds if ready_in is None else min(idle_seconds, max(ready_in, 0.01)))
                    wake.clear()
        except BaseException:
            # Stopped in a model call (drain timeout, a second signal): hand the batch back
            # without counting the attempt, so nothing waits for a lease to expire.
            try:
                released = self.queue.release()
            except StoreUnavailable:
                released = 0  # the next start finds them running and gives them back
            if released:
                log.warning("released_jobs", jobs=released,
                            detail="stopped mid-batch; they run again at the next start")
            raise

    def _wait_for_store(self, exc: StoreUnavailable, stop: threading.Event, wake: threading.Event) -> None:
        """Hold the model until the database takes writes again, then give back what we held (uncharged)."""
        log.warning("store_unavailable", error=str(exc), retry_in_s=self._store_delay,
                    detail="no attempt is charged; the batch runs again once the database takes writes")
        while not stop.is_set():
            self.tick()
            wake.wait(self._store_delay)
            wake.clear()
            self._store_delay = min(self._store_delay * 2, STORE_RETRY_MAX_S)
            try:
                released = self.queue.release()
            except StoreUnavailable:
                continue
            log.info("store_available", released_jobs=released)
            return

    @property
    def streams(self) -> bool:
        """The engine batches continuously across calls (submit/step): jobs join the running rows."""
        return bool(getattr(self.engine, "continuous", False)) and callable(getattr(self.engine, "submit", None))

    def run_stream(self) -> int:
        from edged.stream import Stream

        return Stream(self).run()

    def run_batch(self) -> int:
        jobs = self.queue.claim(self.settings.model.batch_size)
        if not jobs:
            return 0
        self.leases.hold([j.id for j in jobs])
        try:
            self._process(jobs)
        except StoreUnavailable:
            raise
        except Exception as exc:  # a bug met by this batch: handled as a crash of it would be
            log.exception("batch_interrupted", task=jobs[0].task, jobs=len(jobs))
            requeued, failed = self.queue.interrupted([j.id for j in jobs],
                                                      f"broke off with {type(exc).__name__}: {exc}")
            log.warning("batch_interrupted_jobs", requeued=requeued, failed=failed,
                        detail="batch-mates run alone next and are not charged")
            if failed:
                self.settler.reconcile()
        finally:
            self.leases.drop([j.id for j in jobs])
        return len(jobs)

    def _process(self, jobs: list[Job]) -> None:
        task = tasks.get(jobs[0].task)
        report = BatchReport(task.name, len(jobs), provider=self.engine.provider)
        files = self.queue.files_of([j.id for j in jobs])
        items = [item for job in jobs if (item := self._prepare(task, job, files[job.id], report))]
        requests = [r for it in items for r in it.prepared.requests]
        report.requests = len(requests)
        generations = self._generate(requests, report) if requests else []
        self._conclude(task, items, generations, report)

    def _conclude(self, task: tasks.Task, items: list[_Item], generations: Sequence[Union[Generation, Exception]],
                  report: BatchReport) -> None:
        """Assemble, store and settle the items whose generations are in (in the items' order)."""
        finished: list[tuple[_Item, ResultData]] = []
        at = 0
        for item in items:
            n = len(item.prepared.requests)
            gens, at = generations[at:at + n], at + n
            errors = [g for g in gens if isinstance(g, Exception)]
            if errors:
                permanent = any(isinstance(g, RequestError) for g in errors)
                self._fail(item.job, f"engine error: {type(errors[0]).__name__}: {errors[0]}", permanent, report)
                continue
            done = [g for g in gens if isinstance(g, Generation)]
            try:
                assembled = item.prepared.assemble(done)
            except InputError as exc:
                self._fail(item.job, str(exc), True, report)
                continue
            item.notes = {**item.prepared.notes, **assembled.notes}
            prompt_tokens = sum(g.prompt_tokens for g in done)
            output_tokens = sum(g.output_tokens for g in done)
            report.prompt_tokens += prompt_tokens
            report.output_tokens += output_tokens
            spawn = item.prepared.follow_up
            finished.append((item, ResultData(assembled.output, prompt_tokens, output_tokens, round(report.engine_ms),
                                              spawn=(spawn.task, spawn.params) if spawn else None)))
        for item, res in finished:
            if item.job.parent_id is not None:
                # A spawned job has no input file, so no start-up reconcile would notice a
                # result file lost to a crash after the commit: write it first (a rerun finds
                # the same text there and leaves it).
                self.settler.result_file(item.job.source_path, task.name, res.output)
        for (item, res), ok in zip(finished, self._commit(finished, report), strict=True):
            if not ok:
                log.warning("lease_lost", job_id=item.job.id, task=task.name,
                            detail="the job was handed to another worker; its result was not stored")
                continue
            self.settler.done(item.job.id, task.name, res.output)
            report.done += 1
            wait = _wait_ms(item.job)
            report.waits_ms.append(wait)
            log.info("job_done", task=task.name, job_id=item.job.id, file=item.job.source_path, status="done",
                     attempt=item.job.attempts, parent_id=item.job.parent_id, wait_ms=wait,
                     prepare_ms=round(item.prepare_ms, 1), engine_ms=round(report.engine_ms, 1), batch=len(items),
                     prompts=len(item.prepared.requests), prompt_tokens=res.prompt_tokens,
                     output_tokens=res.output_tokens, spawned=res.spawn[0] if res.spawn else None,
                     **item.notes)
        self.on_batch(report)

    def _commit(self, finished: list[tuple[_Item, ResultData]], report: BatchReport) -> list[bool]:
        """Store the batch's results in one transaction; if the database refuses one row, each alone."""
        pairs = [(it.job, res) for it, res in finished]
        try:
            stored = self.queue.complete(pairs)
            self._store_delay = 1.0
            return stored
        except StoreUnavailable:
            raise
        except exc.SQLAlchemyError as error:
            log.warning("batch_commit_error", error=f"{type(error).__name__}: {error}",
                        detail="storing the batch's results one job at a time")
        out = []
        for (item, _res), got in zip(finished, self.queue.complete_each(pairs), strict=True):
            if isinstance(got, Exception):
                self._fail(item.job, f"the result could not be stored: {type(got).__name__}: {got}", True, report)
                got = False
            out.append(got)
        return out

    def _input(self, job: Job, files: list[FileRecord], limit: int) -> bytes:
        """The job's input, read once from one fd and checked against the sha256 recorded at intake."""
        if job.parent_id is not None:
            text = self.queue.result_output(job.parent_id)
            if text is None:
                raise InputError(f"the result of job {job.parent_id}, this job's input, is gone")
            return text.encode("utf-8")
        changes = []
        for rec in files:
            try:
                data, st = self.layout.read_current(rec.path, limit)
            except InputChanged as exc:
                if not exc.removed:
                    changes.append(str(exc))
                self.queue.supersede(rec.id, "missing" if exc.removed else "superseded")
                continue
            if hashlib.sha256(data).hexdigest() != job.sha256:
                # Not the bytes this job was queued for: the file was rewritten or replaced.
                # Intake takes what is there now in as a new file.
                changes.append(f"{rec.display} holds other bytes than when it was queued")
                self.queue.supersede(rec.id)
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns) != (rec.inode, rec.size_bytes, rec.mtime_ns):
                # The same bytes under another inode (copied in again): the record follows the
                # file, so that the file read is the file moved.
                self.queue.refresh_file(rec.id, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            return data
        if not files and self.queue.shared and job.sha256:
            return self._blob(job, limit)
        if changes:
            raise InputError(f"the input changed before it ran: {changes[0]} (whatever is at the path now is taken"
                             " in as a new file)")
        if self.queue.files_of([job.id], state="superseded")[job.id]:
            raise InputError("the input changed before it ran: it was replaced or rewritten, and its new content"
                             " is queued as a job of its own")
        raise InputError("the input file vanished from the inbox before it ran")

    def _blob(self, job: Job, limit: int) -> bytes:
        """Mode "shared": the input of a job whose file lies in another box's spool, from the database."""
        assert job.sha256 is not None
        data = self.queue.blob(job.sha256)
        if data is None:
            raise InputError("the input is not in the site's database (the box that took it in kept it: it was over"
                             " the input limit there, or changed as it was read)")
        if limit and len(data) > limit:
            raise InputRefused(f"input is larger than the limit of {limit} bytes")
        if hashlib.sha256(data).hexdigest() != job.sha256:
            raise InputError("the input in the site's database does not match its sha256: it was damaged on the way")
        return data

    def _prepare(self, task: tasks.Task, job: Job, files: list[FileRecord], report: BatchReport) -> Optional[_Item]:
        t0 = time.perf_counter()
        limit = int(getattr(self.settings.tasks, task.name).max_input_mb * 1024 * 1024)
        try:
            prepared = task.prepare(job.params, self._input(job, files, limit), self.settings, self.model)
        except (InputError, InputRefused) as exc:
            self._fail(job, str(exc), True, report)
            return None
        except StoreUnavailable:
            raise
        except Exception as exc:  # an unexpected error in decoding: may be transient (I/O), retry
            log.exception("prepare_error", job_id=job.id, task=task.name)
            self._fail(job, f"{type(exc).__name__}: {exc}", False, report)
            return None
        return _Item(job, files, prepared, (time.perf_counter() - t0) * 1000)

    def _generate(self, requests: Sequence[Request], report: BatchReport) -> list[Union[Generation, Exception]]:
        """All prompts of the batch, `batch_size` at a time (a long text is many prompts); an engine
        that batches continuously takes them all at once and keeps its slots full."""
        size = len(requests) if getattr(self.engine, "continuous", False) else self.settings.model.batch_size
        out: list[Union[Generation, Exception]] = []
        for start in range(0, len(requests), size):
            if start:
                self.tick()
            out.extend(self._engine_call(requests[start:start + size], report))
        return out

    def _engine_call(self, requests: Sequence[Request], report: BatchReport) -> list[Union[Generation, Exception]]:
        """One engine call; if it fails as a whole, each request alone, so one bad job fails alone."""
        log.debug("engine_call", prompts=len(requests))
        t0 = time.perf_counter()
        try:
            with self.control.model_call():
                gens = self.engine.generate(requests)
            if len(gens) != len(requests):
                raise RuntimeError(f"engine returned {len(gens)} results for {len(requests)} requests")
            self._timed(report, t0)
            return list(gens)
        except Exception as exc:
            self._timed(report, t0, ok=False)
            if len(requests) == 1:
                return [exc]
            log.warning("batch_error", error=f"{type(exc).__name__}: {exc}", batch=len(requests),
                        detail="running the batch's jobs one at a time")
        out: list[Union[Generation, Exception]] = []
        for req in requests:
            t0 = time.perf_counter()
            try:
                with self.control.model_call():
                    out.append(self.engine.generate([req])[0])
                self._timed(report, t0)
            except Exception as exc:
                out.append(exc)
                self._timed(report, t0, ok=False)
        return out

    def _timed(self, report: BatchReport, t0: float, ok: bool = True) -> None:
        report.engine_ms += (time.perf_counter() - t0) * 1000
        timing = self.engine.last_timing
        if ok and timing is not None:
            report.prefill_ms += timing.prefill_ms
            report.decode_ms += timing.decode_ms

    def _fail(self, job: Job, error: str, permanent: bool, report: BatchReport) -> None:
        status = self.queue.fail(job, error, permanent)
        if status is None:
            log.warning("lease_lost", job_id=job.id, task=job.task)
            return
        if status == FAILED:
            report.failed += 1
            self.settler.failed(job.id, job.task, error, job.attempts)
            log.warning("job_failed", task=job.task, job_id=job.id, file=job.source_path, status="failed",
                        attempt=job.attempts, error=error)
        else:
            report.retried += 1
            log.warning("job_retry", task=job.task, job_id=job.id, file=job.source_path, status="queued",
                        attempt=job.attempts, max_attempts=self.queue.max_attempts, error=error)


def _wait_ms(job: Job) -> int:
    return round((utcnow() - parse_iso(job.created_at)).total_seconds() * 1000)
