"""Signals and the daemon's run state: stop, stop at once, reload, wake the worker.

A signal handler may interrupt the main thread anywhere, and an exception raised from one
can land in the middle of a commit or a move. So the handlers only set flags; the one place
where they raise is inside a model call (`in_model`), which is the only thing that can take
long and is safe to abandon: its jobs go back to the queue untouched. Everywhere else the
worker stops at its next step.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

from edged.logs import get_logger

log = get_logger("edged.control")


class StopNow(BaseException):
    """Raised inside a model call when the drain grace is over or a second signal came."""


class Control:
    def __init__(self, grace_seconds: Callable[[], float], on_stopping: Callable[[], None] = lambda: None) -> None:
        self.grace_seconds = grace_seconds
        self.on_stopping = on_stopping
        self.stop = threading.Event()  # no new batch
        self.at_once = threading.Event()  # the batch in flight is handed back
        self.wake = threading.Event()  # the worker has something to look at
        self.reload = threading.Event()  # SIGHUP came
        self.signals = 0
        self.why_at_once = ""
        self._in_model = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGALRM, self._on_alarm)
        signal.signal(signal.SIGHUP, self._on_hup)

    def quiet(self) -> None:
        """Shutting down: further signals must not cut the final flush or the lock release."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 0)

    @contextmanager
    def model_call(self) -> Iterator[None]:
        """Around an engine call: the one stretch that a stop may cut short."""
        if self.at_once.is_set():
            raise StopNow
        self._in_model = True
        try:
            yield
        finally:
            self._in_model = False

    def _stop_at_once(self, why: str) -> None:
        self.why_at_once = why
        self.at_once.set()
        self.stop.set()
        self.wake.set()
        if self._in_model:
            raise StopNow

    def _on_stop(self, signum: int, _frame: object) -> None:
        self.signals += 1
        if self.signals > 1:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._stop_at_once("second signal")
            return
        grace = self.grace_seconds()
        log.info("stopping", signal=signal.Signals(signum).name, drain_grace_s=grace,
                 detail="no new batches; the batch in flight may finish within the grace; signal again to stop at once")
        self.on_stopping()
        self.stop.set()
        self.wake.set()
        if grace <= 0:
            self._stop_at_once("drain grace of 0")
            return
        signal.setitimer(signal.ITIMER_REAL, grace)

    def _on_alarm(self, _signum: int, _frame: object) -> None:
        self._stop_at_once("drain grace over")

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reload.set()
        self.wake.set()
