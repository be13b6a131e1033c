"""Spool: addressing, ignore rules, safety checks, stability, no-clobber moves."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from edged.config import DEFAULT_IGNORE
from edged.spool import (
    Fingerprint,
    IgnoreRules,
    InputChanged,
    InputRefused,
    SpoolFiles,
    SpoolLayout,
    StabilityTracker,
    filesystem_type,
    is_network_fs,
)
from edged.spool.root import replace_file, write_new

TASKS = ("caption", "ocr", "translate")


@pytest.fixture
def layout(tmp_path: Path) -> SpoolLayout:
    lay = SpoolLayout(tmp_path / "spool", TASKS, IgnoreRules(DEFAULT_IGNORE))
    lay.ensure()
    return lay


def test_rel_addresses_only_task_folders(layout: SpoolLayout) -> None:
    assert layout.rel(layout.inbox / "ocr" / "a" / "b.png") == "ocr/a/b.png"
    assert layout.rel(layout.inbox / "a.png") is None
    assert layout.rel(layout.inbox / "nosuchtask" / "a.png") is None
    assert layout.rel(layout.root / "done" / "ocr" / "a.png") is None


@pytest.mark.parametrize("name", [".hidden", "a.part", "a.tmp", "a.filepart", "a.crdownload", "~lock", "Thumbs.db"])
def test_default_ignore_rules(name: str) -> None:
    assert IgnoreRules(DEFAULT_IGNORE).ignored([name])


def test_ignored_folders_hide_everything_below(layout: SpoolLayout) -> None:
    for rel in ["caption/@eaDir/x.jpg", "caption/__MACOSX/y.jpg", "caption/.git/z", "caption/ok/a.jpg"]:
        p = layout.inbox / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    assert [layout.rel(p) for p in layout.walk()] == ["caption/ok/a.jpg"]
    assert not layout.wanted("caption/@eaDir/x.jpg") and layout.wanted("caption/ok/a.jpg")


def test_symlinks_fifos_and_linked_folders_are_refused_never_read(layout: SpoolLayout, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    os.symlink(secret, layout.inbox / "ocr" / "link.png")
    os.mkfifo(layout.inbox / "ocr" / "pipe.png")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.png").write_bytes(b"x")
    os.symlink(outside, layout.inbox / "ocr" / "linkdir")
    found = {layout.rel(p): layout.inspect(p) for p in layout.walk()}
    assert set(found) == {"ocr/link.png", "ocr/pipe.png", "ocr/linkdir"}  # never walked into linkdir
    assert "symbolic link" in found["ocr/link.png"].refused
    assert "not a regular file" in found["ocr/pipe.png"].refused
    assert "symbolic link" in found["ocr/linkdir"].refused
    with pytest.raises(InputChanged):
        layout.read_current("ocr/link.png")
    with pytest.raises(InputChanged):
        layout.read_current("ocr/pipe.png")  # and does not block on the FIFO


def test_read_input_limit_and_sha(layout: SpoolLayout) -> None:
    path = layout.inbox / "translate" / "a.txt"
    path.write_bytes(b"hello")
    st = path.stat()
    fp = Fingerprint(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    hello = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert layout.hash_input("translate/a.txt", fp) == hello
    assert layout.hash_input("translate/a.txt", Fingerprint(st.st_ino + 1, 5, 0, 0)) is None  # not the one looked at
    data, fst = layout.read_current("translate/a.txt", limit=5)
    assert data == b"hello" and fst.st_ino == st.st_ino
    with pytest.raises(InputRefused, match="larger than the limit"):
        layout.read_current("translate/a.txt", limit=4)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_stability_waits_for_quiet_then_unchanged_file(tmp_path: Path) -> None:
    clock = FakeClock()
    f = tmp_path / "a"
    f.write_bytes(b"1")
    tracker = StabilityTracker(2.0, clock=clock, wallclock=lambda: os.stat(f).st_ctime + clock.t - 1000.0)
    tracker.touch(f)
    assert tracker.ready() == []  # an event just now
    clock.t += 1.0
    tracker.touch(f)  # still being written
    clock.t += 1.5
    assert tracker.ready() == []  # only 1.5 s of quiet
    clock.t += 0.6
    assert tracker.ready() == [f]
    assert tracker.ready() == []  # handed on once


def test_scanned_file_with_old_ctime_is_ready_at_once_but_not_on_network_fs(tmp_path: Path) -> None:
    f = tmp_path / "old"
    f.write_bytes(b"x")
    later = os.stat(f).st_ctime + 60
    local = StabilityTracker(2.0, trust_ctime=True, wallclock=lambda: later)
    local.touch(f, event=False)
    assert local.ready() == [f]
    clock = FakeClock()
    network = StabilityTracker(2.0, trust_ctime=False, clock=clock, wallclock=lambda: later)
    network.touch(f, event=False)
    assert network.ready() == []  # first look
    clock.t += 2.5
    assert network.ready() == [f]  # unchanged across two looks a quiet period apart


def test_file_that_changes_between_looks_is_not_ready(tmp_path: Path) -> None:
    f = tmp_path / "growing"
    f.write_bytes(b"x")
    clock = FakeClock()
    tracker = StabilityTracker(1.0, trust_ctime=False, clock=clock)
    tracker.touch(f, event=False)
    assert tracker.ready() == []
    f.write_bytes(b"xy")  # written without an event reaching us (a polling mount)
    clock.t += 1.5
    assert tracker.ready() == []
    clock.t += 1.5
    assert tracker.ready() == [f]


def test_vanished_candidates_are_dropped(tmp_path: Path) -> None:
    tracker = StabilityTracker(0.0)
    tracker.touch(tmp_path / "gone", event=False)
    assert tracker.ready() == [] and len(tracker) == 0


def test_move_never_overwrites(layout: SpoolLayout) -> None:
    files = SpoolFiles(layout)
    src = layout.inbox / "ocr" / "a.jpg"
    for i in range(3):
        src.write_text(str(i))
        st = src.stat()
        moved = files.move_out("ocr/a.jpg", "done", st.st_ino, st.st_size, st.st_mtime_ns)
        assert moved.state == "moved" and moved.inode == st.st_ino
    dest = layout.root / "done" / "ocr"
    assert sorted(p.name for p in dest.iterdir()) == ["a.1.jpg", "a.2.jpg", "a.jpg"]
    assert (dest / "a.jpg").read_text() == "0" and (dest / "a.2.jpg").read_text() == "2"


def test_written_files_are_whole_and_never_clobbered(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        write_new(fd, "r.txt", b"one")
        with pytest.raises(FileExistsError):
            write_new(fd, "r.txt", b"two")
        replace_file(fd, "n.json", b"1")
        replace_file(fd, "n.json", b"2")
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json", "r.txt"]
    assert (tmp_path / "r.txt").read_text() == "one" and (tmp_path / "n.json").read_text() == "2"
    assert (tmp_path / "r.txt").stat().st_mode & 0o777 == 0o640


def test_fail_moves_and_writes_error_json_and_finds_a_moved_file_by_inode(layout: SpoolLayout) -> None:
    files = SpoolFiles(layout)
    src = layout.inbox / "ocr" / "x.png"
    src.write_bytes(b"x")
    inode = src.stat().st_ino
    moved = files.fail("ocr/x.png", {"error": "boom"}, inode)
    assert (moved.state, moved.to) == ("moved", "failed/ocr/x.png")
    info = json.loads((layout.root / "failed/ocr/x.png.error.json").read_text())
    assert info["error"] == "boom" and info["file"] == "failed/ocr/x.png"
    # After a crash between the move and its record, the move is found again by inode.
    assert files.move_out("ocr/x.png", "failed", inode).to == "failed/ocr/x.png"
    assert files.move_out("ocr/x.png", "failed", inode + 1).state == "missing"


def test_restore_brings_a_failed_file_back(layout: SpoolLayout) -> None:
    files = SpoolFiles(layout)
    (layout.inbox / "ocr" / "x.png").write_bytes(b"x")
    moved = files.fail("ocr/x.png", {"error": "boom"})
    assert files.restore(moved.to, "ocr/x.png") == "ocr/x.png"
    assert (layout.inbox / "ocr" / "x.png").exists()
    assert not list((layout.root / "failed" / "ocr").iterdir())


def test_remove_debris(layout: SpoolLayout) -> None:
    debris = layout.root / "out" / "ocr" / ".x.png.ocr.txt.abc.tmp"  # an older edged's temp name
    debris.write_text("half")
    ours = layout.root / "done" / "ocr" / ".edged-0123456789ab.tmp"
    ours.write_text("half")
    keep = layout.root / "out" / "ocr" / "x.png.ocr.txt"
    keep.write_text("whole")
    assert SpoolFiles(layout).remove_debris() == 2
    assert keep.exists() and not debris.exists() and not ours.exists()


def test_filesystem_type_from_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:50 / /mnt/nas rw - nfs4 server:/export rw\n"
        "41 22 0:51 / /mnt/nas\\040share rw - cifs //s/x rw\n"
        "42 22 0:52 / /home/u/remote rw - fuse.sshfs u@h: rw\n"
    )
    assert filesystem_type(Path("/var/spool/edged"), str(info)) == "ext4"
    assert filesystem_type(Path("/mnt/nas/spool/inbox"), str(info)) == "nfs4"
    assert filesystem_type(Path("/mnt/nas share/x"), str(info)) == "cifs"
    assert filesystem_type(Path("/home/u/remote/in"), str(info)) == "fuse.sshfs"
    assert [is_network_fs(t) for t in ("nfs4", "cifs", "fuse.sshfs", "ext4", "xfs", None)] == [
        True, True, True, False, False, False]
