"""What `edged submit` is given, checked before anything is copied: files, folders and standard input.

A file the task cannot take (a text for caption, a picture for translate) would only become a
failed job after the copy; it is refused here instead, naming the file and the task. The checks
are the daemon's own decoders (Pillow's identification, tasks/text.py), so what passes here is
what the worker can read.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Sequence

from PIL import Image, UnidentifiedImageError

from edged.config import Settings
from edged.tasks.base import InputError
from edged.tasks.text import decode_text
from edged.timeutil import utcnow

IMAGE_TASKS = ("caption", "ocr")
_EXTENSIONS = {"JPEG": ".jpg", "TIFF": ".tif"}


@dataclass
class Input:
    shown: str  # as the operator named it, for messages
    name: str = ""  # the file name in the inbox
    subfolders: list[str] = field(default_factory=list)  # below inbox/<task>/ (a submitted folder's own)
    error: Optional[str] = None
    path: Optional[Path] = None
    data: Optional[bytes] = None  # standard input, read whole (up to the task's max_input_mb)

    def open(self) -> AbstractContextManager[BinaryIO]:
        if self.data is not None:
            return io.BytesIO(self.data)
        assert self.path is not None
        return open(self.path, "rb")


def _image(inp: BinaryIO) -> Optional[tuple[str, int]]:
    """(format, pixels) from the header alone, or None when Pillow cannot identify it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is judged below
            with Image.open(inp) as img:
                return str(img.format), img.size[0] * img.size[1]
    except Image.DecompressionBombError:
        return "bomb", 1 << 62
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def check(task: str, inp: BinaryIO, size: int, settings: Settings) -> Optional[str]:
    """Why `task` cannot take this input, or None. Leaves nothing read (the caller reopens)."""
    cfg = getattr(settings.tasks, task)
    if size > cfg.max_input_mb * 1024 * 1024:
        return f"{size} bytes, over tasks.{task}.max_input_mb ({cfg.max_input_mb} MB)"
    if size == 0:
        return "empty file (0 bytes)"
    if task in IMAGE_TASKS:
        found = _image(inp)
        if found is None:
            return f"not an image: --task {task} takes pictures (PNG, JPEG, WebP, TIFF, GIF …) that Pillow can read"
        if found[1] > cfg.max_pixels:
            return f"over tasks.{task}.max_pixels ({cfg.max_pixels} pixels; decompression-bomb guard)"
        return None
    try:
        decode_text(inp.read())
    except InputError as exc:
        return f"not a text file ({exc}): --task {task} takes text"
    return None


def _stdin_name(task: str, data: bytes) -> str:
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    if task in IMAGE_TASKS:
        fmt = (_image(io.BytesIO(data)) or ("bin", 0))[0]
        return f"stdin-{stamp}{_EXTENSIONS.get(fmt, '.' + fmt.lower())}"
    return f"stdin-{stamp}.txt"


def _checked(item: Input, task: str, settings: Settings) -> Input:
    if item.error is None:
        try:
            size = len(item.data) if item.data is not None else os.stat(item.path or "").st_size
            with item.open() as inp:
                item.error = check(task, inp, size, settings)
        except OSError as exc:
            item.error = str(exc)
    return item


def _folder(top: Path, wanted: Callable[[str], bool]) -> Iterator[Input]:
    """The regular files below `top`, in name order, under the folder's own name; ignored names
    (watch.ignore: .DS_Store, *.tmp …) are passed over, as the daemon would pass them over."""
    base = top.resolve().name or "root"
    for root, dirs, names in os.walk(top, followlinks=False):
        rel = Path(root).relative_to(top).parts
        sub = [base, *rel]
        for d in sorted(d for d in dirs if (Path(root) / d).is_symlink()):
            yield Input(str(Path(root) / d), error="a link to a folder (links are not followed)")
        dirs[:] = sorted(d for d in dirs if wanted("/".join([*sub, d])) and not (Path(root) / d).is_symlink())
        for name in sorted(names):
            if not wanted("/".join([*sub, name])):
                continue
            path = Path(root) / name
            if path.is_symlink() or not path.is_file():
                yield Input(str(path), error="not a regular file (links are not followed)")
                continue
            yield Input(str(path), name, list(sub), path=path)


def expand(files: Sequence[Path], settings: Settings, task: str, name: Optional[str],
           wanted: Callable[[str], bool]) -> Iterator[Input]:
    """Each input named on the command line, folders opened up, each checked for the task.

    `wanted`: the spool's ignore rules, for a path relative to the inbox (<task>/…)."""
    stdin_read = False
    for src in files:
        if str(src) == "-":
            if stdin_read:
                yield Input("-", error="standard input was named twice")
                continue
            stdin_read = True
            # One byte past the limit is enough to refuse: a producer piping gigabytes never makes
            # this process hold them (the check in check() then names the limit).
            limit = int(getattr(settings.tasks, task).max_input_mb * 1024 * 1024)
            data = sys.stdin.buffer.read(limit + 1)
            if len(data) > limit:
                yield Input("-", error=f"more than {limit} bytes, over tasks.{task}.max_input_mb"
                                       f" ({getattr(settings.tasks, task).max_input_mb} MB); nothing was read past it")
                continue
            yield _checked(Input("-", name or _stdin_name(task, data), data=data), task, settings)
        elif src.is_dir():
            for item in _folder(src, lambda rel: wanted(f"{task}/{rel}")):
                yield _checked(item, task, settings)
        elif not src.is_file():
            yield Input(str(src), error="not a regular file")
        else:
            yield _checked(Input(str(src), src.name, path=src), task, settings)
