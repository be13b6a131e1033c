"""One file of a pull: fetched into `<name>.part`, resumed by HTTP Range, checked, then renamed.

The `.part` and a small `<name>.part.json` (the URL, expected sha256 and size, the server's
ETag) stay between runs: the next run asks for the rest (`Range: bytes=N-`, `If-Range` with
the ETag so that a changed file comes back whole). A 200 answer to a Range request means the
server starts over, and so does the `.part`. Bytes already on disk are hashed again on resume:
the checksum covers the whole file, never only what this run received. A file whose checksum
or size is wrong is removed, `.part` and all: resuming it would only keep the bad bytes.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Protocol

from edged.models.fetch.hub import Answer, DownloadError, Hub
from edged.models.fetch.plan import RemoteFile

CHUNK = 1 << 20
_HEX64 = re.compile(r'^(?:W/)?"?([0-9a-f]{64})"?$')


class ChecksumError(DownloadError):
    """A file arrived whole but is not the file the hub (or --sha256) describes."""


class Progress(Protocol):
    def begin(self, name: str, total: Optional[int], have: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    def begin(self, name: str, total: Optional[int], have: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def end(self) -> None:
        pass


class _Digests:
    """sha256 of the content, and for a small git file its blob id (sha1 of "blob <size>\\0" + content)."""

    def __init__(self, f: RemoteFile) -> None:
        self.sha256 = hashlib.sha256()
        self.blob = None
        if f.git_sha1 and f.size is not None:
            self.blob = hashlib.sha1(b"blob %d\0" % f.size)

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.blob is not None:
            self.blob.update(data)

    def feed(self, path: Path) -> None:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                self.update(chunk)


def _header_sha256(answer: Answer) -> Optional[str]:
    for name in ("X-Linked-Etag", "ETag"):
        m = _HEX64.match((answer.header(name) or "").strip().lower())
        if m:
            return m.group(1)
    return None


def _content_range(answer: Answer) -> tuple[int, Optional[int]]:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", answer.header("Content-Range") or "")
    if not m:
        return -1, None
    return int(m.group(1)), None if m.group(2) == "*" else int(m.group(2))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _check(f: RemoteFile, digests: _Digests, size: int, want_sha256: Optional[str],
           want_size: Optional[int]) -> Optional[str]:
    """What is wrong with the file received (None: nothing)."""
    if want_size is not None and size != want_size:
        return f"{f.path}: {size} bytes, expected {want_size}"
    got = digests.sha256.hexdigest()
    if want_sha256 and got != want_sha256:
        return f"{f.path}: sha256 {got}, expected {want_sha256}"
    if f.git_sha1 and digests.blob is not None and digests.blob.hexdigest() != f.git_sha1:
        return f"{f.path}: git blob sha1 {digests.blob.hexdigest()}, expected {f.git_sha1}"
    return None


def _already_here(f: RemoteFile, dest: Path) -> Optional[str]:
    """A file that a previous run completed and checked: its sha256 if it still checks."""
    if not dest.is_file() or (f.size is not None and dest.stat().st_size != f.size):
        return None
    digests = _Digests(f)
    digests.feed(dest)
    return None if _check(f, digests, dest.stat().st_size, f.sha256, f.size) else digests.sha256.hexdigest()


def fetch_file(hub: Hub, f: RemoteFile, dest: Path, progress: Progress) -> tuple[str, bool]:
    """Fetch `f` to `dest`: (its sha256, whether its checksum was known beforehand or from the server)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    done = _already_here(f, dest)
    if done is not None:
        return done, bool(f.sha256 or f.git_sha1)
    part, meta = dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.json")
    old = _read_meta(meta)
    have = part.stat().st_size if part.is_file() else 0
    stale = old.get("url") != f.url or (f.sha256 and old.get("sha256") not in (None, f.sha256))
    if have and (stale or (f.size is not None and have >= f.size)):
        have = 0  # another file's bytes, or as long as the file and still not checked: start over
    for _attempt in range(2):
        headers = {}
        if have:
            headers["Range"] = f"bytes={have}-"
            if old.get("etag"):
                headers["If-Range"] = old["etag"]
        answer = hub.open(f.url, headers, what=f.path)
        try:
            if answer.status == 416 or (answer.status == 206 and _content_range(answer)[0] != have):
                have = 0  # the server cannot continue where the .part ends: ask for all of it
                continue
            if answer.status not in (200, 206):
                raise DownloadError(f"{f.path}: HTTP {answer.status} for {f.url}")
            if answer.status == 200:
                have = 0  # a whole file, whatever was asked: the .part starts over
            length = answer.header("Content-Length")
            total = _content_range(answer)[1] if answer.status == 206 else (int(length) if length else None)
            want_sha256 = f.sha256 or _header_sha256(answer)
            linked = answer.header("X-Linked-Size")
            want_size = f.size if f.size is not None else (int(linked) if linked else total)
            etag = answer.response.headers.get("ETag")
            meta.write_text(json.dumps({"url": f.url, "sha256": want_sha256, "size": want_size,
                                        "etag": etag if etag and not etag.startswith("W/") else None}))
            digests = _Digests(f)
            with open(part, "r+b" if have else "wb") as out:
                out.truncate(have)
                out.seek(have)
                if have:
                    digests.feed(part)
                progress.begin(f.path, want_size, have)
                try:
                    received = _stream(answer, out, digests, progress)
                    # On disk before the rename that makes it the file: a power cut must not leave
                    # a checked name over unwritten blocks.
                    out.flush()
                    os.fsync(out.fileno())
                finally:
                    progress.end()
            size = have + received
            if want_size is not None and size < want_size:
                raise DownloadError(f"{f.path}: the connection closed at {size:,} of {want_size:,} bytes;"
                                    f" run the same command again to resume from {part}")
            problem = _check(f, digests, size, want_sha256, want_size)
            if problem:
                part.unlink(missing_ok=True)
                meta.unlink(missing_ok=True)
                raise ChecksumError(f"checksum mismatch, nothing installed: {problem} (the download was removed;"
                                    f" the next run fetches it anew)")
            os.replace(part, dest)
            meta.unlink(missing_ok=True)
            return digests.sha256.hexdigest(), bool(want_sha256 or f.git_sha1)
        finally:
            answer.close()
    raise DownloadError(f"{f.path}: the server refuses to send it from byte 0 either ({f.url})")


def _stream(answer: Answer, out: Any, digests: _Digests, progress: Progress) -> int:
    received = 0
    try:
        while chunk := answer.response.read(CHUNK):
            out.write(chunk)
            digests.update(chunk)
            received += len(chunk)
            progress.advance(len(chunk))
    except (OSError, http.client.HTTPException) as exc:
        out.flush()
        raise DownloadError(f"{out.name}: interrupted after {received:,} bytes of this run ({exc!r});"
                            f" run the same command again to resume") from None
    return received
