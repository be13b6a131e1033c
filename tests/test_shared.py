"""Mode "shared": real daemons as separate processes, each with its own spool, on one real
PostgreSQL queue. No job runs twice to completion, every file gets exactly one result and is
settled by its own box, a text-only box never takes captions, and SIGKILLs at random moments
or a connection the server kills mid-batch lose nothing."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import DaemonProcess, base_config, png_bytes
from edged.cli import main


class Site:
    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        self.boxes: list[DaemonProcess] = []

    def box(self, name: str, **extra: Any) -> DaemonProcess:
        folder = self.root / name
        folder.mkdir()
        queue = {"backoff_seconds": 0, "backoff_max_seconds": 0, "recover_seconds": 0.5, "lease_seconds": 5,
                 **extra.pop("queue", {})}
        cfg = base_config(folder, database=self.url, shared=True, box_id=name, queue=queue,
                          schedule={"summary_seconds": 0.5}, **extra)
        d = DaemonProcess(folder, cfg)
        self.boxes.append(d)
        return d

    def close(self) -> None:
        for d in self.boxes:
            if d.proc and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()


@pytest.fixture
def site(tmp_path: Path, pg_url: str):
    s = Site(tmp_path, pg_url)
    yield s
    s.close()


def _drop(d: DaemonProcess, rel: str, data: bytes) -> None:
    path = d.spool / "inbox" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    tmp.rename(path)


def _done_files(d: DaemonProcess) -> set[str]:
    done = d.spool / "done"
    return {str(p.relative_to(done)) for p in done.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _ran(d: DaemonProcess) -> list[int]:
    return [e["job_id"] for e in d.events() if e.get("event") == "job_done" and e.get("status") == "done"]


def test_boxes_share_one_queue_and_each_settles_its_own_files(site: Site, capsys) -> None:
    text_only = site.box("text-box", model={"engine": "echo_engine:create", "batch_size": 2,
                                            "options": {"name": "echo-test", "sees_images": False,
                                                        "delay_s": 0.2}})
    seeing = site.box("vision-box", model={"engine": "echo_engine:create", "batch_size": 2,
                                           "options": {"name": "echo-test", "delay_s": 0.2}})
    text_only.start()
    seeing.start()
    mine: dict[str, set[str]] = {"text-box": set(), "vision-box": set()}
    for d in (text_only, seeing):
        name = d.config["box_id"]
        for n in range(6):
            _drop(d, f"translate/de/{name}-{n}.txt", f"Text {n} from {name}.".encode())
            mine[name].add(f"translate/de/{name}-{n}.txt")
        for n in range(3):
            _drop(d, f"caption/{name}-{n}.png", png_bytes(color=(n * 40, len(name) * 5 if n else 0, 200)))
            mine[name].add(f"caption/{name}-{n}.png")
    _drop(text_only, "translate/de/same.txt", b"The same words on both boxes.")  # one job, two files
    _drop(seeing, "translate/de/same.txt", b"The same words on both boxes.")
    mine["text-box"].add("translate/de/same.txt")
    mine["vision-box"].add("translate/de/same.txt")
    q = text_only.query
    # 12 translations, the shared one, and 6 captions (of 4 colours: the two boxes' first pictures
    # are the same, one job for both).
    text_only.wait_until(lambda: q("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 18,
                         what="every job done", timeout=90)
    for d in (text_only, seeing):
        d.wait_until(lambda d=d: _done_files(d) == mine[d.config["box_id"]], what="its own files settled",
                     timeout=30)
    assert q("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(18, 18)]
    assert q("SELECT COUNT(*) FROM job_attempts WHERE outcome = 'done'") == [(18,)]  # none ran twice
    captions = {r[0] for r in q("SELECT id FROM jobs WHERE task = 'caption'")}
    assert not captions & set(_ran(text_only)), "a text-only box took a caption"
    assert set(_ran(seeing)) & {r[0] for r in q("SELECT id FROM jobs WHERE task = 'translate'")}, \
        "both boxes should have run translations"
    assert set(_ran(text_only)), "the text-only box should have run something"
    assert not q("SELECT COUNT(*) FROM blobs WHERE sha256 IN (SELECT sha256 FROM jobs WHERE status = 'done')")[0][0]
    assert main(["status", "-c", str(seeing.config_path), "--json"]) == 0
    site_info = json.loads(capsys.readouterr().out)["site"]
    by_box = {b["box_id"]: b for b in site_info["boxes"]}
    assert by_box["text-box"]["tasks"] == ["translate"] and by_box["vision-box"]["live"]
    assert site_info["queued_no_live_box_can_run"] == []
    for d in (text_only, seeing):
        assert d.stop() == 0


def test_a_caption_no_live_box_can_run_is_shown_stranded(site: Site, capsys) -> None:
    only = site.box("text-box", model={"engine": "echo_engine:create",
                                       "options": {"name": "echo-test", "sees_images": False}})
    only.start()
    _drop(only, "caption/a.png", png_bytes())
    _drop(only, "translate/de/a.txt", b"Hello.")
    only.wait_until(lambda: only.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 1,
                    what="the translation done")
    time.sleep(1.5)  # several claims later, the caption is still waiting
    assert only.query("SELECT status FROM jobs WHERE task = 'caption'") == [("queued",)]
    assert main(["status", "-c", str(only.config_path)]) == 0
    assert "STRANDED: 1 queued caption job(s) for model echo-test: no live box runs them" in capsys.readouterr().out
    assert only.stop() == 0


@pytest.mark.timeout(400)
def test_sigkill_at_random_moments_on_a_shared_queue_loses_nothing(site: Site) -> None:
    rng = random.Random(7)
    boxes = [site.box(f"box{i}", model={"engine": "echo_engine:create", "batch_size": 3,
                                        "options": {"name": "echo-test", "delay_s": 0.15}}) for i in range(3)]
    for d in boxes:
        d.start()
    expected: dict[str, set[str]] = {d.config["box_id"]: set() for d in boxes}
    for n in range(60):
        d = boxes[n % 3]
        rel = f"translate/fr/doc{n}.txt"
        _drop(d, rel, f"Document number {n}.".encode() if n % 10 else b"Shared text.")
        expected[d.config["box_id"]].add(rel)
    kills = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and kills < 12:
        time.sleep(rng.uniform(0.2, 1.2))
        d = rng.choice(boxes)
        if d.proc and d.proc.poll() is None:
            d.kill(signal.SIGKILL)
            kills += 1
            d.start(wait_ready=False)
    q = boxes[0].query
    boxes[0].wait_until(lambda: q("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0] == 0
                        and q("SELECT COUNT(*) FROM files WHERE state = 'pending'")[0][0] == 0,
                        what="everything finished and settled", timeout=120, stop_on_exit=False)
    jobs = q("SELECT COUNT(*) FROM jobs")[0][0]
    assert kills == 12
    # Some kills landed mid-batch (their attempts ended by another box or the next start).
    assert q("SELECT COUNT(*) FROM job_attempts WHERE outcome = 'interrupted'")[0][0] > 0
    assert q("SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", jobs)]  # none failed by a kill
    assert q("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(jobs, jobs)]
    assert q("SELECT COUNT(*) FROM job_attempts WHERE outcome = 'done'") == [(jobs,)]
    for d in boxes:
        assert _done_files(d) == expected[d.config["box_id"]], d.config["box_id"]
        assert not any((d.spool / "inbox").rglob("*.txt"))


def test_a_connection_killed_mid_batch_is_recovered_by_the_box(site: Site, pg_server) -> None:
    d = site.box("box-a", model={"engine": "echo_engine:create", "batch_size": 4,
                                 "options": {"name": "echo-test", "delay_s": 1.5}})
    d.start()
    for n in range(8):
        _drop(d, f"translate/de/t{n}.txt", f"Text {n}.".encode())
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status = 'running'")[0][0] > 0,
                 what="a batch in flight")
    pg_server.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'edged box-a'")
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 8,
                 what="every job done after the connection was killed", timeout=60)
    assert d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(8, 8)]
    assert d.proc is not None and d.proc.poll() is None
    assert d.stop() == 0


def test_a_slow_batch_keeps_its_jobs_while_another_box_sweeps_for_expired_leases(site: Site) -> None:
    slow = site.box("slow-box", model={"engine": "echo_engine:create", "batch_size": 4,
                                       "options": {"name": "echo-test", "delay_s": 8, "heartbeat": True}},
                    queue={"lease_seconds": 3})
    sweeper = site.box("sweeper", model={"engine": "echo_engine:create", "batch_size": 4,
                                         "options": {"name": "echo-test"}},
                       queue={"lease_seconds": 3})
    slow.start()
    for n in range(4):
        _drop(slow, f"translate/de/t{n}.txt", f"Text {n}.".encode())
    slow.wait_until(lambda: slow.query("SELECT COUNT(*) FROM jobs WHERE status = 'running'")[0][0] == 4,
                    what="the slow batch claimed")
    sweeper.start()  # it looks for expired leases every half second, for the whole slow batch
    slow.wait_until(lambda: slow.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0] == 4,
                    what="the slow batch done", timeout=60)
    assert slow.query("SELECT outcome, COUNT(*) FROM job_attempts GROUP BY outcome") == [("done", 4)]
    assert sorted(_ran(slow)) == [1, 2, 3, 4] and _ran(sweeper) == []


def test_a_box_cut_off_from_the_site_database_waits_and_loses_nothing(tmp_path: Path) -> None:
    from pgserver import PgServer, bindir

    found = bindir()
    if found is None:
        pytest.skip("no PostgreSQL server binaries")
    server = PgServer(found).start()
    site = Site(tmp_path, server.url())
    try:
        d = site.box("box-a", postgres={"connect_timeout_seconds": 2})
        d.start()
        for n in range(3):
            _drop(d, f"translate/de/before{n}.txt", f"Before {n}.".encode())
        d.wait_until(lambda: len(_done_files(d)) == 3, what="the first files done")
        server.stop(remove=False)  # the site's database goes away
        for n in range(3):
            _drop(d, f"translate/de/during{n}.txt", f"During {n}.".encode())
        d.wait_until(lambda: any(e.get("event") in ("intake_paused", "store_unavailable") for e in d.events()),
                     what="the box noticing")
        time.sleep(2)
        assert d.proc is not None and d.proc.poll() is None  # waiting, not dead
        assert sorted(p.name for p in (d.spool / "inbox" / "translate" / "de").iterdir()) == [
            "during0.txt", "during1.txt", "during2.txt"]  # they wait in the inbox
        server.start()
        d.wait_until(lambda: len(_done_files(d)) == 6, what="everything done once the database is back", timeout=90)
        assert d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results") == [(6, 6)]
        assert d.stop() == 0
    finally:
        site.close()
        server.stop()
