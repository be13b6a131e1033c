"""`edged submit`: the task's input type checked before the copy, folders, standard input, and a
warning when no daemon will pick the files up."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from conftest import png_bytes
from edged.cli import main
from edged.exitcodes import ExitCode
from test_show import _setup


def _inbox(tmp_path: Path) -> list[str]:
    inbox = tmp_path / "spool" / "inbox"
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*") if p.is_file())


def _lines(capsys) -> list[list[str]]:
    return [line.split("\t") for line in capsys.readouterr().out.splitlines()]


def test_a_file_of_the_wrong_kind_is_refused_before_the_copy(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path)
    txt = tmp_path / "notes.txt"
    txt.write_text("a shopping list")
    pic = tmp_path / "pic.png"
    pic.write_bytes(png_bytes())
    assert main(["submit", "-c", cfg, "-t", "caption", str(txt)]) == ExitCode.INPUT
    ((kind, shown, why),) = _lines(capsys)
    assert kind == "error" and shown == str(txt) and "--task caption takes pictures" in why
    assert main(["submit", "-c", cfg, "-t", "translate", str(pic)]) == ExitCode.INPUT
    ((kind, shown, why),) = _lines(capsys)
    assert shown == str(pic) and "not a text file" in why and "--task translate takes text" in why
    assert _inbox(tmp_path) == []  # nothing was copied
    # A good one beside a bad one: the good one goes in, the exit code tells of the bad one.
    assert main(["submit", "-c", cfg, "-t", "ocr", str(txt), str(pic)]) == ExitCode.INPUT
    assert [f[0] for f in _lines(capsys)] == ["error", "1"]
    assert _inbox(tmp_path) == ["ocr/pic.png"]


def test_a_folder_brings_its_files_under_its_own_name(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path)
    scans = tmp_path / "scans"
    (scans / "week 2").mkdir(parents=True)
    (scans / "a.png").write_bytes(png_bytes(color="red"))
    (scans / "week 2" / "b.png").write_bytes(png_bytes(color="blue"))
    (scans / ".DS_Store").write_bytes(b"junk")  # ignored by the spool, so passed over
    (scans / "c.png.part").write_bytes(b"half")
    assert main(["submit", "-c", cfg, "-t", "ocr", str(scans)]) == 0
    assert [(f[1], f[2]) for f in _lines(capsys)] == [("ocr/scans/a.png", "new"), ("ocr/scans/week 2/b.png", "new")]
    assert _inbox(tmp_path) == ["ocr/scans/a.png", "ocr/scans/week 2/b.png"]


def test_a_folder_of_texts_keeps_the_configured_language(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path, tasks={"translate": {"target_language": "fr"}})
    letters = tmp_path / "letters"
    letters.mkdir()
    (letters / "one.txt").write_text("Good morning")
    assert main(["submit", "-c", cfg, "-t", "translate", str(letters)]) == 0
    # Not inbox/translate/letters/…: the first folder there would be read as a language.
    assert _lines(capsys)[0][1:] == ["translate/fr/letters/one.txt", "new"]
    assert main(["results", "-c", cfg, "--status", "queued", "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == {"target_language": "fr"}


class _Stdin:
    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)


def test_standard_input_with_and_without_a_name(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = _setup(tmp_path)
    monkeypatch.setattr(sys, "stdin", _Stdin("Grüße, Welt".encode()))
    assert main(["submit", "-c", cfg, "-t", "translate", "--lang", "en", "-", "--name", "greeting.txt"]) == 0
    assert _lines(capsys)[0][1:] == ["translate/en/greeting.txt", "new"]
    monkeypatch.setattr(sys, "stdin", _Stdin(png_bytes()))
    assert main(["submit", "-c", cfg, "-t", "caption", "-"]) == 0
    ((_job, rel, outcome),) = _lines(capsys)
    assert rel.startswith("caption/stdin-") and rel.endswith("Z.png") and outcome == "new"
    monkeypatch.setattr(sys, "stdin", _Stdin(b"plain words"))
    assert main(["submit", "-c", cfg, "-t", "caption", "-"]) == ExitCode.INPUT  # checked like a file
    assert "takes pictures" in capsys.readouterr().out
    assert main(["submit", "-c", cfg, "-t", "caption", str(tmp_path), "--name", "x.png"]) == ExitCode.USAGE
    assert main(["submit", "-c", cfg, "-t", "caption", "-", "--name", "a/b.png"]) == ExitCode.USAGE


def test_submit_warns_when_no_daemon_runs(tmp_path: Path, capsys) -> None:
    from edged.config import load_config
    from edged.lock import StateLock
    from edged.wiring import lock_path

    cfg = _setup(tmp_path)
    doc = tmp_path / "a.txt"
    doc.write_text("one")
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
    assert "no daemon is running" in capsys.readouterr().err
    lock = StateLock(lock_path(load_config(Path(cfg)))).acquire()  # as a running daemon holds it
    try:
        doc.write_text("two")
        assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
        assert "no daemon" not in capsys.readouterr().err
    finally:
        lock.release()


def test_submit_refuses_what_the_task_would_refuse_and_links_in_a_folder(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path, tasks={"caption": {"max_pixels": 100}})
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(size=(20, 20)))
    assert main(["submit", "-c", cfg, "-t", "caption", str(big)]) == ExitCode.INPUT
    assert "over tasks.caption.max_pixels (100 pixels" in capsys.readouterr().out
    folder = tmp_path / "pics"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png_bytes(size=(5, 5)))
    (folder / "elsewhere").symlink_to(tmp_path)
    (folder / "alias.png").symlink_to(folder / "ok.png")
    assert main(["submit", "-c", cfg, "-t", "caption", str(folder)]) == ExitCode.INPUT
    lines = _lines(capsys)
    assert ("error", str(folder / "elsewhere")) in [(f[0], f[1]) for f in lines]
    assert ("error", str(folder / "alias.png")) in [(f[0], f[1]) for f in lines]
    assert _inbox(tmp_path) == ["caption/pics/ok.png"]


def test_standard_input_over_the_limit_is_refused_without_reading_it_all(tmp_path: Path, capsys,
                                                                           monkeypatch) -> None:
    cfg = _setup(tmp_path, tasks={"translate": {"max_input_mb": 0.001}})  # 1048 bytes
    limit = int(0.001 * 1024 * 1024)
    stdin = _Stdin(b"a" * (10 * limit))
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["submit", "-c", cfg, "-t", "translate", "-"]) == ExitCode.INPUT
    ((kind, shown, why),) = _lines(capsys)
    assert (kind, shown) == ("error", "-") and "over tasks.translate.max_input_mb" in why
    assert stdin.buffer.tell() == limit + 1  # one byte past the limit, not the 10 KB piped in
    assert _inbox(tmp_path) == []
    monkeypatch.setattr(sys, "stdin", _Stdin(b"a" * limit))  # exactly the limit: taken
    assert main(["submit", "-c", cfg, "-t", "translate", "-"]) == 0


def test_submit_says_it_cannot_tell_when_the_lock_is_unreadable(tmp_path: Path, capsys, monkeypatch) -> None:
    # As a producer who may write the inbox but not read the state folder: the lock's open is refused.
    import os

    from edged import lock

    cfg = _setup(tmp_path)
    doc = tmp_path / "a.txt"
    doc.write_text("one")
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(lock.os, "open", refusing_open)
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0  # before: a traceback, after the copy
    err = capsys.readouterr().err
    assert "cannot tell whether a daemon is running" in err and "Permission denied" in err and ".lock" in err
    assert "Traceback" not in err
    assert main(["status", "-c", cfg]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("daemon"))
    assert "cannot tell whether a daemon is running" in line and "Permission denied" in line
    assert main(["status", "-c", cfg, "--json"]) == 0
    daemon = json.loads(capsys.readouterr().out)["daemon"]
    assert daemon["running"] is None and "Permission denied" in daemon["running_unknown"]
