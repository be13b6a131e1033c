"""Logs under journald: a priority on every line, one record per event, tracebacks included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import REPO

SCRIPT = textwrap.dedent("""
    import logging, os, sys, threading
    st = os.fstat(2)
    if sys.argv[1] == "journal":
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    from edged.logs import configure_logging, get_logger
    configure_logging("debug", sys.argv[2])
    log = get_logger("t")
    log.debug("d"); log.info("i", n=1); log.warning("w"); log.error("e")
    try:
        raise ValueError("bad\\nthing")
    except ValueError:
        log.exception("caught")
    logging.getLogger("apscheduler").warning("from the standard library\\nsecond line")
    t = threading.Thread(target=lambda: 1 / 0); t.start(); t.join()
    raise RuntimeError("uncaught")
""")


def _run(tmp_path: Path, mode: str, fmt: str) -> list[str]:
    err = tmp_path / f"stderr-{mode}-{fmt}"
    with open(err, "w") as f:
        res = subprocess.run([sys.executable, "-c", SCRIPT, mode, fmt], stderr=f, stdout=subprocess.PIPE,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert res.returncode == 1
    return err.read_text().splitlines()


def test_under_journald_every_line_has_its_priority_and_is_one_record(tmp_path: Path) -> None:
    lines = _run(tmp_path, "journal", "auto")
    prios = [ln[:3] for ln in lines]
    assert prios == ["<7>", "<6>", "<4>", "<3>", "<3>", "<4>", "<2>", "<2>"], lines
    records = [json.loads(ln[3:]) for ln in lines if not ln.startswith("<4>apscheduler")]
    assert [r["event"] for r in records] == ["d", "i", "w", "e", "caught", "unhandled_exception",
                                             "unhandled_exception"]
    assert "ZeroDivisionError" in records[5]["error"] and records[6]["error"] == "RuntimeError: uncaught"
    assert "exception" in records[6]  # the traceback, inside the one record
    assert lines[5] == "<4>apscheduler: from the standard library \\n second line"


def test_console_format_under_journald_keeps_tracebacks_in_one_line(tmp_path: Path) -> None:
    lines = _run(tmp_path, "journal", "console")
    assert len(lines) == 8 and all(ln[:3] in {"<2>", "<3>", "<4>", "<6>", "<7>"} for ln in lines), lines
    assert "Traceback" in lines[4] and "ValueError: bad" in lines[4]


def test_without_journald_no_priority_prefix(tmp_path: Path) -> None:
    lines = _run(tmp_path, "plain", "json")
    assert lines[0].startswith("{") and json.loads(lines[-1])["event"] == "unhandled_exception"
