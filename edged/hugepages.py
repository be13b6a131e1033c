"""Transparent huge pages for the daemon's heap, through glibc's `glibc.malloc.hugetlb` tunable.

Why: a decode step streams every weight once (the 270M's output layer alone is 168 MB) and,
deep in a long prompt, tens of MB of KV cache too: with 4 KiB pages that is ~60,000 page walks a
step. On 2 MiB pages the 270M decoded 5-12 % faster here, at empty context and after 1K and 4K
tokens (`python bench/hugepages.py --model DIR`, medians of alternating fresh processes).
Most distributions ship THP as `madvise`: only memory that asks gets 2 MiB pages, and ONNX
Runtime's allocations never ask. glibc (2.35 on) asks for every heap mmap when the tunable is
set, but reads tunables only at process start, so `edged run` re-executes itself once with it
set (same PID: systemd's notify socket and watchdog are undisturbed). The systemd unit sets it
in its environment already; `model.huge_pages: false` turns all of this off.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Mapping, Optional

import structlog

log = structlog.get_logger("edged.hugepages")

TUNABLE = "glibc.malloc.hugetlb"
SETTING = f"{TUNABLE}=1"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: Path = THP) -> Optional[str]:
    """The kernel's THP mode ("always", "madvise", "never"), or None where there is no THP."""
    try:
        hit = re.search(r"\[(\w+)\]", path.read_text())
    except OSError:
        return None
    return hit.group(1) if hit else None


def glibc_version() -> Optional[tuple[int, int]]:
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError, AttributeError):
        return None
    hit = re.fullmatch(r"glibc (\d+)\.(\d+).*", text)
    return (int(hit.group(1)), int(hit.group(2))) if hit else None


def has_tunable(env: Mapping[str, str]) -> bool:
    return any(part.split("=", 1)[0] == TUNABLE for part in env.get("GLIBC_TUNABLES", "").split(":"))


def with_tunable(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the tunable added to any GLIBC_TUNABLES already there (tunables are ':'-separated)."""
    out = dict(env)
    if not has_tunable(out):
        out["GLIBC_TUNABLES"] = ":".join(p for p in (out.get("GLIBC_TUNABLES", ""), SETTING) if p)
    return out


def reexec_reason(env: Mapping[str, str], mode: Optional[str], glibc: Optional[tuple[int, int]]) -> Optional[str]:
    """Why a re-exec would help (None: it would not, or it is done already)."""
    if has_tunable(env) or mode not in ("madvise", "always") or glibc is None or glibc < (2, 35):
        return None
    return f"thp={mode} glibc={glibc[0]}.{glibc[1]}"


def ensure() -> None:
    """Re-execute this process with the tunable set, when that gives it huge pages. Returns only
    when no re-exec is needed or the exec failed (the daemon then runs on small pages)."""
    reason = reexec_reason(os.environ, thp_mode(), glibc_version())
    if reason is None:
        return
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, with_tunable(os.environ))
    except OSError as exc:
        log.warning("huge_pages_reexec_failed", error=str(exc), reason=reason)


def anon_huge_mb(path: Path = Path("/proc/self/smaps_rollup")) -> Optional[int]:
    """MB of this process's memory on transparent huge pages (None where the kernel does not say)."""
    try:
        hit = re.search(r"^AnonHugePages:\s+(\d+) kB", path.read_text(), re.M)
    except OSError:
        return None
    return int(hit.group(1)) // 1024 if hit else None
