"""Continuous batching in the worker (edged/stream.py) on the real fused engine and a real queue.

Jobs join the running rows as slots free and commit one by one; results are those of the same
jobs run through batches; a stop claims nothing more; an engine error hands the jobs in
flight back; a job that must run alone gets no company.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.engine.onnx import DecodeSettings, OnnxEngine
from edged.engine.session import SessionSettings
from edged.wiring import open_parts
from edged.worker import Worker
from model_cache import built_model

REPO = Path(__file__).resolve().parent.parent
TINY = f"random:{REPO / 'models' / 'tiny-gemma3-text.json'}"


@pytest.fixture(scope="module")
def tiny() -> Path:
    return built_model(TINY, weights="fp32")


class Rig:
    def __init__(self, settings, folder: Path, decoder: str = "auto", slots: int = 3) -> None:
        self.parts = open_parts(settings)
        self.parts.layout.ensure()
        self.intake = self.parts.intake(settings)
        self.engine = OnnxEngine(folder, SessionSettings(provider="cpu", threads=1),
                                 decode=DecodeSettings(decoder=decoder, slots=slots))
        self.reports: list = []
        self.worker = Worker(settings, self.parts.queue, self.parts.layout, self.parts.settler, self.engine,
                             on_batch=self.reports.append)

    def drop(self, rel: str, text: str) -> None:
        path = self.parts.layout.inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.intake.take([path])

    def sql(self, query: str, *args) -> list[tuple]:
        with self.parts.queue.engine.connect().execution_options(readonly=True) as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query, args).all()]

    def outputs(self) -> dict[str, str]:
        return dict(self.sql("SELECT j.source_path, r.output FROM jobs j JOIN results r ON r.job_id = j.id"))


def _watch_steps(r: Rig) -> list[int]:
    """The requests in flight at each engine step, recorded as the stream runs."""
    seen: list[int] = []
    step = r.engine.step

    def watch():
        seen.append(r.engine.in_flight())
        return step()
    r.engine.step = watch
    return seen


def _texts(n: int) -> list[str]:
    # Different lengths, so that answers end at different steps.
    return [" ".join(f"word{i}x{k}" for k in range(1 + (i * 7) % 23)) for i in range(n)]


@pytest.fixture
def rig(make_settings, tiny):
    def make(decoder: str = "auto", slots: int = 3, **extra) -> Rig:
        extra.setdefault("tasks", {"translate": {"max_new_tokens": 40}})
        return Rig(make_settings(**extra), tiny, decoder, slots)
    return make


def test_jobs_join_the_running_rows_and_commit_one_by_one(rig) -> None:
    r = rig(slots=3)
    assert r.worker.streams
    for i, text in enumerate(_texts(10)):
        r.drop(f"translate/de/t{i:02d}.txt", text)
    claims: list[tuple[int, int]] = []
    claim = r.parts.queue.claim

    def spy(limit, mates=()):
        got = claim(limit, mates)
        claims.append((len(got), len(mates)))
        return got
    r.parts.queue.claim = spy
    assert r.worker.run_stream() == 10
    assert r.sql("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 10)]
    # A job was claimed while others ran (it joined them), never more than the free slots.
    assert any(mates > 0 for n, mates in claims if n)
    assert all(n + mates <= 3 for n, mates in claims)
    # Each job committed as it ended: several reports, their jobs adding up.
    assert len(r.reports) > 1 and sum(rep.done for rep in r.reports) == 10
    # Jobs in flight together count as one batch should the process die.
    assert max(b for (b,) in r.sql("SELECT lease_batch FROM jobs")) > 1


def test_streamed_results_equal_those_of_batches(rig) -> None:
    texts = _texts(7)
    results = []
    for decoder in ("auto", "traced"):
        r = rig(decoder=decoder, slots=3)
        for i, text in enumerate(texts):
            r.drop(f"translate/de/t{i}.txt", text)
        if decoder == "auto":
            assert r.worker.run_stream() == 7
        else:
            assert not r.worker.streams
            while r.worker.run_batch():
                pass
        results.append(r.outputs())
    assert results[0] == results[1] and len(results[0]) == 7


def test_a_stop_claims_nothing_more_and_lets_the_rows_in_flight_finish(rig) -> None:
    r = rig(slots=2)
    for i, text in enumerate(_texts(6)):
        r.drop(f"translate/de/t{i}.txt", text)
    step = r.engine.step

    def stop_after_first_step():
        out = step()
        r.worker.control.stop.set()
        return out
    r.engine.step = stop_after_first_step
    handled = r.worker.run_stream()
    assert handled == 2
    assert r.sql("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status") == [("done", 2), ("queued", 4)]


def test_an_engine_error_hands_the_jobs_in_flight_back(rig) -> None:
    r = rig(slots=3)
    for i, text in enumerate(_texts(5)):
        r.drop(f"translate/de/t{i}.txt", text)
    step = r.engine.step
    calls = {"n": 0}

    def broken():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("device lost")
        return step()
    r.engine.step = broken
    r.worker.run_stream()
    rows = r.sql("SELECT status, solo, attempts FROM jobs ORDER BY id")
    assert [s for s, _, _ in rows].count("failed") == 0
    interrupted = [row for row in rows if row[0] == "queued" and row[1] == 1]
    assert len(interrupted) == 3 and all(a == 0 for _, _, a in interrupted)  # not charged
    assert r.engine.in_flight() == 0
    r.engine.step = step
    while r.worker.run_stream():
        pass
    assert r.sql("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 5)]


def test_a_job_that_must_run_alone_gets_no_company(rig) -> None:
    r = rig(slots=3)
    for i, text in enumerate(_texts(4)):
        r.drop(f"translate/de/t{i}.txt", text)
    (solo_id,) = r.sql("SELECT id FROM jobs ORDER BY id DESC LIMIT 1")[0]
    with r.parts.queue.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE jobs SET solo = 1 WHERE id = ?", (solo_id,))
    seen = _watch_steps(r)
    claims: list[tuple[list[int], str]] = []
    claim = r.parts.queue.claim

    def spy(limit, mates=()):
        got = claim(limit, mates)
        claims.append(([j.id for j in got], r.sql("SELECT status FROM jobs WHERE id = ?", solo_id)[0][0]))
        return got
    r.parts.queue.claim = spy
    assert r.worker.run_stream() == 4
    assert claims[0][0] == [solo_id]
    # Nothing joined it: the next claim came after it was done, and it counts as having run alone.
    assert seen and all(status == "done" for _, status in claims[1:])
    assert r.sql("SELECT lease_batch FROM jobs WHERE id = ?", solo_id) == [(1,)]
    assert r.sql("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 4)]


def test_a_lower_live_batch_size_holds_fewer_rows_than_the_slots(rig) -> None:
    r = rig(slots=4, model={"batch_size": 2})
    for i in range(6):
        r.drop(f"translate/de/s{i}.txt", f"short text {i}")
    seen = _watch_steps(r)
    assert r.worker.run_stream() == 6
    assert max(seen) == 2 and r.engine.free_slots() == 4
