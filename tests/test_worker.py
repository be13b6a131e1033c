"""The worker in-process with the echo engine double: batching, fault isolation, failures."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from echo_engine import EchoEngine

from conftest import png_bytes
from edged.commands import open_parts
from edged.engine.api import Generation
from edged.worker import Worker


class Rig:
    def __init__(self, settings, engine: EchoEngine) -> None:
        self.settings = settings
        self.parts = open_parts(settings)
        self.parts.layout.ensure()
        self.intake = self.parts.intake(settings)
        self.engine = engine
        self.reports = []
        self.worker = Worker(settings, self.parts.queue, self.parts.layout, self.parts.settler, engine,
                             on_batch=self.reports.append)

    def drop(self, rel: str, data: bytes) -> None:
        path = self.parts.layout.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.intake.take([path])

    def drain(self) -> None:
        while self.worker.run_batch():
            pass

    def status(self, rel: str) -> tuple:
        with self.parts.queue.engine.connect().execution_options(readonly=True) as conn:
            return tuple(conn.exec_driver_sql(
                "SELECT status, attempts, error FROM jobs WHERE source_path = ?", (rel,)).one())

    @property
    def spool(self) -> Path:
        return self.parts.layout.root


@pytest.fixture
def rig(make_settings):
    def make(engine_options: dict | None = None, **extra) -> Rig:
        return Rig(make_settings(**extra), EchoEngine(engine_options or {}))
    return make


def test_batches_one_task_at_a_time_up_to_batch_size(rig) -> None:
    r = rig()
    for i in range(5):
        r.drop(f"translate/t{i}.txt", f"text {i}".encode())
    r.drop("caption/a.png", png_bytes())
    r.drain()
    assert r.engine.calls == [4, 1, 1]
    assert [(rep.task, rep.done) for rep in r.reports] == [("translate", 4), ("translate", 1), ("caption", 1)]
    assert sorted(p.name for p in (r.spool / "done" / "translate").iterdir()) == [f"t{i}.txt" for i in range(5)]
    out = (r.spool / "out" / "caption" / "a.png.caption.txt").read_text()
    assert out.startswith("echo ") and "images=[32x24]" in out


def test_a_failing_batch_is_split_so_good_jobs_still_finish(rig) -> None:
    r = rig({"batch_fail": True})
    for i in range(3):
        r.drop(f"translate/t{i}.txt", f"text {i}".encode())
    r.drain()
    assert r.engine.calls == [3, 1, 1, 1]
    assert all(r.status(f"translate/t{i}.txt")[0] == "done" for i in range(3))


def test_engine_error_fails_that_job_only_and_retries_it(rig) -> None:
    r = rig({"fail_on": "POISON"}, queue={"max_attempts": 2, "backoff_seconds": 0})
    r.drop("translate/good.txt", b"fine")
    r.drop("translate/bad.txt", b"POISON pill")
    r.worker.run_batch()
    assert r.status("translate/good.txt")[0] == "done"
    status, attempts, error = r.status("translate/bad.txt")
    assert (status, attempts) == ("queued", 1) and "POISON" in error
    assert (r.spool / "inbox" / "translate" / "bad.txt").exists()  # still waiting for its retry
    r.drain()
    assert r.status("translate/bad.txt")[:2] == ("failed", 2)
    info = json.loads((r.spool / "failed" / "translate" / "bad.txt.error.json").read_text())
    assert info["attempts"] == 2 and "engine error" in info["error"]


def test_bad_input_fails_at_once_without_retries(rig) -> None:
    r = rig()
    r.drop("ocr/broken.png", png_bytes((64, 64))[:50])
    r.drop("ocr/empty.png", b"")
    r.drop("ocr/ok.png", png_bytes())
    r.drain()
    assert r.status("ocr/broken.png")[:2] == ("failed", 1)
    assert r.status("ocr/empty.png") == ("failed", 1, "empty file (0 bytes)")
    assert r.status("ocr/ok.png")[0] == "done"
    assert r.engine.calls == [1]  # bad inputs never reached the model
    assert sorted(p.name for p in (r.spool / "failed" / "ocr").iterdir()) == [
        "broken.png", "broken.png.error.json", "empty.png", "empty.png.error.json"]


def test_input_removed_before_it_ran(rig) -> None:
    r = rig()
    r.drop("translate/gone.txt", b"x")
    (r.spool / "inbox" / "translate" / "gone.txt").unlink()
    r.drain()
    status, _, error = r.status("translate/gone.txt")
    assert status == "failed" and "vanished" in error


def test_too_large_input(rig) -> None:
    r = rig(tasks={"translate": {"max_input_mb": 0.001}})
    r.drop("translate/big.txt", b"x" * 2000)
    r.drain()
    status, _, error = r.status("translate/big.txt")
    assert status == "failed" and "larger than the limit" in error


def test_interrupted_batch_is_released_not_counted(rig) -> None:
    r = rig()
    r.drop("translate/a.txt", b"x")

    def interrupted(_requests) -> list[Generation]:
        raise KeyboardInterrupt

    r.engine.generate = interrupted
    with pytest.raises(KeyboardInterrupt):
        r.worker.run(threading.Event(), threading.Event())
    assert r.status("translate/a.txt") == ("queued", 0, None)
