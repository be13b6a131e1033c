"""Continuous batching in the worker: jobs join the running rows as slots free, each commits as it ends.

With an engine that streams (the fused decoder: submit/step), the worker does not wait for a
claimed batch's longest answer before it claims again. Between engine steps it claims as many
jobs as there are free slots, prepares them and submits their prompts; a job whose prompts
have all ended is assembled, stored and settled at once, alone, while the others run on.

What stays as with batches: results commit per job; a stop claims nothing more and lets the
rows in flight finish within the drain grace (the model call is one step, so a stop at once
lands between steps and the jobs go back untouched); the watchdog is fed between steps; a job
that must run alone (`solo`, after a crash) waits until the rows in flight have ended and then
runs with no company; an engine error hands every job in flight back as a crashed batch would.
All jobs in flight together count as one batch for crash attribution (`claim(mates=…)`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence, Union

from edged import tasks
from edged.config import Settings
from edged.control import Control
from edged.engine.api import Engine, Generation, RequestError, StreamingEngine
from edged.leases import LeaseKeeper
from edged.logs import get_logger
from edged.settle import Settler
from edged.store import FileRecord, Job, Queue, StoreUnavailable
from edged.throughput import BatchReport

log = get_logger("edged.stream")

IDLE_RECHECK_S = 0.5  # an empty queue is asked again after this, or at once when intake wakes the worker


class WorkerSide(Protocol):
    """What the stream uses of the worker (worker.py): the same preparation and conclusion as a batch."""

    settings: Settings
    queue: Queue
    settler: Settler
    control: Control
    engine: Engine
    may_run: Callable[[], bool]
    tick: Callable[[], None]
    leases: LeaseKeeper
    on_batch: Callable[[BatchReport], None]

    def _prepare(self, task: tasks.Task, job: Job, files: list[FileRecord], report: BatchReport) -> Any: ...

    def _conclude(self, task: tasks.Task, items: list[Any], generations: Sequence[Union[Generation, Exception]],
                  report: BatchReport) -> None: ...


@dataclass
class _Open:
    task: tasks.Task
    item: Any  # worker._Item: the job, its files and prepared prompts
    results: list[Optional[Union[Generation, Exception]]]
    left: int


class Stream:
    def __init__(self, worker: WorkerSide) -> None:
        self.w = worker
        assert isinstance(worker.engine, StreamingEngine)  # Worker.streams said so
        self.engine: StreamingEngine = worker.engine
        self.open: dict[int, _Open] = {}  # job id -> its prompts' results so far
        self.tickets: dict[int, tuple[int, int]] = {}  # engine ticket -> (job id, prompt index)
        self.solo: Optional[int] = None  # a job running alone: nothing joins it
        self.engine_ms = 0.0
        self.idle_until = 0.0  # no claim before this (monotonic) unless intake wakes the worker

    def run(self) -> int:
        """Claim, step and settle until nothing is in flight and nothing more may be claimed; jobs handled."""
        handled = 0
        try:
            while True:
                handled += self._fill()
                if not self.open:
                    return handled
                t0 = time.perf_counter()
                with self.w.control.model_call():
                    ended = self.engine.step()
                self.engine_ms += (time.perf_counter() - t0) * 1000
                self._settle(ended)
                self.w.tick()
        except StoreUnavailable:
            self._drop()
            raise
        except Exception as exc:  # the engine failed mid-stream: as a crash of the batch would
            log.exception("stream_interrupted", jobs=len(self.open))
            ids = list(self.open)
            self._drop()
            requeued, failed = self.w.queue.interrupted(ids, f"broke off with {type(exc).__name__}: {exc}")
            log.warning("stream_interrupted_jobs", requeued=requeued, failed=failed,
                        detail="jobs in flight run alone next and are not charged")
            if failed:
                self.w.settler.reconcile()
            return handled

    def _drop(self) -> None:
        self.engine.abandon()
        self.w.leases.drop(list(self.w.leases.held))
        self.open.clear()
        self.tickets.clear()
        self.solo = None

    def _fill(self) -> int:
        """Claim as many jobs as there are free slots and submit their prompts; jobs claimed."""
        w = self.w
        if self.solo is not None or w.control.stop.is_set() or not w.may_run():
            return 0
        # The slots are fixed at start-up; a lower live batch_size holds fewer rows in flight.
        free = min(self.engine.free_slots(), w.settings.model.batch_size - self.engine.in_flight())
        if free <= 0:
            return 0
        if time.monotonic() < self.idle_until and not w.control.wake.is_set():
            return 0  # the queue was empty a moment ago: no two queries on every token's path
        w.control.wake.clear()
        solo_next = w.queue.solo_waiting()
        if solo_next and self.open:
            return 0  # it runs alone once the rows in flight have ended
        jobs = w.queue.claim(free, mates=list(self.open))
        if not jobs:
            self.idle_until = time.monotonic() + IDLE_RECHECK_S
            return 0
        w.leases.hold([j.id for j in jobs])
        if solo_next:
            self.solo = jobs[0].id  # claim() hands a solo job out alone
        task = tasks.get(jobs[0].task)
        report = BatchReport(task.name, len(jobs), provider=self.engine.provider)
        files = w.queue.files_of([j.id for j in jobs])
        for job in jobs:
            item = w._prepare(task, job, files[job.id], report)
            if item is None:
                continue
            reqs = item.prepared.requests
            entry = _Open(task, item, [None] * len(reqs), len(reqs))
            self.open[job.id] = entry
            report.requests += len(reqs)
            for i, req in enumerate(reqs):
                try:
                    self.tickets[self.engine.submit(req)] = (job.id, i)
                except RequestError as exc:
                    entry.results[i] = exc
                    entry.left -= 1
            if entry.left == 0:
                self._conclude([entry])
        # What bench/chaos.py watches to kill while rows are in the model (as engine_call for batches).
        log.debug("engine_submit", jobs=len(jobs), in_flight=self.engine.in_flight())
        if report.failed:
            w.on_batch(report)  # the jobs that failed in preparation
        return len(jobs)

    def _settle(self, ended: list[tuple[int, Generation]]) -> None:
        complete: list[_Open] = []
        for ticket, gen in ended:
            job_id, index = self.tickets.pop(ticket)
            entry = self.open[job_id]
            entry.results[index] = gen
            entry.left -= 1
            if entry.left == 0:
                complete.append(entry)
        if complete:
            self._conclude(complete)

    def _conclude(self, entries: list[_Open]) -> None:
        """Store and settle finished jobs, one report per task, carrying the engine time since the last."""
        timing = self.engine.take_timing()
        log.debug("engine_rows_ended", jobs=len(entries), in_flight=self.engine.in_flight())
        by_task: dict[str, list[_Open]] = {}
        for e in entries:
            by_task.setdefault(e.task.name, []).append(e)
            self.open.pop(e.item.job.id, None)
            self.w.leases.drop([e.item.job.id])
            if self.solo == e.item.job.id:
                self.solo = None
        share = 1.0 / len(by_task)
        for group in by_task.values():
            report = BatchReport(group[0].task.name, len(group), provider=self.engine.provider,
                                 requests=sum(len(e.results) for e in group), engine_ms=self.engine_ms * share,
                                 prefill_ms=timing.prefill_ms * share, decode_ms=timing.decode_ms * share)
            results = [r if r is not None else RuntimeError("no result") for e in group for r in e.results]
            self.w._conclude(group[0].task, [e.item for e in group], results, report)
        self.engine_ms = 0.0
