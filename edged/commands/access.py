"""What the daemon's user may do with its folders and database, asked as that user.

`edged doctor` is run by root or an operator, not by the daemon: `os.access` as the caller
says nothing about the service. Run as root, the checks run in a child process that has
become the daemon's user for real (its groups included, the way systemd starts it), so that
modes, ACLs and group memberships all count as they will for the service.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from edged.config import Settings
from edged.store.db import sqlite_path
from edged.wiring import build_layout


@dataclass
class Access:
    check: str
    result: str  # ok | warn | FAIL
    detail: str
    fix: Optional[str] = None


def daemon_user(settings: Settings, given: Optional[str]) -> str:
    """The user the service runs as: as given, else the owner of its database or state folder, else
    edged for the unit's own state folder (/var/lib/edged, before the first start), else the caller."""
    if given:
        return given
    db = sqlite_path(settings.database_url)
    for path in (db, settings.state_dir):
        if path is not None and path.exists():
            # Root's too: a state folder root made is one a daemon run by root uses.
            uid = path.stat().st_uid
            try:
                return pwd.getpwuid(uid).pw_name
            except KeyError:  # a restored image, a deleted account: as_user says so
                return str(uid)
    if settings.state_dir == Path("/var/lib/edged"):  # the unit's StateDirectory=: its User=edged
        try:
            pwd.getpwnam("edged")
            return "edged"
        except KeyError:
            pass
    return pwd.getpwuid(os.geteuid()).pw_name


def _group(user: str) -> str:
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return "edged"


def _folder(name: str, path: Path, user: str, mode: str = "0750") -> Access:
    fix = (f"chown {user}:{_group(user)} {path} && chmod {mode} {path}   (or: systemd-tmpfiles --create"
           " /etc/tmpfiles.d/edged.conf, or edged install-service)")
    try:
        st = os.stat(path)
    except PermissionError:
        return Access(name, "FAIL", f"{user} may not reach {path}: a folder above it is closed to {user}", fix)
    except FileNotFoundError:
        parent = path.parent
        while not os.path.exists(parent) and parent != parent.parent:
            parent = parent.parent
        if os.access(parent, os.W_OK | os.X_OK):
            return Access(name, "warn", f"{path} does not exist yet; {user} may create it in {parent}")
        return Access(name, "FAIL", f"{path} does not exist, and {user} may not create it in {parent}", fix)
    if not stat.S_ISDIR(st.st_mode):
        return Access(name, "FAIL", f"{path} is not a folder", fix)
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return Access(name, "FAIL", f"{user} may not write {path}", fix)
    return Access(name, "ok", f"{user} may write {path}")


def _file(name: str, path: Path, user: str, write: bool, fix: str) -> Access:
    if not os.path.exists(path):
        if os.path.isdir(path.parent) and not os.access(path.parent, os.X_OK):
            return Access(name, "FAIL", f"{user} may not reach {path}", fix)
        return Access(name, "ok", f"{path} does not exist yet")
    if not os.access(path, os.R_OK | (os.W_OK if write else 0)):
        return Access(name, "FAIL", f"{user} may not {'write' if write else 'read'} {path}", fix)
    return Access(name, "ok", f"{user} may {'write' if write else 'read'} {path}")


def checks(settings: Settings, user: str) -> list[Access]:
    layout = build_layout(settings)
    found = [_folder("state_dir", settings.state_dir, user)]
    found += [_folder(f"inbox/{t}", layout.inbox / t, user, "2770") for t in layout.tasks]
    found += [_folder(f"{a}/", layout.area(a), user, "2750") for a in ("done", "failed", "out")]
    if settings.source is not None:
        found.append(_file("config_file", settings.source, user, False,
                           f"chgrp {_group(user)} {settings.source} && chmod 0640 {settings.source}"))
    db = sqlite_path(settings.database_url)
    if db is not None:
        for side in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if side == db or os.path.exists(side):
                fix = f"chown {user}:{_group(user)} {db}*   (files root made while acting for the daemon)"
                found.append(_file(f"db_file{side.name[len(db.name):]}", side, user, True, fix))
    found.append(_model(settings.model_dir, user))
    return found


def _model(model: Path, user: str) -> Access:
    """The model folder and every file in it readable (a model pulled by root with umask 077 is not)."""
    fix = f"chown -R {user}:{_group(user)} {model}   (or chmod -R g+rX {model})"
    try:
        os.stat(model)
    except FileNotFoundError:
        return Access("model_access", "ok", f"{model} does not exist (the model check says more)")
    except PermissionError:
        return Access("model_access", "FAIL", f"{user} may not reach {model}: a folder above it is closed", fix)
    if not os.access(model, os.R_OK | os.X_OK):
        return Access("model_access", "FAIL", f"{user} may not read {model}", fix)
    closed = [p.name for p in sorted(model.iterdir()) if not os.access(p, os.R_OK)]
    if closed:
        return Access("model_access", "FAIL", f"{user} may not read {', '.join(closed[:4])} in {model}", fix)
    return Access("model_access", "ok", f"{user} may read {model} and its files")


def as_user(user: str, fn: Callable[[], list[Access]]) -> list[Access]:
    """`fn` run by `user` with that user's groups (in a child when the caller is root).

    KeyError when no such user exists (a bare uid: an owner without an account)."""
    pw = pwd.getpwnam(user)
    if os.geteuid() == pw.pw_uid:
        return fn()
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        return [Access("access", "warn", f"checked as {me}, not as the daemon's user {user}: run doctor as root"
                       f" (or sudo -u {user}) to check what the service may do"), *fn()]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become the user for real, answer on the pipe, never return
        code = 1
        try:
            os.close(read_end)
            try:
                os.initgroups(user, pw.pw_gid)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                data = json.dumps([asdict(a) for a in fn()]).encode()
                code = 0
            except BaseException as exc:
                data = json.dumps([asdict(Access("access", "FAIL", f"checking as {user} failed: {exc!r}"))]).encode()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
        finally:
            os._exit(code)  # whatever happened: never go on as the daemon's user
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        raw = inp.read()
    _, status = os.waitpid(pid, 0)
    try:
        found = [Access(**a) for a in json.loads(raw)]
    except (ValueError, TypeError):
        found = []
    if not found:
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        return [Access("access", "FAIL", f"the check as {user} ended without an answer ({why})")]
    return found
