"""`edged reload`: SIGHUP to the daemon, then wait until it says how the reload went.

The unit's ExecReload. systemd 252 (Debian 12) has no Type=notify-reload, and a bare
`kill -HUP` returns at once: `systemctl reload` would report success before the file was
even read, and a refused file would go unnoticed. The daemon records each reload's outcome
in the runtime table (and tells systemd RELOADING=1 … READY=1 meanwhile); this waits for it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any, Optional

from edged.commands import command_parts
from edged.config import Settings
from edged.exitcodes import CliError, EdgedError, ExitCode
from edged.store.postgres import shown
from edged.store.stats import Stats


def _runtime(settings: Settings) -> dict[str, Any]:
    queue = command_parts(settings, "read").queue
    return Stats(queue.engine, queue.spool_box).runtime()


def _signal(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CliError(f"no daemon runs as pid {pid}", ExitCode.NOT_FOUND) from None
    except PermissionError:
        raise CliError(f"may not signal pid {pid}: run as its user or root", ExitCode.NO_ACCESS) from None


def reload(settings: Settings, pid: Optional[int], timeout: float) -> ExitCode:
    try:
        runtime = _runtime(settings)
    except EdgedError:
        runtime = {}  # no database where this config says: it may have moved (state_dir, database)
    recorded = runtime.get("pid")
    if pid is None:
        if not isinstance(recorded, int):
            raise CliError("no daemon has run on this database (no pid recorded)", ExitCode.NOT_FOUND)
        pid = recorded
    if recorded != pid:
        # The edited file names another database than the one the daemon uses (state_dir or
        # database changed: keys that wait for a restart), so its word cannot be read here.
        _signal(pid)
        print(f"signalled pid {pid}; not waiting for its word: this config's database"
              f" ({shown(settings.database_url)}) is not the one it runs on (state_dir or database changed:"
              " restart the service for those)")
        return ExitCode.OK
    # The daemon counts its reloads: wait for one past the count now (a clock could step).
    last = runtime.get("reload")
    before = int(last.get("seq", 0)) if isinstance(last, dict) and last.get("pid") == pid else 0
    _signal(pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcome = _runtime(settings).get("reload")
        if isinstance(outcome, dict) and outcome.get("pid") == pid and int(outcome.get("seq", 0)) > before:
            if not outcome.get("ok"):
                print(f"edged: reload refused, the running configuration stays: {outcome.get('error')}",
                      file=sys.stderr)
                return ExitCode.CONFIG
            changed = ", ".join(outcome.get("changed") or []) or "nothing"
            print(f"reloaded: changed {changed}")
            if outcome.get("restart_needed"):
                print(f"these keys wait for a restart: {', '.join(outcome['restart_needed'])}")
            return ExitCode.OK
        time.sleep(0.2)
    # The worker takes the reload between engine calls; one call may be long on a slow box.
    raise CliError(f"pid {pid} did not finish the reload within {timeout:.0f} s", ExitCode.ERROR)
