"""`edged submit`: copy files (of folders, or standard input) into the inbox atomically and queue them at once.

The copy is made the way producers should make theirs: under a dotted temp name, fsynced,
readable by the spool's group, then renamed into place without replacing anything. It is
queued right away when this user may write the database; otherwise the daemon queues it
when it sees it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO, Optional, Sequence

from edged.commands import as_database_owner, command_parts
from edged.commands.inputs import expand
from edged.config import Settings
from edged.exitcodes import CliError, EdgedError, ExitCode
from edged.languages import accepted, normalise
from edged.lock import HolderUnknown, StateLock
from edged.pathnames import for_terminal
from edged.spool import SpoolLayout, UnsafePath, candidates
from edged.spool.root import FILE_MODE, INBOX_DIR_MODE, TEMP_PREFIX, rename_noreplace
from edged.spool.watch import Deferred
from edged.wiring import Parts, build_layout, lock_path


def _copy_in(layout: SpoolLayout, inp: BinaryIO, name: str, folder: list[str]) -> str:
    """Copy what `inp` reads into inbox/<folder>/<name> (suffixed on a clash); returns its inbox rel."""
    with layout.fs.folder(["inbox", *folder], create_mode=INBOX_DIR_MODE) as d:
        tmp = f"{TEMP_PREFIX}{os.urandom(6).hex()}.part"  # a dotfile: the watcher ignores it until renamed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d)
        try:
            try:
                while chunk := inp.read(1 << 20):
                    os.write(fd, chunk)
                # Readable by the spool's group (the daemon), whoever submits: never 0600.
                os.fchmod(fd, FILE_MODE)
                os.fsync(fd)
            finally:
                os.close(fd)
            for cand in candidates(name):
                try:
                    rename_noreplace(d, tmp, d, cand)
                except FileExistsError:
                    continue
                return "/".join([*folder, cand])
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=d)
            except FileNotFoundError:
                pass
            raise
    raise AssertionError("unreachable")


def _queue_parts(settings: Settings) -> tuple[Optional[Parts], Optional[str]]:
    try:
        return command_parts(settings, "write"), None
    except EdgedError as exc:
        return None, str(exc)


def _daemon_warning(settings: Settings) -> Optional[str]:
    """What to tell the operator about the daemon, as `edged status` decides it (a live daemon
    holds the database's lock), or None when one runs."""
    try:
        if StateLock(lock_path(settings)).holder() is not None:
            return None
    except HolderUnknown as exc:
        return f"edged: cannot tell whether a daemon is running ({exc}); the files wait in the inbox until one does"
    return "edged: no daemon is running: the files wait in the inbox until `edged run` (or the service) starts"


def submit(settings: Settings, files: Sequence[Path], task: str, lang: Optional[str],
           name: Optional[str] = None) -> ExitCode:
    folder = [task]
    if lang is not None:
        if task != "translate":
            raise CliError("--lang applies to --task translate only", ExitCode.USAGE)
        tag = normalise(lang)
        if tag is None:
            raise CliError(f"unknown language {lang!r}; accepted: {accepted()}", ExitCode.USAGE)
        folder.append(tag)
    if name is not None and Path("-") not in files:
        raise CliError("--name names what - reads from standard input; no - was given", ExitCode.USAGE)
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise CliError(f"--name {name!r}: a file name, without folders", ExitCode.USAGE)
    layout = build_layout(settings)
    code = ExitCode.OK
    copied: list[str] = []
    for item in expand(files, settings, task, name, layout.wanted):
        if item.error is not None:
            print(f"error\t{for_terminal(item.shown)}\t{item.error}")
            code = ExitCode.INPUT
            continue
        dest = [*folder, *item.subfolders]
        if task == "translate" and lang is None and item.subfolders:
            # inbox/translate/<first folder>/ names the target language: a submitted folder goes
            # below the configured one, or its own name would be read as a language.
            dest = [task, settings.tasks.translate.target_language, *item.subfolders]
        if not layout.wanted("/".join([*dest, item.name])):
            print(f"error\t{for_terminal(item.shown)}\tthe name matches watch.ignore; rename the file")
            code = ExitCode.INPUT
            continue
        try:
            with item.open() as inp:
                copied.append(_copy_in(layout, inp, item.name, dest))
        except (OSError, UnsafePath) as exc:
            print(f"error\t{for_terminal(item.shown)}\t{exc}")
            code = ExitCode.INPUT
    if not copied:
        return code
    warning = _daemon_warning(settings)
    if warning:
        print(warning, file=sys.stderr)
    with as_database_owner(settings):
        parts, why = _queue_parts(settings)
        if parts is None:
            for rel in copied:
                print(f"-\t{for_terminal(rel)}\tspooled")
            print(f"edged: not queued now ({why}); the daemon queues the files when it sees them", file=sys.stderr)
            return code
        intake = parts.intake(settings)
        for rel in copied:
            try:
                taken = intake.take([layout.inbox_path(rel)])
            except Deferred:
                taken = []
            for got, res in taken:
                print(f"{res.job_id}\t{for_terminal(got.path)}\t{res.outcome}")
            if not taken:
                print(f"-\t{for_terminal(rel)}\tspooled")
    return code
