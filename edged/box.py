"""This box's lasting name: what its leases and rows carry in a database other boxes share.

A host name is no name for a box: boxes cloned from one image share theirs, and a pid repeats
in every container. So a box is named once, by the operator (`box_id` in the config) or by a
random UUID made at its first start and kept in `<state_dir>/box_id`, written whole (a
temp file, fsync, rename) so that a power cut never leaves a half name behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Optional

from edged.config import BOX_ID_CHARS, Settings

FILE = "box_id"
UNNAMED = "unnamed"  # a command's view of a box that never started: it writes no leases


def _read(path: Path) -> Optional[str]:
    try:
        # bytes.decode, not read_text: a command acting as the daemon's user may no longer
        # reach the codec modules of an interpreter kept under /root.
        value = path.read_bytes().decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return value if value and len(value) <= 64 and set(value) <= BOX_ID_CHARS else None


def box_id(settings: Settings, create: bool = False) -> str:
    """The configured name, else the kept one, else (`create`, the daemon) a new one kept from now on."""
    if settings.box_id:
        return settings.box_id
    path = settings.state_dir / FILE
    found = _read(path)
    if found or not create:
        return found or UNNAMED
    made = str(uuid.uuid4())
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, (made + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        # link, not rename: should two first starts race, the one that linked first is the name.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    dirfd = os.open(settings.state_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
    return _read(path) or made
