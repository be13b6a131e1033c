"""bench/chaos.py at CI size: SIGKILL at random moments (half of them in the model) over mixed
inputs through the tiny vision model; nothing lost, nothing doubled, nothing failed by a kill."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from model_cache import built_model

TINY_VISION = f"random:{REPO / 'models' / 'tiny-gemma3-vision.json'}"


@pytest.mark.timeout(900)
def test_chaos_loses_nothing(tmp_path) -> None:
    model = built_model(TINY_VISION, weights="fp32")
    res = subprocess.run([sys.executable, str(REPO / "bench" / "chaos.py"), "--files", "60", "--kills", "20",
                          "--model", str(model), "--seed", os.environ.get("EDGED_TEST_SEED", "7"),
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=850, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    last = res.stdout.strip().splitlines()[-1]
    figures = dict(kv.split("=", 1) for kv in last.split())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert figures["lost"] == "0" and figures["duplicated"] == "0" and figures["failed_by_kills"] == "0"
    assert figures["integrity"] == "ok" and figures["debris"] == "0" and figures["second_results"] == "0"
    assert int(figures["kills"]) == 20 and int(figures["kills_in_model"]) >= 10


@pytest.mark.parametrize("as_users", [False, True], ids=["one-user", "two-users"])
def test_a_hostile_producer_never_stops_the_daemon_or_reaches_outside(tmp_path, as_users: bool) -> None:
    import users

    if as_users and users.missing():
        pytest.skip(users.missing())
    work = tmp_path / "fuzz" if not as_users else None
    cmd = [sys.executable, str(REPO / "bench" / "producer_fuzz.py"), "--ops", "500",
           "--seed", os.environ.get("EDGED_TEST_SEED", "3"), *(["--users"] if as_users else ["--dir", str(work)])]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    last = res.stdout.strip().splitlines()[-1] if res.stdout.strip() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    figures = dict(kv.split("=", 1) for kv in last.split())
    for key in ("exits", "outside_reads", "wrong_results", "wrong_moves", "unaccounted"):
        assert figures[key] == "0", last
    assert int(figures["jobs"]) > 100
