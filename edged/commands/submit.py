"""`edged submit`: copy files into the inbox atomically and queue them at once.

The copy is made the way producers should make theirs: under a dotted temp name, fsynced,
readable by the spool's group, then renamed into place without replacing anything. It is
queued right away when this user may write the database; otherwise the daemon queues it
when it sees it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from edged.commands import as_database_owner, command_parts
from edged.config import Settings
from edged.exitcodes import CliError, EdgedError, ExitCode
from edged.languages import accepted, normalise
from edged.pathnames import displayable
from edged.spool import SpoolLayout, UnsafePath, candidates
from edged.spool.root import FILE_MODE, INBOX_DIR_MODE, TEMP_PREFIX, rename_noreplace
from edged.spool.watch import Deferred
from edged.wiring import Parts, build_layout


def _copy_in(layout: SpoolLayout, src: Path, folder: list[str]) -> str:
    """Copy `src` into inbox/<folder>/; returns its inbox rel."""
    with open(src, "rb") as inp, layout.fs.folder(["inbox", *folder], create_mode=INBOX_DIR_MODE) as d:
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
            for name in candidates(src.name):
                try:
                    rename_noreplace(d, tmp, d, name)
                except FileExistsError:
                    continue
                return "/".join([*folder, name])
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


def submit(settings: Settings, files: Sequence[Path], task: str, lang: Optional[str]) -> ExitCode:
    folder = [task]
    if lang is not None:
        if task != "translate":
            raise CliError("--lang applies to --task translate only", ExitCode.USAGE)
        tag = normalise(lang)
        if tag is None:
            raise CliError(f"unknown language {lang!r}; accepted: {accepted()}", ExitCode.USAGE)
        folder.append(tag)
    layout = build_layout(settings)
    code = ExitCode.OK
    copied: list[str] = []
    for src in files:
        if not src.is_file():
            print(f"error\t{src}\tnot a regular file")
            code = ExitCode.INPUT
            continue
        if not layout.wanted("/".join([*folder, src.name])):
            print(f"error\t{src}\tthe name matches watch.ignore; rename the file")
            code = ExitCode.INPUT
            continue
        try:
            copied.append(_copy_in(layout, src, folder))
        except (OSError, UnsafePath) as exc:
            print(f"error\t{src}\t{exc}")
            code = ExitCode.INPUT
    if not copied:
        return code
    with as_database_owner(settings):
        parts, why = _queue_parts(settings)
        if parts is None:
            for rel in copied:
                print(f"-\t{displayable(rel)}\tspooled")
            print(f"edged: not queued now ({why}); the daemon queues the files when it sees them", file=sys.stderr)
            return code
        intake = parts.intake(settings)
        for rel in copied:
            try:
                taken = intake.take([layout.inbox_path(rel)])
            except Deferred:
                taken = []
            for item, res in taken:
                print(f"{res.job_id}\t{displayable(item.path)}\t{res.outcome}")
            if not taken:
                print(f"-\t{displayable(rel)}\tspooled")
    return code
