"""Moving inputs out of the inbox and writing files next to them, never overwriting anything.

What moves is the file recorded at intake (its inode), never "whatever is at the path": a
file replaced under the same name is left for intake to take in as a new file. Every move
goes through folder descriptors with no link followed (root.py). When the daemon may not
remove a file from a producer's folder (a folder made with umask 022, another filesystem),
the file is copied to done/ or failed/ instead and the original stays, recorded as such.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Optional

from edged.config import Settings
from edged.pathnames import displayable
from edged.spool.layout import SpoolLayout
from edged.spool.root import (
    DIR_MODE,
    INBOX_DIR_MODE,
    TEMP_PREFIX,
    TEMP_SUFFIX,
    UnsafePath,
    candidates,
    fit_name,
    lstat_at,
    open_regular,
    rename_noreplace,
    replace_file,
    write_new,
)

# The daemon may not take the file out of the folder it is in: copy it instead.
_CANNOT_REMOVE = (errno.EACCES, errno.EPERM, errno.EXDEV, errno.EROFS, errno.EBUSY)
_CHUNK = 1 << 20


def error_note_name(name: str) -> str:
    return fit_name(name, ".error.json")


@dataclass(frozen=True)
class Moved:
    """What became of one recorded input."""

    state: str  # moved | copied (the original stays) | missing (gone) | changed (not the recorded file)
    to: Optional[str] = None  # relative to the spool root: 'done/caption/a.jpg'
    inode: Optional[int] = None  # of the file at `to`
    note: Optional[str] = None


class SpoolFiles:
    """Where finished inputs and result files go."""

    def __init__(self, layout: SpoolLayout, write_results: bool = True) -> None:
        self.layout = layout
        self.fs = layout.fs
        self.write_results = write_results

    def apply(self, settings: Settings) -> None:
        self.write_results = settings.spool.write_result_files

    # -- inputs out of the inbox ---------------------------------------------------------

    def move_out(self, rel: str, area: str, inode: Optional[int] = None, size: Optional[int] = None,
                 mtime_ns: Optional[int] = None) -> Moved:
        """Move the recorded file inbox/<rel> to <area>/<rel> (suffixed on a clash).

        If it is already gone (a crash after the move, before it was recorded), it is looked
        for where the move would have put it, by inode.
        """
        parts = rel.split("/")
        sub, name = parts[:-1], parts[-1]
        with ExitStack() as stack:
            try:
                src = stack.enter_context(self.fs.folder(["inbox", *sub]))
            except (UnsafePath, FileNotFoundError, NotADirectoryError):
                return self._find_moved(area, sub, name, inode)  # its folder is gone or now a link
            st = lstat_at(src, name)
            if st is None:
                return self._find_moved(area, sub, name, inode)
            if inode is not None and st.st_ino != inode:
                return Moved("changed", note="replaced by another file after it was queued")
            if stat.S_ISREG(st.st_mode) and ((size is not None and st.st_size != size)
                                             or (mtime_ns is not None and st.st_mtime_ns != mtime_ns)):
                return Moved("changed", note="rewritten after it was read")
            # Trouble on the way in (a file or link where a folder should be) is raised: the
            # input stays where it is, and the settler tries again later.
            dst = stack.enter_context(self.fs.folder([area, *sub], create_mode=DIR_MODE))
            return self._rename_out(src, name, st, dst, area, sub)
        raise AssertionError("unreachable")

    def _rename_out(self, src: int, name: str, st: os.stat_result, dst: int, area: str, sub: list[str]) -> Moved:
        for cand in candidates(name):
            try:
                rename_noreplace(src, name, dst, cand)
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno in _CANNOT_REMOVE:
                    return self._copy_out(src, name, st, dst, area, sub, exc)
                raise
            moved = lstat_at(dst, cand)
            if moved is None or moved.st_ino != st.st_ino:
                # Swapped between the look and the rename: what was moved is not ours.
                self._put_back(dst, cand, src, name)
                return Moved("changed", note="replaced by another file while it was being moved")
            return Moved("moved", "/".join([area, *sub, cand]), moved.st_ino)
        raise AssertionError("unreachable")

    def _copy_out(self, src: int, name: str, st: os.stat_result, dst: int, area: str, sub: list[str],
                  why: OSError) -> Moved:
        folder = "/".join(["inbox", *sub])
        note = f"edged may not remove files from {folder} ({why.strerror}); it was copied and the original stays"
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(name, dir_fd=src)
            data = None
        elif stat.S_ISREG(st.st_mode):
            fd, fst = open_regular(src, name)
            try:
                if fst.st_ino != st.st_ino:
                    return Moved("changed", note="replaced by another file while it was being moved")
                data = _read_all(fd)
            finally:
                os.close(fd)
        else:
            return Moved("copied", None, None, note + " (a FIFO, socket or device is not copied)")
        for cand in candidates(name):
            try:
                if data is None:
                    copied = _link_new(dst, cand, target)
                else:
                    copied = write_new(dst, cand, data)
            except FileExistsError:
                continue
            return Moved("copied", "/".join([area, *sub, cand]), copied.st_ino, note)
        raise AssertionError("unreachable")

    def _put_back(self, dst: int, cand: str, src: int, name: str) -> None:
        for back in candidates(name):
            try:
                rename_noreplace(dst, cand, src, back)
                return
            except FileExistsError:
                continue

    def _find_moved(self, area: str, sub: list[str], name: str, inode: Optional[int]) -> Moved:
        if inode is None:
            return Moved("missing")
        try:
            with self.fs.folder([area, *sub]) as dst:
                for cand in candidates(name):
                    st = lstat_at(dst, cand)
                    if st is None:
                        break
                    if st.st_ino == inode:
                        return Moved("moved", "/".join([area, *sub, cand]), inode)
        except (UnsafePath, FileNotFoundError, NotADirectoryError):
            pass
        return Moved("missing")

    def fail(self, rel: str, info: dict[str, Any], inode: Optional[int] = None, size: Optional[int] = None,
             mtime_ns: Optional[int] = None) -> Moved:
        """Move to failed/ and write '<name>.error.json' beside it."""
        moved = self.move_out(rel, "failed", inode, size, mtime_ns)
        if moved.state in ("moved", "copied"):
            parts = (moved.to or "/".join(["failed", *rel.split("/")])).split("/")
            body = {**info, "file": displayable("/".join(parts))}
            if moved.note:
                body["note"] = moved.note
            data = (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
            with self.fs.folder(parts[:-1], create_mode=DIR_MODE) as d:
                replace_file(d, error_note_name(parts[-1]), data)
        return moved

    # -- result files ------------------------------------------------------------------

    def write_result(self, rel: str, task: str, text: str) -> Optional[str]:
        """out/<rel>.<task>.txt, written whole; a different result under that name gets a suffix.

        The same text already there is left as it is, so writing a result again after a
        crash never makes a second file.
        """
        if not self.write_results:
            return None
        parts = rel.split("/")
        data = text.encode("utf-8")
        with self.fs.folder(["out", *parts[:-1]], create_mode=DIR_MODE) as d:
            for cand in candidates(f"{parts[-1]}.{task}.txt"):
                existing = _read_if_regular(d, cand, len(data) + 1)
                if existing == data:
                    return "/".join(["out", *parts[:-1], cand])
                if existing is not None or lstat_at(d, cand) is not None:
                    continue
                try:
                    write_new(d, cand, data)
                except FileExistsError:
                    continue
                return "/".join(["out", *parts[:-1], cand])
        raise AssertionError("unreachable")

    def write_sidecar(self, result_rel: str, data: bytes) -> str:
        """`<result>.json` beside a result file (`x.jpg.caption.txt` -> `x.jpg.caption.json`), replaced whole."""
        parts = result_rel.split("/")
        if parts[0] != "out" or not parts[-1].endswith(".txt"):
            raise ValueError(f"{result_rel} is not a result file")
        name = parts[-1][: -len(".txt")] + ".json"
        with self.fs.folder(parts[:-1], create_mode=DIR_MODE) as d:
            replace_file(d, name, data)
        return "/".join([*parts[:-1], name])

    # -- upkeep ------------------------------------------------------------------------

    def remove_debris(self) -> int:
        """Delete half-written temp files that a killed process left in done/, failed/ and out/.

        Only the daemon writes there, and it calls this at start-up under its lock.
        """
        removed = 0
        for area in ("out", "failed", "done"):
            try:
                with self.fs.folder([area]) as top:
                    for _path, _dirs, names, dir_fd in os.fwalk(".", dir_fd=top):
                        for name in names:
                            legacy = area != "done" and name.startswith(".") and name.endswith(".tmp")
                            if (name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)) or legacy:
                                os.unlink(name, dir_fd=dir_fd)
                                removed += 1
            except (UnsafePath, FileNotFoundError):
                continue
        return removed

    def discard(self, moved_to: str, inode: Optional[int]) -> bool:
        """Delete a settled input (and its error note) from done/ or failed/ (retention).

        Only what is provably the recorded file: reached with no link followed, and with the
        recorded inode. False if it is gone or is something else now.
        """
        parts = moved_to.split("/")
        if parts[0] not in ("done", "failed") or len(parts) < 3:
            raise ValueError(f"refusing to delete {moved_to!r}: retention only clears done/ and failed/")
        try:
            with self.fs.folder(parts[:-1]) as d:
                st = lstat_at(d, parts[-1])
                ours = st is not None and (inode is None or st.st_ino == inode) and not stat.S_ISDIR(st.st_mode)
                if ours:
                    os.unlink(parts[-1], dir_fd=d)
                note = lstat_at(d, error_note_name(parts[-1]))
                if note is not None and stat.S_ISREG(note.st_mode):
                    os.unlink(error_note_name(parts[-1]), dir_fd=d)
                return ours
        except (UnsafePath, FileNotFoundError, NotADirectoryError):
            return False

    def restore(self, moved_to: str, rel: str) -> str:
        """Bring a failed input back to the inbox for another try; returns its new inbox rel."""
        src_parts = moved_to.split("/")
        dst_parts = rel.split("/")
        try:
            with self.fs.folder(src_parts[:-1]) as src:
                if lstat_at(src, src_parts[-1]) is None:
                    raise FileNotFoundError(f"{self.layout.root / moved_to} is gone; drop the file into the inbox"
                                            " again instead")
                with self.fs.folder(["inbox", *dst_parts[:-1]], create_mode=INBOX_DIR_MODE) as dst:
                    for cand in candidates(dst_parts[-1]):
                        try:
                            rename_noreplace(src, src_parts[-1], dst, cand)
                        except FileExistsError:
                            continue
                        break
                note = error_note_name(src_parts[-1])
                st = lstat_at(src, note)
                if st is not None and stat.S_ISREG(st.st_mode):
                    os.unlink(note, dir_fd=src)
        except UnsafePath as exc:
            raise FileNotFoundError(f"cannot restore {moved_to}: {exc}") from None
        return "/".join([*dst_parts[:-1], cand])


def _read_all(fd: int) -> bytes:
    parts = []
    while chunk := os.read(fd, _CHUNK):
        parts.append(chunk)
    return b"".join(parts)


def _read_if_regular(dir_fd: int, name: str, limit: int) -> Optional[bytes]:
    try:
        fd, _st = open_regular(dir_fd, name)
    except (FileNotFoundError, UnsafePath):
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def _link_new(dir_fd: int, name: str, target: str) -> os.stat_result:
    """A copy of a symbolic link (never followed) under a name that must not exist."""
    tmp = f"{TEMP_PREFIX}{os.urandom(6).hex()}{TEMP_SUFFIX}"
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        rename_noreplace(dir_fd, tmp, dir_fd, name)
    except BaseException:
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
