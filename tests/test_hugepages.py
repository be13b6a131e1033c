"""Huge pages for the daemon's heap: glibc's tunable, set by a one-time re-exec of `edged run`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, DaemonProcess
from edged import hugepages

CAN = hugepages.reexec_reason({}, hugepages.thp_mode(), hugepages.glibc_version()) is not None
needs_thp = pytest.mark.skipif(not CAN, reason="this kernel or glibc gives no huge pages through malloc")


def test_thp_mode_reads_the_bracketed_choice(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(f) == "madvise"
    f.write_text("[never]\n")
    assert hugepages.thp_mode(f) == "never"
    assert hugepages.thp_mode(tmp_path / "absent") is None


def test_a_reexec_only_where_it_helps_and_only_once() -> None:
    assert hugepages.reexec_reason({}, "madvise", (2, 36)) == "thp=madvise glibc=2.36"
    assert hugepages.reexec_reason({}, "always", (2, 35)) is not None
    assert hugepages.reexec_reason({}, "never", (2, 36)) is None  # the kernel gives none
    assert hugepages.reexec_reason({}, None, (2, 36)) is None  # no THP at all
    assert hugepages.reexec_reason({}, "madvise", (2, 34)) is None  # glibc without the tunable
    assert hugepages.reexec_reason({}, "madvise", None) is None  # musl, or no glibc
    done = hugepages.with_tunable({})
    assert hugepages.reexec_reason(done, "madvise", (2, 36)) is None
    # An operator's own setting of the tunable is theirs: 0 stays 0, no second exec.
    assert hugepages.reexec_reason({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise", (2, 36)) is None


def test_other_tunables_are_kept() -> None:
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "X": "1"}
    assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


CHILD = """
import ctypes, os, sys
from edged import hugepages
print("start", os.getpid(), flush=True)
hugepages.ensure()
# 64 MB from malloc, touched, as ONNX Runtime allocates (numpy would madvise huge pages itself).
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
big = libc.malloc(ctypes.c_size_t(64 * 2**20))
ctypes.memset(big, 1, 64 * 2**20)
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), hugepages.anon_huge_mb(), sys.argv[1:], flush=True)
"""


@needs_thp
def test_ensure_reexecs_in_place_and_the_heap_gets_huge_pages() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["PYTHONPATH"] = str(REPO)
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
    out = subprocess.run([sys.executable, "-c", CHILD, "a b", "c"], env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    starts = [line for line in out if line.startswith("start")]
    after = [line.split(" ", 4) for line in out if line.startswith("after")]
    assert len(starts) == 2 and len(after) == 1, out  # ran twice from the top, finished once
    _, pid, tunables, huge, args = after[0]
    assert {s.split()[1] for s in starts} == {pid}  # one process: systemd's main PID stays
    assert tunables == "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1"
    assert args == "['a b', 'c']"  # the arguments came through as they were
    assert int(huge) >= 32  # most of the 64 MB lies on 2 MiB pages


def test_without_the_tunable_the_heap_stays_on_small_pages() -> None:
    """What the re-exec is for: the same allocation, on madvise-mode THP, gets no huge pages."""
    if hugepages.thp_mode() != "madvise":
        pytest.skip("only madvise mode makes the difference (always: every heap gets them)")
    env = dict(os.environ, PYTHONPATH=str(REPO), GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out.count("start") == 1
    assert out[-2] in ("0", "None")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


@needs_thp
@pytest.mark.parametrize("wanted", [True, False])
def test_edged_run_restarts_itself_with_the_tunable_unless_told_not_to(daemon_factory, wanted: bool) -> None:
    d: DaemonProcess = daemon_factory(model={"huge_pages": wanted})
    d.env = lambda: {k: v for k, v in DaemonProcess.env(d).items() if k != "GLIBC_TUNABLES"}  # type: ignore[method-assign]
    d.start()
    assert d.proc is not None
    env = _environ(d.proc.pid)  # the PID the service manager started is the one serving
    assert ("GLIBC_TUNABLES" in env) is wanted
    if wanted:
        assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert d.stop() == 0
