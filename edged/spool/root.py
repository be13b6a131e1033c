"""The spool root, opened once; every folder and file below it reached by file descriptor.

Producers can rename, replace and link things in the inbox at any moment. A path that is
checked and then opened by name can meet a symbolic link swapped in between, on any of its
components; `O_NOFOLLOW` on the last one does not help. So nothing here opens a path: each
component is opened relative to its parent's descriptor with `O_NOFOLLOW | O_DIRECTORY`, and
a link anywhere on the way is refused. Folders the daemon makes get their mode set
explicitly (never group-writable unless they are producers' folders), not left to the umask.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

NAME_MAX = 255
DIR_MODE = 0o2750  # the daemon's folders (done/, failed/, out/): producers read, never write
INBOX_DIR_MODE = 0o2770  # folders producers drop into
FILE_MODE = 0o640  # result files, error notes, copies: readable by the spool group, never world
TEMP_PREFIX = ".edged-"  # short, so a 255-byte name never makes a temp name too long
TEMP_SUFFIX = ".tmp"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
_RENAME_NOREPLACE = 1


class UnsafePath(Exception):
    """A component below the spool root is a symbolic link or not a folder: edged does not go there."""


def _libc_renameat2():  # a ctypes function or None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_renameat2 = _libc_renameat2()


def rename_noreplace(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """Rename without replacing: FileExistsError if `dst` exists. Works on the entry, never through a link."""
    if _renameat2 is not None:
        if _renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), src)
    # No renameat2 here (an old kernel, some FUSE mounts). The destination folders are the
    # daemon's own, where nobody else writes, so a check before the rename is race-free.
    try:
        os.stat(dst, dir_fd=dst_dir, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
        return
    raise FileExistsError(errno.EEXIST, "file exists", dst)


def _shorten(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of its encoding, between characters."""
    while len(os.fsencode(text)) > max_bytes:
        text = text[:-1]
    return text


def fit_name(stem: str, tail: str = "") -> str:
    """stem + tail within NAME_MAX bytes; a shortened stem ends in '~' and 8 hex of its hash,
    so that two long names that share a beginning stay apart."""
    if len(os.fsencode(stem + tail)) <= NAME_MAX:
        return stem + tail
    tag = "~" + hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    return _shorten(stem, NAME_MAX - len(os.fsencode(tail)) - len(tag)) + tag + tail


def candidates(name: str) -> Iterator[str]:
    """name, then 'stem.1.ext', 'stem.2.ext' … for a clash; each within NAME_MAX."""
    stem, ext = os.path.splitext(name)
    if len(os.fsencode(ext)) > 32:  # not an extension, just a dot in a long name
        stem, ext = name, ""
    yield fit_name(stem, ext)
    n = 1
    while True:
        yield fit_name(stem, f".{n}{ext}")
        n += 1


def lstat_at(dir_fd: int, name: str) -> Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_regular(dir_fd: int, name: str) -> tuple[int, os.stat_result]:
    """(fd, fstat) of a regular file; never follows a link, never blocks on a FIFO.

    Raises UnsafePath for a link or anything that is not a regular file, FileNotFoundError
    when it is gone. The caller closes the fd.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "no such file", name)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{name}: not a regular file")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{name}: became a symbolic link") from None
        raise
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode):
        os.close(fd)
        raise UnsafePath(f"{name}: not a regular file")
    return fd, fst


def _temp_file(dir_fd: int, data: bytes, mode: int) -> tuple[str, os.stat_result]:
    """A temp file holding `data`, fsynced, with exactly `mode` (the umask's group-write never reaches it)."""
    tmp = f"{TEMP_PREFIX}{os.urandom(6).hex()}{TEMP_SUFFIX}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        os.fsync(fd)
        return tmp, os.fstat(fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    finally:
        os.close(fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def write_new(dir_fd: int, name: str, data: bytes, mode: int = FILE_MODE) -> os.stat_result:
    """Write `name` whole or not at all (temp file, fsync, rename); FileExistsError if it exists."""
    tmp, st = _temp_file(dir_fd, data, mode)
    try:
        rename_noreplace(dir_fd, tmp, dir_fd, name)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise
    return st


def replace_file(dir_fd: int, name: str, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `name` atomically, replacing the entry there (only in the daemon's own folders)."""
    tmp, _st = _temp_file(dir_fd, data, mode)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(dir_fd, tmp)
        raise


def tighten(fd: int, mode: int) -> None:
    """Take away group/other write that `mode` does not grant from a folder of ours.

    Folders made by an older edged under the unit's umask were group-writable.
    """
    st = os.fstat(fd)
    extra = st.st_mode & 0o022 & ~mode
    if extra and st.st_uid == os.geteuid():
        os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~extra)


class SpoolRoot:
    """The spool folder, held open by one descriptor for the life of the process."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: Optional[int] = None

    def fd(self) -> int:
        if self._fd is None:
            # The root itself may be a link (the operator's choice of where the spool lives);
            # nothing below it may.
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @contextmanager
    def folder(self, parts: Sequence[str], create_mode: Optional[int] = None) -> Iterator[int]:
        """The fd of root/parts…, every component opened without following a link.

        `create_mode`: make missing folders, each with exactly this mode. UnsafePath when a
        component is a link or not a folder; FileNotFoundError when one is missing.
        """
        opened: list[int] = []
        current = self.fd()
        try:
            for i, part in enumerate(parts):
                if part in ("", ".", ".."):
                    raise UnsafePath(f"{'/'.join(parts)}: not a plain path")
                current = self._step(current, part, create_mode, "/".join(parts[:i + 1]))
                opened.append(current)
            yield current
        finally:
            for fd in opened:
                os.close(fd)

    @staticmethod
    def _step(parent: int, part: str, create_mode: Optional[int], shown: str) -> int:
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
            if create_mode is not None:
                tighten(fd, create_mode)
            return fd
        except FileNotFoundError:
            if create_mode is None:
                raise
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(f"{shown} is a symbolic link or not a folder: edged does not follow links"
                                 " below the spool") from None
            raise
        try:
            os.mkdir(part, 0o700, dir_fd=parent)
            made = True
        except FileExistsError:
            made = False
        try:
            fd = os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafePath(f"{shown} is a symbolic link or not a folder") from None
            raise
        if made:
            os.fchmod(fd, create_mode)
        return fd

    def lstat(self, parts: Sequence[str]) -> Optional[os.stat_result]:
        """lstat of root/parts… with no link followed on the way; None if it is not there."""
        try:
            with self.folder(parts[:-1]) as d:
                return lstat_at(d, parts[-1])
        except FileNotFoundError:
            return None
