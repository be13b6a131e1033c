"""The spool's folders, its ignore rules, and the safety checks every input passes.

Inputs are addressed by their path relative to `inbox/` ('<task>/sub/name'), which is what
the store records. Nothing here follows a symbolic link or reads a file that is not a
regular file inside the spool.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

AREAS = ("inbox", "done", "failed", "out")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fingerprint:
    """What identifies one file instance on disk: replacing or rewriting it changes this."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    def key(self) -> tuple:
        return (self.inode, self.size, self.mtime_ns, self.ctime_ns)


@dataclass(frozen=True)
class Inspection:
    rel: str  # '<task>/sub/name'
    task: str
    fingerprint: Optional[Fingerprint]
    refused: Optional[str] = None  # set when the file must not be read


class IgnoreRules:
    """fnmatch patterns tested against each path component (so '@eaDir' hides a whole tree)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)

    def ignored(self, parts: Iterable[str]) -> bool:
        return any(fnmatch.fnmatchcase(part, pat) for part in parts for pat in self.patterns)


class SpoolLayout:
    def __init__(self, root: Path, tasks: Sequence[str], ignore: IgnoreRules) -> None:
        self.root = Path(root)
        self.tasks = tuple(tasks)
        self.ignore = ignore
        self.inbox = self.root / "inbox"

    def ensure(self) -> None:
        for area in AREAS:
            for task in self.tasks:
                (self.root / area / task).mkdir(parents=True, exist_ok=True)

    def area(self, name: str) -> Path:
        return self.root / name

    # -- addressing ------------------------------------------------------------------

    def rel(self, path: Path) -> Optional[str]:
        """'<task>/…' for a path inside a task folder of the inbox, else None."""
        try:
            parts = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.inbox)).parts
        except ValueError:
            return None
        if len(parts) < 2 or parts[0] not in self.tasks or ".." in parts:
            return None
        return "/".join(parts)

    def inbox_path(self, rel: str) -> Path:
        return self.inbox / rel

    def wanted(self, rel: str) -> bool:
        return not self.ignore.ignored(rel.split("/")[1:])

    # -- discovery -------------------------------------------------------------------

    def walk(self, top: Optional[Path] = None) -> Iterator[Path]:
        """Every non-ignored entry that is not a directory, below `top` (default: all task folders).

        Symbolic links to directories are listed as entries (and later refused), never entered.
        """
        tops = [top] if top else [self.inbox / t for t in self.tasks]
        for base in tops:
            for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
                keep = []
                for d in dirnames:
                    if self.ignore.ignored([d]):
                        continue
                    if os.path.islink(os.path.join(dirpath, d)):
                        yield Path(dirpath) / d  # a linked folder: listed so it can be refused
                    else:
                        keep.append(d)
                dirnames[:] = keep
                for name in filenames:
                    if not self.ignore.ignored([name]):
                        yield Path(dirpath) / name

    # -- safety ----------------------------------------------------------------------

    def inspect(self, path: Path) -> Optional[Inspection]:
        """Look at (never read) a candidate; None if it is gone, ignored or outside a task folder."""
        rel = self.rel(path)
        if rel is None or not self.wanted(rel):
            return None
        task = rel.split("/", 1)[0]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        fp = Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stat.S_ISLNK(st.st_mode):
            return Inspection(rel, task, fp, "refused: symbolic link (edged never follows links out of the spool)")
        if stat.S_ISDIR(st.st_mode):
            return None
        if not stat.S_ISREG(st.st_mode):
            return Inspection(rel, task, fp, "refused: not a regular file (FIFO, socket or device)")
        real_parent = os.path.realpath(path.parent)
        if os.path.commonpath([real_parent, os.path.realpath(self.inbox)]) != os.path.realpath(self.inbox):
            return Inspection(rel, task, fp, "refused: resolves outside the spool")
        return Inspection(rel, task, fp)

    def open_input(self, rel: str) -> int:
        """An fd for reading an inbox file: no links followed, no blocking on a FIFO swapped in."""
        path = self.inbox_path(rel)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InputRefused(f"refused: {rel} became a symbolic link") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise InputRefused(f"refused: {rel} is not a regular file")
        return fd

    def sha256(self, rel: str) -> tuple[str, int]:
        """(hex digest, bytes read) of an inbox file."""
        fd = self.open_input(rel)
        digest = hashlib.sha256()
        total = 0
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                total += len(chunk)
        return digest.hexdigest(), total

    def read_input(self, rel: str, limit: Optional[int] = None) -> bytes:
        fd = self.open_input(rel)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1 if limit else -1)
        if limit and len(data) > limit:
            raise InputRefused(f"input is larger than the limit of {limit} bytes")
        return data


class InputRefused(Exception):
    """An input that must not be read; its job fails with this message."""
