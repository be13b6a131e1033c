"""The model worker: claim a batch of one task, prepare it, run the engine, commit, settle."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from edged import tasks
from edged.config import Settings
from edged.engine.api import Engine, Generation, Request, RequestError
from edged.logs import get_logger
from edged.settle import Settler
from edged.spool import InputRefused, SpoolLayout
from edged.store import FAILED, FileRecord, Job, Queue, ResultData
from edged.tasks import InputError
from edged.timeutil import parse_iso, utcnow

log = get_logger("edged.worker")


@dataclass
class _Item:
    job: Job
    files: list[FileRecord]
    request: Request
    prepare_ms: float


@dataclass
class BatchReport:
    task: str
    claimed: int
    done: int
    failed: int
    retried: int
    engine_ms: float
    prompt_tokens: int
    output_tokens: int


class Worker:
    def __init__(self, settings: Settings, queue: Queue, layout: SpoolLayout, settler: Settler, engine: Engine,
                 on_batch: Optional[Callable[[BatchReport], None]] = None) -> None:
        self.settings = settings
        self.queue = queue
        self.layout = layout
        self.settler = settler
        self.engine = engine
        self.on_batch = on_batch or (lambda report: None)
        self._claimed: list[int] = []

    def run(self, stop: threading.Event, wake: threading.Event, idle_seconds: float = 1.0,
            tick: Optional[Callable[[], None]] = None) -> None:
        """Process batches until `stop` is set; sleep on `wake` while the queue is empty.

        `tick` runs once per loop turn, between batches: the systemd watchdog is fed from
        here, so an engine call that hangs stops the pings and systemd restarts the service.
        """
        try:
            while not stop.is_set():
                if tick is not None:
                    tick()
                if self.run_batch() == 0:
                    ready_in = self.queue.next_ready_in()
                    wake.wait(idle_seconds if ready_in is None else min(idle_seconds, max(ready_in, 0.01)))
                    wake.clear()
        except BaseException:
            # Stopped mid-batch (a second signal): hand the batch back without counting the
            # attempt, so nothing waits for a lease to expire.
            released = self.queue.release(self._claimed)
            if released:
                log.warning("released_jobs", jobs=released, detail="stopped mid-batch; they run again next start")
            raise

    def run_batch(self) -> int:
        jobs = self.queue.claim(self.settings.model.batch_size)
        self._claimed = [j.id for j in jobs]
        if not jobs:
            return 0
        task = tasks.get(jobs[0].task)
        report = BatchReport(task.name, len(jobs), 0, 0, 0, 0.0, 0, 0)
        files = self.queue.files_of([j.id for j in jobs])
        items = [item for job in jobs if (item := self._prepare(task, job, files[job.id], report))]
        if not items:
            self.on_batch(report)
            return len(jobs)
        t0 = time.perf_counter()
        generations = self._generate([it.request for it in items])
        report.engine_ms = (time.perf_counter() - t0) * 1000
        finished: list[tuple[_Item, ResultData]] = []
        for item, gen in zip(items, generations):
            if isinstance(gen, Exception):
                permanent = isinstance(gen, RequestError)
                self._fail(item.job, item.files, f"engine error: {type(gen).__name__}: {gen}", permanent, report)
                continue
            try:
                output = task.finish(gen)
            except InputError as exc:
                self._fail(item.job, item.files, str(exc), True, report)
                continue
            report.prompt_tokens += gen.prompt_tokens
            report.output_tokens += gen.output_tokens
            finished.append((item, ResultData(output, gen.prompt_tokens, gen.output_tokens, round(report.engine_ms))))
        committed = self.queue.complete([(it.job, res) for it, res in finished])
        for (item, res), ok in zip(finished, committed):
            if not ok:
                log.warning("lease_lost", job_id=item.job.id, task=task.name,
                            detail="the job was handed to another worker; its result was not stored")
                continue
            self.settler.done(item.files, task.name, res.output)
            report.done += 1
            log.info("job_done", task=task.name, job_id=item.job.id, file=item.job.source_path, status="done",
                     attempt=item.job.attempts, wait_ms=_wait_ms(item.job), prepare_ms=round(item.prepare_ms, 1),
                     engine_ms=round(report.engine_ms, 1), batch=len(items), prompt_tokens=res.prompt_tokens,
                     output_tokens=res.output_tokens, notes=item.request.options.get("notes") or None)
        self.on_batch(report)
        return len(jobs)

    def _prepare(self, task: tasks.Task, job: Job, files: list[FileRecord], report: BatchReport) -> Optional[_Item]:
        t0 = time.perf_counter()
        if not files:
            self._fail(job, files, "the input file is no longer in the inbox (removed or replaced before it ran)",
                       True, report)
            return None
        limit = int(getattr(self.settings.tasks, task.name).max_input_mb * 1024 * 1024)
        try:
            data = self.layout.read_input(files[0].path, limit=limit)
            request = task.prepare(job.params, data, self.settings)
        except (InputError, InputRefused) as exc:
            self._fail(job, files, str(exc), True, report)
            return None
        except FileNotFoundError:
            self._fail(job, files, "the input file vanished from the inbox before it ran", True, report)
            return None
        except Exception as exc:  # an unexpected error in decoding: may be transient (I/O), retry
            log.exception("prepare_error", job_id=job.id, task=task.name)
            self._fail(job, files, f"{type(exc).__name__}: {exc}", False, report)
            return None
        return _Item(job, files, request, (time.perf_counter() - t0) * 1000)

    def _generate(self, requests: Sequence[Request]) -> list[Union[Generation, Exception]]:
        """Run the batch; if it fails as a whole, run each request alone so one bad job fails alone."""
        try:
            gens = self.engine.generate(requests)
            if len(gens) != len(requests):
                raise RuntimeError(f"engine returned {len(gens)} results for {len(requests)} requests")
            return list(gens)
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            log.warning("batch_error", error=f"{type(exc).__name__}: {exc}", batch=len(requests),
                        detail="running the batch's jobs one at a time")
        out: list[Union[Generation, Exception]] = []
        for req in requests:
            try:
                out.append(self.engine.generate([req])[0])
            except Exception as exc:
                out.append(exc)
        return out

    def _fail(self, job: Job, files: list[FileRecord], error: str, permanent: bool, report: BatchReport) -> None:
        status = self.queue.fail(job, error, permanent)
        if status is None:
            log.warning("lease_lost", job_id=job.id, task=job.task)
            return
        if status == FAILED:
            report.failed += 1
            self.settler.failed(files, job.task, error, job.attempts)
            log.warning("job_failed", task=job.task, job_id=job.id, file=job.source_path, status="failed",
                        attempt=job.attempts, error=error)
        else:
            report.retried += 1
            log.warning("job_retry", task=job.task, job_id=job.id, file=job.source_path, status="queued",
                        attempt=job.attempts, max_attempts=self.queue.max_attempts, error=error)


def _wait_ms(job: Job) -> int:
    return round((utcnow() - parse_iso(job.created_at)).total_seconds() * 1000)
