"""`edged show JOB`: one job whole, over a real database that a real worker filled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import base_config, png_bytes
from edged.cli import main
from edged.exitcodes import ExitCode


def _setup(tmp_path: Path, **extra: Any) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path, **extra)))
    from edged.config import load_config
    from edged.wiring import open_parts

    open_parts(load_config(path)).layout.ensure()  # as the daemon leaves it at its first start
    return str(path)


def _work(cfg: str, **options: Any) -> None:
    """One batch through a real worker and the echo double."""
    from echo_engine import EchoEngine

    from edged.config import load_config
    from edged.wiring import open_parts
    from edged.worker import Worker

    settings = load_config(Path(cfg))
    parts = open_parts(settings)
    Worker(settings, parts.queue, parts.layout, parts.settler, EchoEngine(options)).run_batch()


def test_show_a_done_job_whole(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path)
    pic = tmp_path / "pic.png"
    pic.write_bytes(png_bytes())
    assert main(["submit", "-c", cfg, "-t", "caption", str(pic), str(pic)]) == 0  # the second joins the first
    _work(cfg)
    capsys.readouterr()

    assert main(["show", "-c", cfg, "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["id"] == 1 and info["status"] == "done" and info["task"] == "caption"
    assert [(f["path"], f["state"]) for f in info["files"]] == [("caption/pic.png", "done"),
                                                                ("caption/pic.1.png", "done")]
    assert info["files"][0]["moved_to"] == "done/caption/pic.png"
    assert info["files"][0]["result_file"] == "out/caption/pic.png.caption.txt"
    assert info["result"]["output"].startswith("echo ") and info["result"]["output_tokens"] is not None
    assert info["result_file"] == str(tmp_path / "spool" / "out" / "caption" / "pic.png.caption.txt")
    assert info["parent"] is None and info["children"] == []
    (attempt,) = info["attempt_history"]
    assert (attempt["round"], attempt["attempt"], attempt["outcome"]) == (1, 1, "done")
    # JSON keeps the stored UTC times.
    assert info["created_at"].endswith("Z") and attempt["finished_at"].endswith("Z")

    assert main(["show", "-c", cfg, "1"]) == 0
    out = capsys.readouterr().out
    assert "caption/pic.1.png  [done]" in out and "moved to     done/caption/pic.png" in out
    assert "result file         " + info["result_file"] in out
    assert "round 1 attempt 1  done" in out and info["result"]["output"] in out
    # Times for people carry their zone: local time and its UTC offset (TZ=UTC here).
    created = next(line for line in out.splitlines() if line.startswith("created"))
    assert created.endswith(" +00:00") and info["created_at"][:10] in created


def test_show_an_unknown_job_is_not_found(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path)
    assert main(["show", "-c", cfg, "42"]) == ExitCode.NOT_FOUND
    assert "no job 42" in capsys.readouterr().err


def test_show_keeps_the_attempts_of_earlier_rounds_after_retry(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path, queue={"max_attempts": 1})
    doc = tmp_path / "doc.txt"
    doc.write_text("BOOM and more")
    assert main(["submit", "-c", cfg, "-t", "translate", "--lang", "de", str(doc)]) == 0
    _work(cfg, fail_on="BOOM")
    assert main(["retry", "-c", cfg, "1"]) == 0
    _work(cfg)
    capsys.readouterr()
    assert main(["show", "-c", cfg, "1", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "done" and info["error"] is None and info["round"] == 2
    history = [(a["round"], a["attempt"], a["outcome"]) for a in info["attempt_history"]]
    assert history == [(1, 1, "failed"), (2, 1, "done")]
    assert "test double told to fail" in info["attempt_history"][0]["error"]
    assert main(["show", "-c", cfg, "1"]) == 0
    out = capsys.readouterr().out
    assert "round 1 attempt 1  failed" in out and "round 2 attempt 1  done" in out


def test_show_says_a_queued_job_waits_for_its_retry_and_names_parent_and_child(tmp_path: Path, capsys) -> None:
    cfg = _setup(tmp_path, queue={"max_attempts": 3, "backoff_seconds": 600, "backoff_max_seconds": 600},
                 tasks={"ocr": {"translate_to": "de"}})
    page = tmp_path / "page.png"
    page.write_bytes(png_bytes())
    doc = tmp_path / "doc.txt"
    doc.write_text("BOOM")
    assert main(["submit", "-c", cfg, "-t", "ocr", str(page)]) == 0
    _work(cfg)  # the OCR job spawns its translation (job 2)
    assert main(["submit", "-c", cfg, "-t", "translate", str(doc)]) == 0
    _work(cfg, fail_on="BOOM")  # job 2 (the echo's text) and job 3 (BOOM): one batch, one task
    capsys.readouterr()

    assert main(["show", "-c", cfg, "1", "--json"]) == 0
    parent = json.loads(capsys.readouterr().out)
    assert [(c["id"], c["task"]) for c in parent["children"]] == [(2, "translate")]
    assert main(["show", "-c", cfg, "2"]) == 0
    out = capsys.readouterr().out
    assert "job 1 (ocr, done): its result is this job's input" in out

    assert main(["show", "-c", cfg, "3", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "queued" and info["retry_at"] == info["next_run_at"]
    assert [a["outcome"] for a in info["attempt_history"]] == ["retry"]
    assert main(["show", "-c", cfg, "3"]) == 0
    status_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("status"))
    assert "queued, waiting for its retry at" in status_line
    assert any(f"(in {m}m)" in status_line for m in range(4, 16))  # 10 min ± 50 %


@pytest.fixture(autouse=True)
def _utc(monkeypatch) -> None:
    """Local time is UTC in these tests unless one says otherwise."""
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
