"""How long a job waits before it runs again after a failure or a crash."""

from __future__ import annotations

import random
from typing import Callable


def backoff_delay(attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number `attempt` (1-based): base·2^(attempt-1), ±50 % jitter, capped.

    Jitter keeps a burst of jobs that failed together (a full disk, a driver reset) from
    coming back in lock-step.
    """
    delay = base * (2 ** max(0, attempt - 1))
    return min(cap, delay * (0.5 + rand()))
