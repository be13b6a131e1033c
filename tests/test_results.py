"""`edged results`: CSV, a table that fits the terminal, --follow, retry times, and a closed pipe."""

from __future__ import annotations

import csv
import io
import json
import os
import re
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


def test_a_row_from_the_other_side_of_a_dst_change_is_on_the_headers_clock_and_lines_up(monkeypatch) -> None:
    import time
    from datetime import timedelta, timezone

    from edged.commands.results import Table
    from edged.timeutil import iso, local_time, parse_iso, utcnow

    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    then = iso(utcnow() - timedelta(days=182))  # half a year ago: the other offset
    now_zone, then_zone = local_time(utcnow())[-6:], local_time(then)[-6:]
    assert now_zone != then_zone
    clock = timezone(utcnow().astimezone().utcoffset() or timedelta(0))
    row = {"job_id": 1, "task": "ocr", "status": "done", "finished_at": then, "created_at": then,
           "next_run_at": then, "source_path": "ocr/a.png", "output": "text", "error": None, "attempts": 1}
    fresh = {**row, "finished_at": iso(utcnow())}
    for table, fmt in ((Table(tty=False, width=200), "%Y-%m-%d %H:%M:%S"),
                       (Table(tty=True, width=80), "%m-%d %H:%M"), (Table(tty=True, width=60), "%m-%d %H:%M")):
        assert now_zone in table.header()
        old, new = table.row(row), table.row(fresh)
        # The old row's time on the header's clock (before: its own 26-character time, out of line).
        assert parse_iso(then).astimezone(clock).strftime(fmt) in old and then_zone not in old
        assert len(old) == len(new) and old.index("ocr/a.png") == new.index("ocr/a.png")
        assert table.header().index("source") == old.index("ocr/a.png")


def _rows_at(cfg: str, columns: int, capsys, monkeypatch) -> list[str]:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["results", "-c", cfg]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_table_fits_80_and_60_columns_with_every_row_aligned(tmp_path: Path, capsys, monkeypatch) -> None:
    # A retry 20 to 40 days ahead (the backoff's jitter): 'retry in 25.3d' is 14 characters (the status
    # column was 13).
    cfg = _done_translation(tmp_path, capsys, queue={"max_attempts": 3, "backoff_seconds": 40 * 86400,
                                                      "backoff_max_seconds": 40 * 86400})
    doc = tmp_path / "doc.txt"
    doc.write_text("BOOM")
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
    _work(cfg, fail_on="BOOM")
    capsys.readouterr()
    for columns in (80, 60):
        header, waiting, done = _rows_at(cfg, columns, capsys, monkeypatch)
        assert re.search(r"retry in \d\d\.\dd ", waiting) and "engine" in waiting, waiting
        assert all(len(line) <= columns for line in (header, waiting, done)), columns  # before: 85 and more
        assert len(done) == columns and done.endswith("…")  # the long output takes what is left
        at = header.index("source")
        assert waiting[at:].startswith("translate/") and done[at:].startswith("transl"), columns
        out_at = header.index("output")
        assert waiting[out_at:].startswith("engine"), (columns, waiting)
        # The status and the time line up too.
        assert header.index("status") == waiting.index("retry in") == done.index("done")
    header, _waiting, done = _rows_at(cfg, 80, capsys, monkeypatch)
    assert "task" in header and " translate " in done
    header, _waiting, done = _rows_at(cfg, 60, capsys, monkeypatch)
    assert "task" not in header  # the source path begins with it


HOSTILE_NAME = "evil\x1b[31mRED\x1b[0m.txt"
HOSTILE_TEXT = "Hallo\x1b]0;pwned\x07 und \u202egnalrednieht\u202c, Ende\x9b2J."


def _assert_escaped(text: str) -> None:
    for raw in ("\x1b", "\x07", "\x9b", "\u202e", "\u202c"):
        assert raw not in text, repr(raw)


