"""Moving inputs out of the inbox and writing files next to them, never overwriting anything."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

from edged.spool.layout import SpoolLayout


def _candidates(dest: Path):  # noqa: ANN202 - generator of paths
    """dest, then 'name.1.ext', 'name.2.ext' … for a clash."""
    yield dest
    stem, suffix = dest.stem, dest.suffix
    n = 1
    while True:
        yield dest.with_name(f"{stem}.{n}{suffix}")
        n += 1


def move_no_clobber(src: Path, dest: Path) -> Path:
    """Rename src to dest, or to a suffixed name if dest exists. Returns where it went.

    A hard link fails with EEXIST instead of replacing the target, which makes the check
    and the move one atomic step; filesystems without hard links fall back to a checked
    rename.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    for target in _candidates(dest):
        try:
            os.link(src, target, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOTSUP):
                raise
            if os.path.lexists(target):
                continue
            os.rename(src, target)
            return target
        os.unlink(src)
        return target
    raise AssertionError("unreachable")


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file whole or not at all: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SpoolFiles:
    """Where finished inputs and result files go."""

    def __init__(self, layout: SpoolLayout, write_results: bool = True) -> None:
        self.layout = layout
        self.write_results = write_results

    def _area_rel(self, path: Path) -> str:
        return str(path.relative_to(self.layout.root))

    def move_out(self, rel: str, area: str, inode: Optional[int] = None) -> Optional[str]:
        """Move inbox/<rel> to <area>/<rel> (suffixed on a clash); returns where it is.

        If the source is already gone (a crash after the move, before it was recorded), the
        file is looked for where the move would have put it, by inode; None if not found.
        """
        src = self.layout.inbox_path(rel)
        dest = self.layout.area(area) / rel
        if os.path.lexists(src):
            return self._area_rel(move_no_clobber(src, dest))
        if inode is not None:
            for candidate in _candidates(dest):
                try:
                    if os.lstat(candidate).st_ino == inode:
                        return self._area_rel(candidate)
                except FileNotFoundError:
                    break
        return None

    def fail(self, rel: str, info: dict[str, Any], inode: Optional[int] = None) -> Optional[str]:
        """Move to failed/ and write '<name>.error.json' beside it."""
        moved = self.move_out(rel, "failed", inode)
        if moved is not None:
            dest = self.layout.root / moved
            body = json.dumps({**info, "file": moved}, indent=2, ensure_ascii=False) + "\n"
            atomic_write(dest.with_name(dest.name + ".error.json"), body.encode())
        return moved

    def write_result(self, rel: str, task: str, text: str) -> Optional[str]:
        if not self.write_results:
            return None
        dest = self.layout.area("out") / f"{rel}.{task}.txt"
        atomic_write(dest, text.encode("utf-8"))
        return self._area_rel(dest)

    def remove_debris(self) -> int:
        """Delete half-written temp files that a killed process left in out/ and failed/.

        Only the daemon writes there, and it calls this at start-up under its lock.
        """
        removed = 0
        for area in ("out", "failed"):
            for dirpath, _dirs, names in os.walk(self.layout.area(area)):
                for name in names:
                    if name.startswith(".") and name.endswith(".tmp"):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    def discard(self, moved_to: str) -> bool:
        """Delete a settled input from done/ or failed/ (retention); False if already gone."""
        area = moved_to.split("/", 1)[0]
        if area not in ("done", "failed"):
            raise ValueError(f"refusing to delete {moved_to!r}: retention only clears done/ and failed/")
        path = self.layout.root / moved_to
        removed = False
        for victim in (path, path.with_name(path.name + ".error.json")):
            try:
                os.unlink(victim)
                removed = removed or victim == path
            except FileNotFoundError:
                pass
        return removed

    def restore(self, moved_to: str, rel: str) -> str:
        """Bring a failed input back to the inbox for another try; returns its new inbox rel."""
        src = self.layout.root / moved_to
        if not os.path.lexists(src):
            raise FileNotFoundError(f"{src} is gone; drop the file into the inbox again instead")
        dest = move_no_clobber(src, self.layout.inbox_path(rel))
        err = src.with_name(src.name + ".error.json")
        try:
            os.unlink(err)
        except FileNotFoundError:
            pass
        return str(dest.relative_to(self.layout.inbox))
