"""Why the previous daemon process ended, as far as anyone recorded it.

A job may only be blamed for a crash that it caused. A SIGKILL from outside (an operator, a
power cut, a chaos test) leaves no trace and looks exactly like a job that killed the
process, so the daemon looks for evidence that the process died of itself:

- faulthandler writes a traceback to `<state_dir>/edged.fault` on SIGSEGV, SIGBUS, SIGILL,
  SIGFPE and SIGABRT (a native crash in a decoder; systemd's watchdog sends SIGABRT);
- under systemd, `ExecStopPost=edged note-exit` records the unit's `$SERVICE_RESULT`,
  `$EXIT_CODE` and `$EXIT_STATUS` in `<state_dir>/last-exit.json`: an OOM kill, a core dump,
  a watchdog timeout.

Both are read once at start-up and cleared.
"""

from __future__ import annotations

import faulthandler
import json
import os
from pathlib import Path
from typing import IO, Mapping, Optional

FAULT_FILE = "edged.fault"
EXIT_FILE = "last-exit.json"
# systemd's SERVICE_RESULT values that mean the process died of its own doing.
_RESULTS = {"oom-kill": "an OOM kill", "core-dump": "a crash (core dump)", "watchdog": "a watchdog timeout"}
_SIGNALS = {"SEGV", "BUS", "ILL", "FPE", "ABRT", "SYS"}


def record_exit(state_dir: Path, env: Mapping[str, str] = os.environ) -> Path:
    """`edged note-exit`: what systemd said about how the service's main process ended."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / EXIT_FILE
    facts = {k: env.get(k) for k in ("SERVICE_RESULT", "EXIT_CODE", "EXIT_STATUS")}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(facts) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _from_systemd(state_dir: Path) -> Optional[str]:
    path = state_dir / EXIT_FILE
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        try:
            path.unlink()
        except OSError:
            pass
    result, code, status = facts.get("SERVICE_RESULT"), facts.get("EXIT_CODE"), facts.get("EXIT_STATUS")
    if result in _RESULTS:
        return _RESULTS[result]
    if code in ("killed", "dumped") and status in _SIGNALS:
        return f"a crash (SIG{status})"
    return None


def _from_faulthandler(state_dir: Path) -> Optional[str]:
    path = state_dir / FAULT_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    if not text:
        return None
    first = text.splitlines()[0]  # "Fatal Python error: Segmentation fault"
    return f"a crash ({first.split(':', 1)[-1].strip() or 'fatal signal'})"


def previous_death(state_dir: Path) -> Optional[str]:
    """A short description of how the last process died of itself, or None if nothing says so."""
    fault, systemd = _from_faulthandler(state_dir), _from_systemd(state_dir)  # both read, both cleared
    return fault or systemd


def watch_faults(state_dir: Path) -> IO[str]:
    """Start recording fatal signals of this process; the file starts empty."""
    state_dir.mkdir(parents=True, exist_ok=True)
    fh = open(state_dir / FAULT_FILE, "w", encoding="utf-8")  # open for the life of the process
    faulthandler.enable(file=fh, all_threads=True)
    return fh
