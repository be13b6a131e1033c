"""`edged results`: CSV, a table that fits the terminal, --follow, retry times, and a closed pipe."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from edged.cli import main
from test_show import _setup, _work

LONG = ("Der Bericht beschreibt, wie die Anlage im Winter läuft, welche Teile ersetzt wurden, "
        "und warum die Wartung im Frühjahr länger dauert als geplant; dazu kommen Zahlen, Kommas, "
        "\"Anführungszeichen\" und eine zweite Zeile.\nZweite Zeile, bis zum Ende.")


@pytest.fixture(autouse=True)
def _utc(monkeypatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()


def _done_translation(tmp_path: Path, capsys, name: str = "long.txt", text: str = LONG, **extra) -> str:
    cfg = _setup(tmp_path, **extra)
    doc = tmp_path / name
    doc.write_text(text)
    assert main(["submit", "-c", cfg, "-t", "translate", "--lang", "de", str(doc)]) == 0
    _work(cfg, mode="echo")  # the output is the prompt: long, with the text's commas, quotes and newline
    capsys.readouterr()
    return cfg


def test_csv_has_a_header_and_whole_outputs(tmp_path: Path, capsys) -> None:
    cfg = _done_translation(tmp_path, capsys)
    assert main(["results", "-c", cfg, "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    header, (row,) = rows[0], rows[1:]
    assert header[:3] == ["job_id", "task", "status"] and "output" in header and "error" in header
    record = dict(zip(header, row, strict=True))
    assert record["status"] == "done" and record["source_path"] == "translate/de/long.txt"
    assert LONG.replace("\n", " ") in record["output"].replace("\n", " ") and len(record["output"]) > 200
    assert json.loads(record["params"]) == {"target_language": "de"}
    assert record["finished_at"].endswith("Z")


def test_table_fits_the_terminal_and_is_whole_in_a_pipe(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = _done_translation(tmp_path, capsys)
    assert main(["results", "-c", cfg]) == 0  # capsys: not a terminal
    header, line = capsys.readouterr().out.splitlines()
    assert "when (+00:00)" in header
    assert len(line) > 200 and line.endswith("bis zum Ende.")  # no 60-character cut, one line per job

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    for columns in (100, 160):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["results", "-c", cfg]) == 0
        header, line = capsys.readouterr().out.splitlines()
        assert len(line) == columns and line.endswith("…")  # the output column takes what is left
        assert len(header) <= columns


def test_follow_prints_jobs_as_they_finish_until_ctrl_c(tmp_path: Path, capsys, monkeypatch) -> None:
    from edged.commands import results as results_module

    cfg = _done_translation(tmp_path, capsys, text="Erster Text.")
    later = tmp_path / "later.txt"
    later.write_text("Zweiter Text.")
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            assert main(["submit", "-c", cfg, "-t", "translate", "--lang", "fr", str(later)]) == 0
            _work(cfg)
        elif len(polls) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(results_module.time, "sleep", sleep)
    assert main(["results", "-c", cfg, "--follow", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(r["job_id"], r["source_path"]) for r in lines] == [(1, "translate/de/long.txt"),
                                                                (2, "translate/fr/later.txt")]
    assert polls == [1.0, 1.0, 1.0]
    assert main(["results", "-c", cfg, "--follow", "--format", "json"]) == 2  # a JSON array cannot stream


def _edged(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "edged"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edged"]


def test_a_closed_pipe_ends_every_verb_quietly(tmp_path: Path, capsys) -> None:
    cfg = _done_translation(tmp_path, capsys)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for verb in (["results"], ["results", "--format", "csv"], ["status"], ["show", "1"], ["--help"]):
        argv = [*_edged(), *verb] if verb == ["--help"] else [*_edged(), *verb, "-c", cfg]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the command prints (`| head -0`)
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, (verb, err)
        assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, (verb, err)


def test_ctrl_c_ends_a_follower_with_exit_0_and_no_traceback(tmp_path: Path, capsys) -> None:
    cfg = _done_translation(tmp_path, capsys)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*_edged(), "results", "-c", cfg, "--follow"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=REPO, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    assert "output / error" in proc.stdout.readline()  # it is following now
    assert "long.txt" in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    assert "Traceback" not in proc.stderr.read()


def test_a_job_waiting_for_its_retry_says_when(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path, queue={"max_attempts": 3, "backoff_seconds": 600, "backoff_max_seconds": 600})
    doc = tmp_path / "doc.txt"
    doc.write_text("BOOM")
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
    _work(cfg, fail_on="BOOM")
    capsys.readouterr()
    assert main(["results", "-c", cfg]) == 0
    _header, line = capsys.readouterr().out.splitlines()
    assert "queued" not in line and any(f"retry in {m}m" in line for m in range(4, 16))
    assert "test double told to fail" in line
    assert main(["results", "-c", cfg, "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["status"] == "queued" and row["next_run_at"].endswith("Z")
    assert main(["status", "-c", cfg]) == 0
    out = capsys.readouterr().out
    waiting = next(line for line in out.splitlines() if line.startswith("waiting for retry"))
    assert "1 queued after a failure" in waiting and "+00:00" in waiting
    assert any(f"(in {m}m)" in waiting for m in range(4, 16))
    assert main(["status", "-c", cfg, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["waiting_for_retry"] == 1 and info["next_retry_at"] == row["next_run_at"]


def test_a_row_from_the_other_side_of_a_dst_change_names_its_own_offset(monkeypatch) -> None:
    import time
    from datetime import timedelta

    from edged.commands.results import Table
    from edged.timeutil import iso, local_time, utcnow

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    table = Table(tty=False, width=200)
    then = iso(utcnow() - timedelta(days=182))  # half a year ago: the other offset
    now_zone, then_zone = local_time(utcnow())[-6:], local_time(then)[-6:]
    assert now_zone != then_zone
    row = {"job_id": 1, "task": "ocr", "status": "done", "finished_at": then, "created_at": then,
           "next_run_at": then, "source_path": "ocr/a.png", "output": "text", "error": None}
    assert f"when ({now_zone})" in table.header()
    assert f"{local_time(then)}" in table.row(row)
    fresh = {**row, "finished_at": iso(utcnow())}
    assert local_time(fresh["finished_at"])[:19] + " " in table.row(fresh)
    assert now_zone not in table.row(fresh)
