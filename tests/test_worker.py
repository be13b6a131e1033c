"""The worker in-process with the echo engine double: batching, fault isolation, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from echo_engine import EchoEngine

from conftest import png_bytes
from edged.engine.api import Generation
from edged.wiring import open_parts
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
        r.worker.run()
    assert r.status("translate/a.txt") == ("queued", 0, None)


def _long_text(paragraphs: int = 500) -> str:
    words = ["Grüße", "naïve", "東京", "façade", "Ωmega", "plain", "words", "here", "😀", "end"]
    out = []
    for i in range(paragraphs):
        sentences = [" ".join(words[(i + k + j) % len(words)] for j in range(6 + (i + k) % 9)) + "."
                     for k in range(5 + i % 7)]
        out.append(f"{i}: " + " ".join(sentences))
    return "\r\n\r\n".join(out) + "\r\n"


def test_a_long_text_is_chunked_within_budget_and_reassembled_byte_for_byte(rig) -> None:
    r = rig({"mode": "echo", "context_length": 600},
            tasks={"translate": {"prompt": "{text}", "chunk_tokens": 150}}, model={"batch_size": 8})
    text = _long_text()
    data = text.encode("utf-8")
    assert len(data) > 200_000
    r.drop("translate/fr/long.txt", data)
    r.drain()
    assert r.status("translate/fr/long.txt")[0] == "done"
    out = (r.spool / "out" / "translate" / "fr" / "long.txt.translate.txt").read_bytes()
    assert out == data  # the echo engine returns each chunk: reassembly is exact, CRLF and all
    count = r.engine.info().count_tokens
    assert len(r.engine.prompts) > 100 and all(count(p) <= 150 for p in r.engine.prompts)
    assert max(r.engine.calls) == 8  # chunks of one job share engine batches
    (report,) = r.reports
    assert report.requests == len(r.engine.prompts) and report.done == 1


def test_looping_or_empty_output_fails_the_job_instead_of_storing_it(rig) -> None:
    r = rig({"loop_on": "LOOP", "empty_on": "EMPTY"})
    r.drop("translate/a.txt", b"LOOP me")
    r.drop("translate/b.txt", b"EMPTY me")
    r.drop("translate/c.txt", b"fine")
    r.drain()
    looped = "the model's output fell into a repetition loop; nothing was stored"
    assert r.status("translate/a.txt")[::2] == ("failed", looped)
    assert r.status("translate/b.txt")[::2] == ("failed", "the model produced no output")
    assert r.status("translate/c.txt")[0] == "done"


def test_ocr_result_spawns_a_linked_translate_job(rig) -> None:
    r = rig({"mode": "echo"}, tasks={"ocr": {"translate_to": "fr", "prompt": "TEXT OF IMAGE"},
                                     "translate": {"prompt": "to {language}: {text}"}})
    r.drop("ocr/scan.png", png_bytes())
    r.drain()
    with r.parts.queue.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT j.id, j.task, j.status, j.parent_id, j.params, j.source_path, r.output FROM jobs j"
            " JOIN results r ON r.job_id = j.id ORDER BY j.id").all()
    (ocr_id, _, ocr_status, no_parent, _, _, ocr_out), (_, task, status, parent, params, source, out) = rows
    assert (ocr_status, no_parent, ocr_out) == ("done", None, "TEXT OF IMAGE")
    assert (task, status, parent, json.loads(params), source) == ("translate", "done", ocr_id,
                                                                  {"target_language": "fr"}, "ocr/scan.png")
    assert out == "to French: TEXT OF IMAGE"
    assert (r.spool / "out" / "ocr" / "scan.png.translate.txt").read_text() == out
    # The same picture again is a duplicate of the OCR job: no second translation.
    r.drop("ocr/again.png", png_bytes())
    r.drain()
    with r.parts.queue.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT COUNT(*) FROM jobs WHERE task = 'translate'").scalar() == 1