def test_names_and_outputs_reach_the_terminal_escaped(tmp_path: Path, capsys, monkeypatch) -> None:
    cfg = _done_translation(tmp_path, capsys, name=HOSTILE_NAME, text=HOSTILE_TEXT)
    assert main(["results", "-c", cfg]) == 0  # a pipe: nothing cut, still escaped
    out = capsys.readouterr().out
    _assert_escaped(out)
    assert "evil\\x1b[31mRED\\x1b[0m.txt" in out and "\\u202egnalrednieht" in out
    for columns in (200, 80, 60):
        lines = _rows_at(cfg, columns, capsys, monkeypatch)
        _assert_escaped("\n".join(lines))
        assert all(len(line) <= columns for line in lines)
    assert main(["show", "-c", cfg, "1"]) == 0
    out = capsys.readouterr().out
    _assert_escaped(out)
    assert "source              translate/de/evil\\x1b[31mRED\\x1b[0m.txt" in out
    assert "\\x1b]0;pwned\\x07" in out
    assert main(["results", "-c", cfg, "--format", "csv"]) == 0
    out = capsys.readouterr().out
    # CSV escapes the controls only: bidi characters are the data's (a spreadsheet shows them as text).
    assert not any(raw in out for raw in ("\x1b", "\x07", "\x9b")) and "\u202egnalrednieht\u202c" in out
    # JSON and JSON lines carry the exact text.
    assert main(["results", "-c", cfg, "--format", "jsonl"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["source_path"] == f"translate/de/{HOSTILE_NAME}" and HOSTILE_TEXT in row["output"]
    assert main(["show", "-c", cfg, "1", "--json"]) == 0
    assert HOSTILE_TEXT in json.loads(capsys.readouterr().out)["result"]["output"]


def test_csv_cells_that_look_like_formulas_are_quoted_away() -> None:
    from edged.commands.results import CSV_COLUMNS, _csv_row
    from edged.timeutil import utcnow

    row = {"job_id": 7, "task": "translate", "status": "done", "finished_at": None, "created_at": "x",
           "next_run_at": None, "source_path": "translate/@evil.txt", "params": {}, "model": "+m",
           "attempts": 1, "prompt_tokens": -3, "output_tokens": 5, "duration_ms": 9,
           "output": "=HYPERLINK(\"http://x\")\nline two", "error": "-1+1"}
    cells = dict(zip(CSV_COLUMNS, _csv_row(row, utcnow()), strict=True))
    assert cells["output"] == "'=HYPERLINK(\"http://x\")\nline two"  # newlines stay: CSV quotes them
    assert cells["error"] == "'-1+1" and cells["model"] == "'+m"
    assert cells["source_path"] == "translate/@evil.txt"  # only a leading character starts a formula
    assert cells["prompt_tokens"] == -3 and cells["job_id"] == 7  # numbers are numbers
    for lead in ("@", "\t", "\r", "+", "-", "="):
        assert _csv_row({**row, "output": lead + "x"}, utcnow())[CSV_COLUMNS.index("output")] == "'" + lead + "x"


def test_follow_prints_a_job_that_waits_for_its_retry_and_again_when_it_is_done(tmp_path: Path, capsys,
                                                                                 monkeypatch) -> None:
    import sqlite3

    from edged.commands import results as results_module

    cfg = _done_translation(tmp_path, capsys, text="Erster Text.",
                            queue={"max_attempts": 3, "backoff_seconds": 600, "backoff_max_seconds": 600})
    doc = tmp_path / "doc.txt"
    doc.write_text("BOOM")
    # Job 2 waits in a backlog, queued long before the follow starts (and before job 1 finished).
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
    db = tmp_path / "state" / "edged.db"

    def sql(statement: str) -> None:
        con = sqlite3.connect(db)
        with con:
            con.execute(statement)
        con.close()

    sql("UPDATE jobs SET created_at = '2026-01-01T00:00:00.000Z' WHERE id = 2")
    polls = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            _work(cfg, fail_on="BOOM")  # job 2 fails: queued, its retry 10 minutes ahead
        elif len(polls) == 2:
            sql("UPDATE jobs SET next_run_at = '2000-01-01T00:00:00.000Z' WHERE id = 2")  # the ten minutes pass
            _work(cfg)  # and the retry succeeds
        elif len(polls) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(results_module.time, "sleep", sleep)
    assert main(["results", "-c", cfg, "--follow", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    # Each outcome once: job 1 as listed, job 2 waiting (before: never shown), then job 2 done.
    assert [(r["job_id"], r["status"]) for r in lines] == [(1, "done"), (2, "queued"), (2, "done")]
    assert "test double told to fail" in lines[1]["error"] and lines[1]["next_run_at"] > lines[1]["created_at"]
    assert lines[2]["output"]


def test_for_terminal_escapes_what_drives_a_terminal_and_keeps_what_is_writing() -> None:
    from edged.pathnames import for_terminal

    assert for_terminal("a\x1b[2Jb\x7fc\x9bd\x00") == "a\\x1b[2Jb\\x7fc\\x9bd\\x00"
    assert for_terminal("x\u202ey\u2066z\u2028w") == "x\\u202ey\\u2066z\\u2028w"
    assert for_terminal("line\ttab\nnext", keep="\t") == "line\ttab\\x0anext"
    assert for_terminal(os.fsdecode(b"name-\xff.txt")) == "name-\\xff.txt"  # as displayable shows the byte
    family, persian = "\U0001F468\u200d\U0001F469\u200d\U0001F467", "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert for_terminal(family) == family and for_terminal(persian) == persian  # joiners are writing
    assert for_terminal("Grüße, 世界 😀") == "Grüße, 世界 😀"


def test_a_followers_poll_looks_up_only_what_changed_by_index(tmp_path: Path) -> None:
    """The plan of a follower's poll: no walk over every done and failed job (jobs_ready's statuses,
    then a correlated subquery per job, 0.56 s at a million jobs), only the two finished_at indexes."""
    import sqlite3
    from datetime import timedelta

    from sqlalchemy import event

    from edged.store import migrate, open_engine
    from edged.store.queries import list_results
    from edged.timeutil import iso, utcnow

    engine = open_engine(f"sqlite:///{tmp_path / 'e.db'}")
    migrate(engine)
    now = utcnow()
    old, recent = iso(now - timedelta(days=3)), iso(now - timedelta(seconds=5))
    con = sqlite3.connect(tmp_path / "e.db")
    with con:
        jobs = [(1, "done", old, old), (2, "done", recent, recent), (3, "failed", old, old),
                (4, "queued", None, iso(now + timedelta(minutes=10)))]  # 4: failed just now, waits for its retry
        con.executemany("INSERT INTO jobs (id, task, source_path, status, finished_at, created_at, next_run_at)"
                        " VALUES (?, 'ocr', 'ocr/x.png', ?, ?, '2026-01-01T00:00:00.000Z', ?)", jobs)
        con.executemany("INSERT INTO job_attempts (job_id, round, attempt, started_at, finished_at, outcome)"
                        " VALUES (?, 1, 1, ?, ?, ?)", [(1, old, old, "done"), (4, recent, recent, "retry")])
    con.close()
    plans: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _plan(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if "AS job_id" in statement:
            rows = cursor.connection.execute("EXPLAIN QUERY PLAN " + statement, parameters).fetchall()
            plans.append("\n".join(row[-1] for row in rows))

    since = now - timedelta(minutes=1)
    for query in ({}, {"task": "ocr"}, {"status": "done"}):
        got = list_results(engine, changed_since=since, limit=None, **query)
        assert [r["job_id"] for r in got] == ([2] if "status" in query else [2, 4]), query
    assert len(plans) == 3
    for plan in plans:
        assert "jobs_finished" in plan and "job_attempts_finished" in plan, plan
        assert "jobs_ready" not in plan and "MULTI-INDEX OR" not in plan, plan  # before: both
        assert "CORRELATED" not in plan and "job_attempts_job" not in plan, plan
        # The one table walked is the handful of changed ids; each job is then fetched by its id.
        scans = [line for line in plan.splitlines() if line.startswith("SCAN")]
        assert scans == ["SCAN changed"], plan
        assert "SEARCH j USING INTEGER PRIMARY KEY" in plan, plan


def _columns(text: str) -> int:
    """Display columns as a terminal counts them, independently of results.py's own count."""
    import unicodedata

    return sum(0 if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf")
               else 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


CJK_TEXT = ("这份报告描述了设备在冬季的运行情况、更换了哪些零件，以及为什么春季的维护时间比计划的更长。"
            "😀👍🏽 還有全角文字ＡＢＣ和組み合わせ文字 e\u0301 ये हिन्दी है。")


def test_the_table_fits_80_and_60_columns_with_cjk_and_emoji(tmp_path: Path, capsys, monkeypatch) -> None:
    from edged.commands.results import Table

    for columns in (80, 60):
        table = Table(tty=True, width=columns)
        header = table.header()
        lines = [table.row(_row(7, source="ocr/报告📄季度总结文件名.png", output="OUT" + CJK_TEXT)),
                 table.row(_row(8, source="ocr/" + "e\u0301" * 20 + ".png", output="OUT" + "e\u0301" * 100)),
                 table.row(_row(9, source="ocr/ＡＢＣ😀ＡＢＣ😀ＡＢＣ😀.png", output="OUT" + "ＡＢＣ😀" * 30))]
        for line in lines:
            # Before: 99 columns at 80. A wide character that does not fit leaves a column free.
            assert columns - 1 <= _columns(line) <= columns and line.endswith("…"), (columns, line)
            # The source and the output begin under their headings, counted in columns.
            for text, heading in (("ocr/", "source"), ("OUT", "output")):
                assert _columns(line[: line.index(text)]) == _columns(header[: header.index(heading)]), line
    # End to end: a Chinese name and text, at 80 and 60 columns, and whole in a pipe.
    cfg = _done_translation(tmp_path, capsys, name="报告📄季度总结文件.txt", text=CJK_TEXT)
    for columns in (80, 60):
        header, line = _rows_at(cfg, columns, capsys, monkeypatch)
        assert _columns(header) <= columns and columns - 1 <= _columns(line) <= columns, (columns, line)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert main(["results", "-c", cfg]) == 0  # a pipe: whole
    assert CJK_TEXT in capsys.readouterr().out


def _row(job_id: int, source: str = "src/de/a.txt", output: str = "x" * 200) -> dict:
    from edged.timeutil import iso, utcnow

    now = iso(utcnow())
    return {"job_id": job_id, "task": "translate", "status": "done", "finished_at": now, "created_at": now,
            "next_run_at": now, "source_path": source, "output": output, "error": None, "attempts": 1}


def test_rows_fit_from_51_columns() -> None:
    from edged.commands.results import Table

    for width in (51, 52, 60):
        table = Table(tty=True, width=width)
        line = table.row(_row(123456))
        assert len(line) == width and len(table.header()) <= width, (width, line)  # before: 52 at 51


def test_a_long_job_id_widens_its_column_and_the_row_still_fits(capsys, monkeypatch) -> None:
    from edged.commands.results import Printer, Table

    for width in (52, 60, 80):
        table = Table(tty=True, width=width)
        assert table.fit([_row(1), _row(12345678)])
        header, short, long = table.header(), table.row(_row(1)), table.row(_row(12345678))
        assert len(short) == len(long) == width and len(header) <= width, width  # before: 54 at 52
        for line in (short, long):
            assert line.index("done") == header.index("status") and line.index("src/") == header.index("source")
    # A follower: the header again when a wider id comes, every row under its header.
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    printer = Printer("table")
    printer.print([_row(999999)])
    printer.print([_row(1000000)])
    printer.print([_row(1000001)])
    lines = capsys.readouterr().out.splitlines()
    assert [line.startswith(" job") or line.lstrip().startswith("job") for line in lines] == [
        True, False, True, False, False]
    assert len({len(line) for line in lines[1::1] if not line.lstrip().startswith("job")}) == 1
    assert lines[2].index("status") == lines[3].index("done") == lines[4].index("done")


WRITING = ("Trenn\u00adstrich \u200eשלום\u200f \u061cمرحبا word\u2060joiner \ufeffbom "
           "\U0001F468\u200d\U0001F469\u200d\U0001F467 \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645")


def test_for_terminal_leaves_format_characters_that_are_writing_and_doubles_backslashes() -> None:
    from edged.pathnames import for_csv, for_terminal

    assert for_terminal(WRITING) == WRITING  # before: \xad, \u200e, \u200f, \u061c, \u2060, \ufeff
    for ch in ("\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
               "\u2028", "\u2029", "\x1b", "\x00", "\x7f", "\x85", "\x9b"):
        escape = f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
        assert for_terminal(f"a{ch}b") == f"a{escape}b", repr(ch)
    # A literal backslash is \\ on screen, so \x1b there is always an escape.
    assert for_terminal("C:\\x1b and \x1b") == "C:\\\\x1b and \\x1b"
    assert for_terminal("caf\\xe9.txt", stored=True) == "caf\\xe9.txt"  # the store's own \xNN for a byte
    assert for_terminal(os.fsdecode(b"caf\xe9\\.txt")) == "caf\\xe9\\\\.txt"
    # CSV: the controls only; tabs and newlines stay (quoted), and the rest is the data's.
    assert for_csv(WRITING + "\u202e \\x1b\t\r\n") == WRITING + "\u202e \\x1b\t\r\n"
    assert for_csv("a\x1bb\x7fc\x9bd\x00") == "a\\x1bb\\x7fc\\x9bd\\x00"


def test_show_csv_and_the_table_keep_writing_and_mark_a_literal_backslash(tmp_path: Path, capsys,
                                                                          monkeypatch) -> None:
    text = WRITING + " literal \\x1b end"
    cfg = _done_translation(tmp_path, capsys, name="back\\slash.txt", text=text)
    assert main(["show", "-c", cfg, "1"]) == 0
    out = capsys.readouterr().out
    assert WRITING in out and "literal \\\\x1b end" in out
    assert "translate/de/back\\slash.txt" in out and "back\\\\slash" not in out  # a name: the store's form
    assert main(["results", "-c", cfg, "--format", "csv"]) == 0
    record = dict(zip(*csv.reader(io.StringIO(capsys.readouterr().out)), strict=True))
    assert text in record["output"]  # before: the soft hyphen, marks and joiners came out escaped
    assert main(["results", "-c", cfg]) == 0
    _header, line = capsys.readouterr().out.splitlines()
    assert WRITING in line and "literal \\\\x1b end" in line and "back\\slash.txt" in line
