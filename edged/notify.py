"""sd_notify: READY, STATUS, WATCHDOG and STOPPING as datagrams on $NOTIFY_SOCKET.

A few lines instead of a dependency: the protocol is one datagram of newline-separated
KEY=VALUE pairs to a Unix socket (an abstract one when the path starts with '@'). Outside
systemd, where NOTIFY_SOCKET is unset, every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Optional

from edged.logs import get_logger

log = get_logger("edged.notify")


class Notifier:
    def __init__(self, address: Optional[str] = None, watchdog_usec: Optional[str] = None,
                 watchdog_pid: Optional[str] = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = "\0" + address[1:] if address and address.startswith("@") else address
        usec = watchdog_usec if watchdog_usec is not None else os.environ.get("WATCHDOG_USEC")
        pid = watchdog_pid if watchdog_pid is not None else os.environ.get("WATCHDOG_PID")
        mine = pid is None or pid == str(os.getpid())
        # Pings at half the interval, the margin systemd's documentation recommends.
        self.watchdog_interval = int(usec) / 2e6 if usec and usec.isdigit() and mine else None
        self._sock: Optional[socket.socket] = None
        self._last_ping = 0.0

    def send(self, **fields: object) -> None:
        if not self.address:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, self.address)
        except OSError as exc:  # systemd gone or socket unreachable: keep running, say so once
            log.warning("notify_failed", error=str(exc))
            self.address = None

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def extend_timeout(self, seconds: float) -> None:
        self.send(EXTEND_TIMEOUT_USEC=int(seconds * 1e6))

    def watchdog(self) -> None:
        """Called from the worker loop; sends at most one ping per half interval."""
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval / 2:
            self._last_ping = now
            self.send(WATCHDOG=1)

    def reloading(self) -> None:
        """Between this and the next READY=1 systemd shows the unit as "reloading"."""
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS="reloading the configuration")

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")
