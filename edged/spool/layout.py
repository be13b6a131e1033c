"""The spool's folders, its ignore rules, and the safety checks every input passes.

Inputs are addressed by their path relative to `inbox/` ('<task>/sub/name'), which is what
the store records. Nothing here follows a symbolic link (on any component: see root.py) or
reads a file that is not a regular file inside the spool; what the worker reads is checked
against the inode and size recorded at intake.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

from edged.pathnames import displayable
from edged.spool.root import DIR_MODE, INBOX_DIR_MODE, SpoolRoot, UnsafePath, lstat_at, open_regular, tighten

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
    def __init__(self, root: Path, tasks: Sequence[str], ignore: IgnoreRules, allow_hard_links: bool = False) -> None:
        self.root = Path(root)
        self.tasks = tuple(tasks)
        self.ignore = ignore
        self.allow_hard_links = allow_hard_links
        self.inbox = self.root / "inbox"
        self.fs = SpoolRoot(self.root)

    def ensure(self) -> list[str]:
        """Create the spool's folders (modes set explicitly); returns the problems found, never raises for them.

        The spool root and inbox/ are not group-writable (producers could otherwise swap a
        task folder for a link); inbox/<task>/ is, for producers; done/, failed/ and out/
        are the daemon's alone.
        """
        if not self.root.exists():
            os.makedirs(self.root, exist_ok=True)
            os.chmod(self.root, DIR_MODE)
        tighten(self.fs.fd(), DIR_MODE)
        problems = []
        for area in AREAS:
            mode = INBOX_DIR_MODE if area == "inbox" else DIR_MODE
            for parts, want in [([area], DIR_MODE), *[([area, task], mode) for task in self.tasks]]:
                try:
                    with self.fs.folder(parts, create_mode=want):
                        pass
                except (UnsafePath, OSError) as exc:
                    problems.append(f"{'/'.join(parts)}: {exc}")
        return problems

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

        Folders are entered by descriptor, never through a link: a linked folder is listed as
        an entry (so that it can be refused) and not entered. A task folder that cannot be
        entered safely yields nothing (the daemon reports it at start-up).
        """
        bases = [self._folder_rel(top)] if top else list(self.tasks)
        for base in bases:
            if not base:
                continue
            try:
                with self.fs.folder(["inbox", *base.split("/")]) as fd:
                    yield from self._walk_from(base, fd)
            except (UnsafePath, FileNotFoundError, NotADirectoryError, PermissionError):
                continue

    def _folder_rel(self, folder: Path) -> Optional[str]:
        """'<task>/…' of a folder in the inbox (a task folder itself included)."""
        try:
            parts = Path(os.path.abspath(folder)).relative_to(os.path.abspath(self.inbox)).parts
        except ValueError:
            return None
        if not parts or parts[0] not in self.tasks or ".." in parts:
            return None
        return "/".join(parts)

    def _walk_from(self, base: str, base_fd: int) -> Iterator[Path]:
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=base_fd):
            here = self.inbox / base / os.path.normpath(dirpath)
            keep = []
            for d in dirnames:
                if self.ignore.ignored([d]):
                    continue
                st = lstat_at(dir_fd, d)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    yield here / d  # a linked folder: listed so it can be refused
                else:
                    keep.append(d)
            dirnames[:] = keep
            for name in filenames:
                if not self.ignore.ignored([name]):
                    yield here / name

    # -- safety ----------------------------------------------------------------------

    def inspect(self, path: Path) -> Optional[Inspection]:
        """Look at (never read) a candidate; None if it is gone, ignored, outside a task folder,
        or reached through a link (the link itself is what gets refused)."""
        rel = self.rel(path)
        if rel is None or not self.wanted(rel):
            return None
        task = rel.split("/", 1)[0]
        try:
            st = self.fs.lstat(["inbox", *rel.split("/")])
        except (UnsafePath, NotADirectoryError, PermissionError):
            return None
        if st is None or stat.S_ISDIR(st.st_mode):
            return None
        fp = Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stat.S_ISLNK(st.st_mode):
            return Inspection(rel, task, fp, "refused: symbolic link (edged never follows links out of the spool)")
        if not stat.S_ISREG(st.st_mode):
            return Inspection(rel, task, fp, "refused: not a regular file (FIFO, socket or device)")
        if st.st_nlink > 1 and not self.allow_hard_links:
            return Inspection(rel, task, fp, f"refused: the file has {st.st_nlink} hard links (edged reads only files"
                                             " with one name, so that nothing outside the spool is read through a"
                                             " link; spool.allow_hard_links permits producers that publish by hard"
                                             " link)")
        return Inspection(rel, task, fp)

    @contextmanager
    def _open(self, rel: str) -> Iterator[tuple[int, os.stat_result]]:
        parts = ["inbox", *rel.split("/")]
        with self.fs.folder(parts[:-1]) as d:
            fd, st = open_regular(d, parts[-1])
        try:
            yield fd, st
        finally:
            os.close(fd)

    def hash_input(self, rel: str, fp: Fingerprint) -> Optional[str]:
        """sha256 of an inbox file that is still the one inspected; None if it changed meanwhile.

        Raises PermissionError when the daemon may not read it.
        """
        try:
            with self._open(rel) as (fd, st):
                if (st.st_ino, st.st_size) != (fp.inode, fp.size):
                    return None
                digest = hashlib.sha256()
                total = 0
                while chunk := os.read(fd, _CHUNK):
                    digest.update(chunk)
                    total += len(chunk)
        except (FileNotFoundError, UnsafePath, NotADirectoryError):
            return None
        return digest.hexdigest() if total == fp.size else None

    def read_current(self, rel: str, limit: Optional[int] = None) -> tuple[bytes, os.stat_result]:
        """(bytes, fstat) of the regular file at `rel`, read once from one fd.

        The caller checks them against what intake recorded. InputChanged when nothing
        readable is there any more (removed, now a link or a FIFO, reached through a link,
        changed while read); InputRefused when it is over `limit`.
        """
        try:
            with self._open(rel) as (fd, st):
                if limit and st.st_size > limit:
                    raise InputRefused(f"input is larger than the limit of {limit} bytes")
                data = _read_all(fd, st.st_size + 1)
        except FileNotFoundError:
            raise InputChanged(f"{displayable(rel)} was removed from the inbox before it ran", removed=True) from None
        except (UnsafePath, NotADirectoryError) as exc:
            raise InputChanged(f"{displayable(rel)} is no longer a regular file reached without links: {exc}") from None
        if len(data) != st.st_size:
            raise InputChanged(f"{displayable(rel)} changed while it was read")
        return data, st


def _read_all(fd: int, limit: int) -> bytes:
    parts = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(_CHUNK, left))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class InputRefused(Exception):
    """An input that must not be read; its job fails with this message."""


class InputChanged(Exception):
    """The file at a record's path is not the file recorded at intake; it is not this job's input."""

    def __init__(self, message: str, removed: bool = False) -> None:
        super().__init__(message)
        self.removed = removed
