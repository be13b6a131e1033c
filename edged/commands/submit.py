"""`edged submit`: copy files into the inbox atomically and queue them at once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from edged.commands import open_parts
from edged.config import Settings
from edged.exitcodes import CliError, ExitCode
from edged.spool import move_no_clobber
from edged.tasks.languages import accepted, normalise


def _copy_in(src: Path, folder: Path) -> Path:
    """Copy under a dotted temp name (ignored by the watcher), fsync, then link into place."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{src.name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        return move_no_clobber(Path(tmp), folder / src.name)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def submit(settings: Settings, files: Sequence[Path], task: str, lang: Optional[str]) -> ExitCode:
    folder_parts = [task]
    if lang is not None:
        if task != "translate":
            raise CliError("--lang applies to --task translate only", ExitCode.USAGE)
        tag = normalise(lang)
        if tag is None:
            raise CliError(f"unknown language {lang!r}; accepted: {accepted()}", ExitCode.USAGE)
        folder_parts.append(tag)
    parts = open_parts(settings)
    parts.layout.ensure()
    intake = parts.intake(settings)
    folder = parts.layout.inbox.joinpath(*folder_parts)
    code = ExitCode.OK
    for src in files:
        if not src.is_file():
            print(f"error\t{src}\tnot a regular file")
            code = ExitCode.INPUT
            continue
        if not parts.layout.wanted("/".join([*folder_parts, src.name])):
            print(f"error\t{src}\tthe name matches watch.ignore; rename the file")
            code = ExitCode.INPUT
            continue
        try:
            dest = _copy_in(src, folder)
        except OSError as exc:
            print(f"error\t{src}\t{exc}")
            code = ExitCode.INPUT
            continue
        for item, res in intake.take([dest]):
            print(f"{res.job_id}\t{item.path}\t{res.outcome}")
    return code
