"""One daemon per database: an exclusive flock held for the life of the process.

With the lock held, any job still marked `running` at start-up belongs to a dead process,
which is what lets the daemon hand those jobs back at once instead of waiting for leases
to expire.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from edged.exitcodes import EdgedError, ExitCode


class AlreadyLocked(EdgedError):
    """Another process holds the lock (another daemon on this database or spool)."""

    code = ExitCode.ALREADY_RUNNING


class HolderUnknown(Exception):
    """The lock cannot be probed as this user (it may write the inbox but not read the state
    folder): whether a daemon runs is not known. The message says why."""


class StateLock:
    def __init__(self, path: Path, meaning: str = "") -> None:
        self.path = path
        self.meaning = meaning  # what holding it means, for the message to whoever finds it taken
        self._fd: Optional[int] = None

    def acquire(self) -> StateLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        # A few tries: `edged status` probes the lock with a brief shared hold.
        for attempt in range(10):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 9:
                    time.sleep(0.05)
                    continue
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                raise AlreadyLocked(f"another edged (pid {holder or '?'}) holds {self.path}"
                                    + (f": {self.meaning}" if self.meaning else "")) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def holder(self) -> Optional[str]:
        """The pid of the process holding the lock, or None when nobody holds it (a probe for status).

        Raises HolderUnknown when the lock cannot be opened as this user: a missing lock means no
        daemon ever started here, but one this user may not read says nothing either way."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # PermissionError above all: the state folder is the daemon's
            raise HolderUnknown(f"cannot read its lock {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        except BlockingIOError:
            return os.read(fd, 64).decode(errors="replace").strip() or "?"
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
