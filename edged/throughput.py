"""Throughput accounting: one log line per batch, one summary per period (log line + SQL row)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Optional

from edged.logs import get_logger
from edged.store.stats import Period, Stats
from edged.timeutil import utcnow

log = get_logger("edged.throughput")


@dataclass
class BatchReport:
    """What one claimed batch did. Times are measured, tokens are the engine's own counts."""

    task: str
    claimed: int
    done: int = 0
    failed: int = 0
    retried: int = 0
    requests: int = 0  # prompts sent to the engine (a long translation is several)
    engine_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    provider: str = ""
    waits_ms: list[float] = field(default_factory=list)  # queue wait of each job done

    @property
    def output_tok_per_s(self) -> float:
        return self.output_tokens / (self.engine_ms / 1000) if self.engine_ms else 0.0


def log_batch(report: BatchReport) -> None:
    log.info("batch", task=report.task, claimed=report.claimed, requests=report.requests, done=report.done,
             failed=report.failed, retried=report.retried, prompt_tokens=report.prompt_tokens,
             output_tokens=report.output_tokens, engine_ms=round(report.engine_ms, 1),
             prefill_ms=round(report.prefill_ms, 1), decode_ms=round(report.decode_ms, 1),
             output_tok_per_s=round(report.output_tok_per_s, 1), provider=report.provider or None)


class Meter:
    """Adds up batch reports between summaries. Fed by the worker, drained by the scheduler."""

    def __init__(self, stats: Stats, model: Optional[str] = None, provider: Optional[str] = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.stats = stats
        self.model = model
        self.provider = provider
        self.clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._reset()
        # Running totals since start, for the metrics endpoint.
        self.totals: dict[str, float] = {"jobs_done": 0, "jobs_failed": 0, "jobs_retried": 0, "batches": 0,
                                         "prompt_tokens": 0, "output_tokens": 0, "engine_ms": 0.0}

    def _reset(self) -> None:
        self._acc = {"jobs_done": 0, "jobs_failed": 0, "jobs_retried": 0, "batches": 0, "prompt_tokens": 0,
                     "output_tokens": 0, "engine_ms": 0.0}
        self._waits: list[float] = []

    def add(self, report: BatchReport) -> None:
        values = {"jobs_done": report.done, "jobs_failed": report.failed, "jobs_retried": report.retried,
                  "batches": 1, "prompt_tokens": report.prompt_tokens, "output_tokens": report.output_tokens,
                  "engine_ms": report.engine_ms}
        with self._lock:
            for key, value in values.items():
                self._acc[key] += value
                self.totals[key] += value
            self._waits.extend(report.waits_ms)

    def flush(self) -> Optional[Period]:
        """Close the period: log it and store it. A period with work queued but none done is
        stored too (a flat line in a graph is information); one with nothing at all is not."""
        with self._lock:
            acc, waits = dict(self._acc), list(self._waits)
            start, end = self._start, self.clock()
        queued = self.stats.queued_by_task()
        period = Period(start=start, end=end, jobs_done=int(acc["jobs_done"]), jobs_failed=int(acc["jobs_failed"]),
                        jobs_retried=int(acc["jobs_retried"]), batches=int(acc["batches"]),
                        prompt_tokens=int(acc["prompt_tokens"]), output_tokens=int(acc["output_tokens"]),
                        engine_ms=acc["engine_ms"], avg_wait_ms=sum(waits) / len(waits) if waits else None,
                        queued_by_task=queued, model=self.model, provider=self.provider)
        if not acc["batches"] and not queued:
            return None
        self.stats.record(period)
        # Only now, with the row stored: a failed write (a full disk) keeps the figures for
        # the next period instead of losing them. Batches added meanwhile stay counted.
        with self._lock:
            for key, value in acc.items():
                self._acc[key] -= value
            del self._waits[:len(waits)]
            self._start = end
        seconds = max((end - start).total_seconds(), 1e-9)
        log.info("throughput", period_s=round(seconds, 1), jobs_done=period.jobs_done,
                 jobs_failed=period.jobs_failed, jobs_retried=period.jobs_retried, batches=period.batches,
                 queued=sum(queued.values()), queued_by_task=queued,
                 avg_wait_ms=None if period.avg_wait_ms is None else round(period.avg_wait_ms),
                 prompt_tokens=period.prompt_tokens, output_tokens=period.output_tokens,
                 output_tok_per_s=period.output_tok_per_s,
                 jobs_per_min=round(period.jobs_done * 60 / seconds, 2),
                 engine_busy=round(min(period.engine_ms / 1000 / seconds, 1.0), 3))
        return period
