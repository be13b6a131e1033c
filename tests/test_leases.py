"""Lease renewal on both backends: a slow batch keeps its jobs, a stalled worker loses them, and a
late completion after the lease moved on is refused and stores no second result."""

from __future__ import annotations

import threading
from datetime import timedelta

from echo_engine import EchoEngine

from edged.leases import LeaseKeeper
from edged.store import NewFile, Queue, ResultData, open_queue
from edged.store.db import read, run
from edged.timeutil import utcnow
from edged.wiring import open_parts
from edged.worker import Worker


class Clock:
    def __init__(self) -> None:
        self.t = utcnow()

    def __call__(self):  # datetime
        return self.t

    def mono(self) -> float:
        return self.t.timestamp()

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def _results(q: Queue) -> list[tuple]:
    with read(q.engine) as conn:
        return [tuple(r) for r in run(conn, "SELECT job_id, output FROM results ORDER BY job_id").all()]


def test_renewal_keeps_a_slow_batch_and_a_stall_loses_it(db_url: str) -> None:
    clock = Clock()
    q = open_queue(db_url, owner="box-a:1", lease_seconds=30, backoff_seconds=0, clock=clock)
    other = Queue(q.engine, owner="box-b:1", lease_seconds=30, backoff_seconds=0, clock=clock)
    q.enqueue([NewFile("caption", f"caption/{n}", f"s{n}", size_bytes=1) for n in range(3)], "m")
    jobs = q.claim(3)
    keeper = LeaseKeeper(q, clock=clock.mono)
    keeper.hold([j.id for j in jobs])
    for _ in range(6):  # a batch running for three leases' time, renewed from the worker's tick
        clock.advance(15)
        keeper.tick()
        assert other.recover() == (0, 0)
    keeper.drop([jobs[2].id])  # finished meanwhile: no longer renewed, never recovered (it is done)
    assert q.complete([(jobs[2], ResultData("done early"))]) == [True]
    # Now the worker stalls past its lease: another box's recovery hands the jobs on.
    clock.advance(31)
    assert other.recover() == (2, 0)
    keeper.tick()
    assert keeper.lost == {jobs[0].id, jobs[1].id}
    taken = other.claim(3)  # they run alone, one at a time (their batch died)
    assert [j.id for j in taken] == [jobs[0].id]
    # The stalled worker's late results are refused, and nothing of them is stored.
    assert q.complete([(jobs[0], ResultData("late")), (jobs[1], ResultData("late"))]) == [False, False]
    assert other.complete([(taken[0], ResultData("by b"))]) == [True]
    assert _results(q) == [(jobs[0].id, "by b"), (jobs[2].id, "done early")]


def test_renewal_is_only_of_our_own_running_jobs(db_url: str) -> None:
    q = open_queue(db_url, owner="box-a:1")
    other = Queue(q.engine, owner="box-b:1")
    q.enqueue([NewFile("ocr", "ocr/a", "s1", size_bytes=1), NewFile("ocr", "ocr/b", "s2", size_bytes=1)], "m")
    (a,) = q.claim(1)
    (b,) = other.claim(1)
    assert q.renew([a.id, b.id]) == [a.id]
    assert q.complete([(a, ResultData("x"))]) == [True]
    assert q.renew([a.id]) == []  # done: nothing to renew


def test_the_worker_renews_its_leases_through_a_long_engine_call(make_settings) -> None:
    """A real worker whose batch takes four times its lease, while another worker sweeps for expired
    leases: the batch keeps its jobs and stores its results."""
    settings = make_settings(queue={"lease_seconds": 3, "backoff_seconds": 0})
    parts = open_parts(settings)
    parts.layout.ensure()
    for n in range(2):
        (parts.layout.inbox / "translate" / f"t{n}.txt").write_text(f"text {n}")
    parts.intake(settings).load_known()
    intake = parts.intake(settings)
    intake.take([parts.layout.inbox / "translate" / f"t{n}.txt" for n in range(2)])
    engine = EchoEngine({"delay_s": 12, "heartbeat": True})
    worker = Worker(settings, parts.queue, parts.layout, parts.settler, engine)
    worker.tick = lambda: None
    engine.heartbeat = worker.leases.tick  # what Worker.run wires for an engine with a heartbeat
    sweeper = Queue(parts.queue.engine, owner="sweeper:1", lease_seconds=3)
    swept: list[tuple[int, int]] = []
    done = threading.Event()

    def sweep() -> None:
        while not done.wait(0.5):
            swept.append(tuple(sweeper.recover()))

    thread = threading.Thread(target=sweep)
    thread.start()
    try:
        assert worker.run_batch() == 2
    finally:
        done.set()
        thread.join()
    assert swept and all(s == (0, 0) for s in swept)
    assert len(_results(parts.queue)) == 2
    assert worker.leases.held == set()
