"""How the previous process ended: the evidence crash attribution goes by (death.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, base_config
from edged.death import FAULT_FILE, previous_death, record_exit


def test_systemd_results_that_blame_the_process_and_those_that_do_not(tmp_path: Path) -> None:
    cases = [({"SERVICE_RESULT": "oom-kill", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, "an OOM kill"),
             ({"SERVICE_RESULT": "watchdog", "EXIT_CODE": "killed", "EXIT_STATUS": "ABRT"}, "a watchdog timeout"),
             ({"SERVICE_RESULT": "signal", "EXIT_CODE": "dumped", "EXIT_STATUS": "SEGV"}, "a crash (SIGSEGV)"),
             ({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, None),  # kill -9
             ({"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}, None)]
    for env, expected in cases:
        record_exit(tmp_path, env)
        assert previous_death(tmp_path) == expected, env
        assert previous_death(tmp_path) is None  # read once


def test_a_fault_traceback_blames_the_process(tmp_path: Path) -> None:
    (tmp_path / FAULT_FILE).write_text("Fatal Python error: Segmentation fault\n\nThread 0x1 …\n")
    assert previous_death(tmp_path) == "a crash (Segmentation fault)"
    (tmp_path / FAULT_FILE).write_text("")
    assert previous_death(tmp_path) is None


def test_note_exit_is_what_the_unit_runs(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(base_config(tmp_path)))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SERVICE_RESULT": "oom-kill", "EXIT_CODE": "killed",
           "EXIT_STATUS": "KILL"}
    res = subprocess.run([sys.executable, "-m", "edged", "note-exit", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    assert previous_death(tmp_path / "state") == "an OOM kill"
    assert "ExecStopPost=-/usr/local/bin/edged note-exit" in (REPO / "systemd" / "edged.service").read_text()
