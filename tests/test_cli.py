"""The `edged` command: help on every verb, exit codes, and the verbs over a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, base_config, png_bytes
from edged.cli import build_parser, main
from edged.exitcodes import ExitCode

VERBS = ["run", "init", "submit", "status", "results", "show", "retry", "doctor", "reload", "install-service",
         "note-exit", "model"]


def _edged(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "edged"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "edged"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_help_on_every_verb() -> None:
    top = _edged("--help")
    assert top.returncode == 0 and "Exit codes:" in top.stdout
    for verb in VERBS:
        res = _edged(verb, "--help")
        assert res.returncode == 0, res.stderr
        assert f"usage: edged {verb}" in res.stdout
    assert set(VERBS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_usage_and_config_errors_have_their_exit_codes(tmp_path: Path) -> None:
    assert _edged("frobnicate").returncode == ExitCode.USAGE
    res = _edged("status", "-c", str(tmp_path / "nope.yaml"))
    assert res.returncode == ExitCode.CONFIG and "config file not found" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {batch_size: -3}\n")
    res = _edged("status", "-c", str(bad))
    assert res.returncode == ExitCode.CONFIG and "model.batch_size" in res.stderr


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base_config(tmp_path)))
    return str(path)


def _json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def test_init_writes_a_working_config(tmp_path: Path, capsys) -> None:
    assert main(["init", str(tmp_path / "box")]) == 0
    out = capsys.readouterr().out
    assert "inbox/caption/" in out and "edged run -c" in out
    assert (tmp_path / "box" / "spool" / "inbox" / "translate").is_dir()
    assert main(["init", str(tmp_path / "box")]) == ExitCode.USAGE  # never clobbers
    assert main(["status", "-c", str(tmp_path / "box" / "config.yaml"), "--json"]) == 0


def _as_the_daemon_leaves_it(cfg: str) -> None:
    """The database and spool folders, as the daemon makes them at its first start."""
    from edged.config import load_config
    from edged.wiring import open_parts

    parts = open_parts(load_config(Path(cfg)))
    parts.layout.ensure()


def test_submit_status_results(cfg: str, tmp_path: Path, capsys) -> None:
    _as_the_daemon_leaves_it(cfg)
    src = tmp_path / "doc.txt"
    src.write_text("Guten Morgen")
    img = tmp_path / "pic.png"
    img.write_bytes(png_bytes())
    assert main(["submit", "-c", cfg, "--task", "translate", "--lang", "fr", str(src)]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert line == ["1", "translate/fr/doc.txt", "new"]
    assert (tmp_path / "spool" / "inbox" / "translate" / "fr" / "doc.txt").read_text() == "Guten Morgen"
    assert main(["submit", "-c", cfg, "-t", "caption", str(img), str(img)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()]
    assert [(f[1], f[2]) for f in lines] == [("caption/pic.png", "new"), ("caption/pic.1.png", "attached")]
    assert not list((tmp_path / "spool" / "inbox").rglob(".*"))  # no temp files left

    assert main(["submit", "-c", cfg, "-t", "translate", "--lang", "xx-nope", str(src)]) == ExitCode.USAGE
    assert main(["submit", "-c", cfg, "-t", "ocr", "--lang", "de", str(img)]) == ExitCode.USAGE
    assert main(["submit", "-c", cfg, "-t", "ocr", str(tmp_path / "missing.png")]) == ExitCode.INPUT
    tmpname = tmp_path / "x.tmp"
    tmpname.write_text("x")
    assert main(["submit", "-c", cfg, "-t", "translate", str(tmpname)]) == ExitCode.INPUT
    capsys.readouterr()

    assert main(["status", "-c", cfg, "--json"]) == 0
    info = _json(capsys)
    assert info["jobs"]["queued"] == 2 and info["by_task"]["caption"]["queued"] == 1
    assert info["files_in_inbox"] == 3 and info["oldest_queued_age_s"] >= 0
    assert main(["status", "-c", cfg]) == 0
    assert "oldest queued job" in capsys.readouterr().out

    assert main(["results", "-c", cfg, "--format", "json"]) == 0
    assert _json(capsys) == []  # nothing finished yet
    assert main(["results", "-c", cfg, "--status", "queued", "--format", "jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["source_path"] for r in rows} == {"translate/fr/doc.txt", "caption/pic.png"}
    assert rows[0]["params"] in ({"target_language": "fr"}, {})
    assert main(["results", "-c", cfg, "--since", "yesterday"]) == ExitCode.USAGE


def test_retry_moves_failed_files_back_and_requeues(cfg: str, tmp_path: Path, capsys, make_settings) -> None:
    from echo_engine import EchoEngine

    from edged.config import load_config
    from edged.wiring import open_parts
    from edged.worker import Worker

    _as_the_daemon_leaves_it(cfg)
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes()[:60])  # a PNG's header (submit takes it), its pixels cut off (the worker fails it)
    assert main(["submit", "-c", cfg, "-t", "ocr", str(bad)]) == 0
    settings = load_config(Path(cfg))
    parts = open_parts(settings)
    Worker(settings, parts.queue, parts.layout, parts.settler, EchoEngine({})).run_batch()
    failed = tmp_path / "spool" / "failed" / "ocr" / "bad.png"
    assert failed.exists() and Path(str(failed) + ".error.json").exists()
    capsys.readouterr()

    assert main(["results", "-c", cfg]) == 0
    assert "corrupt or truncated image" in capsys.readouterr().out
    assert main(["retry", "-c", cfg, "--failed"]) == 0
    assert capsys.readouterr().out.strip() == "1\tqueued"
    assert (tmp_path / "spool" / "inbox" / "ocr" / "bad.png").exists()
    assert not failed.exists() and not Path(str(failed) + ".error.json").exists()
    assert parts.queue.job_status(1) == ("queued", None, 0)
    assert main(["retry", "-c", cfg, "1"]) == 0
    assert "not failed" in capsys.readouterr().out
    assert main(["retry", "-c", cfg, "42"]) == ExitCode.NOT_FOUND
    assert main(["retry", "-c", cfg]) == ExitCode.USAGE


def test_doctor(cfg: str, tmp_path: Path, capsys) -> None:
    assert main(["doctor", "-c", cfg]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "plug-in engine" in out and "FAIL" not in out
    onnx_cfg = tmp_path / "onnx.yaml"
    data = base_config(tmp_path)
    data["model"] = {"engine": "onnx", "path": str(tmp_path / "no-model")}
    onnx_cfg.write_text(yaml.safe_dump(data))
    assert main(["doctor", "-c", str(onnx_cfg), "--json"]) == ExitCode.CHECK_FAILED
    report = json.loads(capsys.readouterr().out)
    model = next(c for c in report["checks"] if c["check"] == "model")
    assert model["result"] == "FAIL" and "no model" in model["detail"]


def test_run_without_a_model_exits_with_model_unavailable(tmp_path: Path) -> None:
    data = base_config(tmp_path)
    data["model"] = {"engine": "onnx", "path": str(tmp_path / "no-model")}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == ExitCode.MODEL_UNAVAILABLE
    assert "no model at" in res.stderr


def test_second_daemon_on_the_same_database_is_refused(daemon_factory) -> None:
    first = daemon_factory().start()
    res = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(first.config_path)], capture_output=True,
                         text=True, timeout=60, env=first.env())
    assert res.returncode == ExitCode.ALREADY_RUNNING and "another edged" in res.stderr
    assert first.stop() == 0


def test_a_database_edged_cannot_use_is_a_clean_exit_naming_the_fix(tmp_path: Path) -> None:
    from edged.store import migrate, open_engine

    cfg = base_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    engine = open_engine(f"sqlite:///{tmp_path / 'state' / 'edged.db'}")
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO schema_migrations VALUES (999, 'x')")
    for verb in (["status"], ["run"]):
        res = subprocess.run([sys.executable, "-m", "edged", *verb, "-c", str(path)], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert res.returncode == ExitCode.DATABASE, (verb, res.stderr)
        assert "newer than this edged" in res.stderr and "upgrade edged" in res.stderr
        assert "Traceback" not in res.stderr
    cfg["database"] = "mysql://box/edged"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "edged", "status", "-c", str(path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == ExitCode.CONFIG and "SQLite (sqlite:///path) or PostgreSQL" in res.stderr
    assert "Traceback" not in res.stderr
    # A server out of reach: its own exit code, the server's words, and the password never shown.
    cfg["database"] = "postgresql://box:s3cret@no-such-host.invalid/edged"
    path.write_text(yaml.safe_dump(cfg))
    res = subprocess.run([sys.executable, "-m", "edged", "status", "-c", str(path)], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == ExitCode.UNAVAILABLE, res.stderr
    assert "no-such-host.invalid" in res.stderr and "s3cret" not in res.stderr and "Traceback" not in res.stderr


def test_a_broken_pipe_in_the_daemon_is_a_failure_not_a_clean_stop() -> None:
    """Every other verb ends quietly with 0 on a closed pipe; `run` must exit non-zero so that
    systemd's Restart=on-failure starts it again."""
    code = ("import sys, edged.cli as c\n"
            "def broken(args):\n    raise BrokenPipeError()\n"
            "c.cmd_run = c.cmd_status = broken\n"
            "sys.exit(c.main(sys.argv[1:]))\n")
    run = subprocess.run([sys.executable, "-c", code, "run"], capture_output=True, text=True, timeout=60, cwd=REPO)
    status = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, timeout=60,
                            cwd=REPO)
    assert (run.returncode, status.returncode) == (ExitCode.ERROR, ExitCode.OK), run.stderr + status.stderr
