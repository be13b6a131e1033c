"""What the running daemon tells `edged status` (another process) about itself: the `runtime` table."""

from __future__ import annotations

import os
from typing import Any

from edged.logs import get_logger
from edged.spool.space import SpaceGuard
from edged.store import StoreUnavailable
from edged.store.stats import Stats
from edged.timeutil import now_iso

log = get_logger("edged.facts")


class RuntimeFacts:
    def __init__(self, stats: Stats, guard: SpaceGuard) -> None:
        self.stats = stats
        self.guard = guard
        self.state: dict[str, Any] = {"pid": os.getpid(), "started_at": now_iso(), "intake_paused": False,
                                      "processing_open": True}

    def publish(self, **facts: Any) -> None:
        """Record `facts` with the disk guard's, best effort (a full disk must not stop anything)."""
        self.state.update(facts, intake_paused=self.guard.paused, spool_free_mb=self.guard.free,
                          min_free_mb=self.guard.min_free_mb, low_disk=dict(self.guard.low))
        try:
            self.stats.set_runtime(**self.state)
        except StoreUnavailable as exc:
            log.debug("runtime_unrecorded", error=str(exc))

    def snapshot(self) -> dict[str, Any]:
        return dict(self.state)
