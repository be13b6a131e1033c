"""Test users: the daemon as its own user, producers as others (tests only; needs root).

The test interpreter may live under /root (pyenv), and the checkout under a folder of
`mktemp -d` (0700): other users cannot enter either. Rather than change the machine, a process
run as another user gets a private mount namespace in which each such folder is a
world-readable tmpfs holding bind mounts of just what the interpreter and the checkout need.
Nothing outside that process sees a difference.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

GROUP = "edgedtest"
DAEMON = "edgedtest-daemon"
PRODUCER = "edgedtest-producer"
REPO = Path(__file__).resolve().parent.parent

_WRAP = r"""set -e
i=0
for spec in $EDGED_TEST_HIDDEN; do
    dir="${spec%%=*}"; view="$EDGED_TEST_VIEW/$i"; i=$((i + 1))
    mkdir -p "$view"
    mount --bind "$dir" "$view"
    mount -t tmpfs -o mode=0755 tmpfs "$dir"
    for entry in $(echo "${spec#*=}" | tr , ' '); do
        if [ -d "$view/$entry" ]; then mkdir -p "$dir/$entry"; else touch "$dir/$entry"; fi
        mount --bind "$view/$entry" "$dir/$entry"
    done
done
exec setpriv --reuid="$EDGED_TEST_USER" --regid="$EDGED_TEST_GID" --init-groups --inh-caps=-all \
    sh -c 'umask "$0"; exec "$@"' "$EDGED_TEST_UMASK" "$@"
"""


def missing() -> str | None:
    """Why these tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (CI runs as root) to create test users"
    for tool in ("useradd", "groupadd", "setpriv", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def ensure_users() -> None:
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", "-r", GROUP], check=True)
    for user, extra in ((DAEMON, ["-g", GROUP]), (PRODUCER, ["-G", GROUP])):
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "-r", "-M", "-d", "/nonexistent", "-s", "/usr/sbin/nologin", *extra, user],
                           check=True)


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def gid(group: str = GROUP) -> int:
    return grp.getgrnam(group).gr_gid


def _hidden() -> list[str]:
    """`folder=entry,entry` for each folder other users cannot enter on the way to the
    interpreter or the checkout, outermost first, with the entries on the way through it."""
    through: dict[str, set[str]] = {}
    for p in (sys.base_prefix, sys.prefix, os.path.realpath(sys.executable), str(REPO)):
        parts = Path(os.path.realpath(p)).parts
        for depth in range(1, len(parts) - 1):
            folder = os.path.join(*parts[:depth + 1])
            if not os.stat(folder).st_mode & 0o001:
                through.setdefault(folder, set()).add(parts[depth + 1])
    return [f"{folder}={','.join(sorted(entries))}" for folder, entries in
            sorted(through.items(), key=lambda kv: kv[0].count(os.sep))]


def as_user(user: str, argv: Sequence[str], umask: int, view: Path) -> list[str]:
    """A command line that runs `argv` as `user` with `umask`, able to reach the interpreter."""
    env_prefix = ["env", f"EDGED_TEST_VIEW={view}", f"EDGED_TEST_HIDDEN={' '.join(_hidden())}",
                  f"EDGED_TEST_USER={user}", f"EDGED_TEST_GID={pwd.getpwnam(user).pw_gid}",
                  f"EDGED_TEST_UMASK={umask:04o}"]
    view.mkdir(parents=True, exist_ok=True)
    return [*env_prefix, "unshare", "-m", "--propagation", "private", "sh", "-c", _WRAP, "sh", *argv]


def shell_as(user: str, script: str, umask: int, cwd: Path) -> subprocess.CompletedProcess:
    """A producer's shell commands (no interpreter needed, so no namespace)."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups",
                           "sh", "-c", f"umask {umask:04o}; {script}"], cwd=cwd, capture_output=True, text=True,
                          timeout=60)
