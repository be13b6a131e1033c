"""Keeping the leases of the jobs in flight: renewed from the worker's tick.

A lease only has to outlast a stall of the worker, not its longest batch: the worker renews
every lease it holds a third of the way through, so a slow translation on a small CPU keeps its
jobs, while a box that died (or lost its link to a shared database) loses them within one lease
to whichever worker recovers them. A job whose renewal comes back empty has been handed on; its
completion is refused by the queue (fenced by owner), so nothing is stored twice.
"""

from __future__ import annotations

import time
from typing import Callable

from edged.logs import get_logger
from edged.store import Queue, StoreUnavailable

log = get_logger("edged.leases")


class LeaseKeeper:
    def __init__(self, queue: Queue, clock: Callable[[], float] = time.monotonic) -> None:
        self.queue = queue
        self.clock = clock
        self.held: set[int] = set()  # job ids in flight (the worker adds and removes them)
        self.lost: set[int] = set()  # handed on while we held them: their results will be refused
        self._renewed_at = clock()

    def hold(self, job_ids: list[int]) -> None:
        if not self.held:
            self._renewed_at = self.clock()  # a fresh claim's lease is new
        self.held.update(job_ids)

    def drop(self, job_ids: list[int]) -> None:
        self.held.difference_update(job_ids)
        self.lost.difference_update(job_ids)

    def tick(self) -> None:
        """Renew every held lease when a third of the lease has passed since the last renewal."""
        if not self.held or self.clock() - self._renewed_at < self.queue.lease_seconds / 3:
            return
        ids = sorted(self.held - self.lost)
        try:
            kept = set(self.queue.renew(ids))
        except StoreUnavailable as exc:
            # Not fatal here: the batch goes on, and its results wait for the database as any write does.
            log.warning("lease_renewal_failed", jobs=len(ids), error=str(exc))
            return
        self._renewed_at = self.clock()
        gone = set(ids) - kept
        if gone:
            self.lost |= gone
            log.warning("lease_lost", job_ids=sorted(gone),
                        detail="another worker recovered these jobs (this one stalled for longer than a lease);"
                               " their results here will not be stored")
