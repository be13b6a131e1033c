#!/usr/bin/env python3
"""Intake of a backlog and the per-job overhead of the daemon core, with a zero-cost engine.

1. The real `edged run` on an inbox pre-filled with N small files: how fast they are queued
   (file_received lines per second, from the daemon's own log), its RSS when it is ready,
   when the backlog is queued and when it is all done, and whether the model starts before
   intake ends (first job_done before the last file_received).
2. Every job through the worker in-process with an engine that costs nothing: claim + read +
   commit + move + result file, per job.

Real SQLite file (WAL, synchronous=FULL), real files on this machine's disk.
Usage: python bench/intake.py [--files 100000] [--batch-size 8] [--dir DIR] [--skip-worker]
Ends with one key=value summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

import yaml

from edged.config import parse_config
from edged.engine.api import Generation, Request
from edged.logs import configure_logging
from edged.spool import SpoolWatcher
from edged.wiring import open_parts
from edged.worker import Worker

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


class ZeroEngine:
    """Costs nothing, so that what is measured is the core around the model."""

    name = "zero"
    provider = "cpu"

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return [Generation("ok", 1, 1) for _ in requests]

    def close(self) -> None:
        pass


def create(_settings: Any) -> ZeroEngine:
    """The daemon's plug-in entry (`model.engine: intake:create`)."""
    return ZeroEngine()


def _fill(inbox: Path, n: int) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (inbox / f"doc{i:06d}.txt").write_bytes(f"Document {i}: the quick brown fox.\n".encode())


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _ts(event: dict) -> float:
    return _iso(event["timestamp"])


def _iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def daemon_backlog(root: Path, n: int, batch_size: int) -> dict[str, float]:
    spool, state = root / "spool", root / "state"
    cfg = {"state_dir": str(state), "spool_dir": str(spool),
           "model": {"engine": "intake:create", "batch_size": batch_size, "options": {"name": "zero"}},
           "watch": {"stability_seconds": 0.5}, "spool": {"min_free_mb": 0},
           "log": {"format": "json", "level": "info"}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    _fill(spool / "inbox" / "translate", n)
    print(f"wrote {n} files in {time.perf_counter() - t0:.1f}s under {root}", flush=True)
    time.sleep(0.7)  # their ctime older than the quiet period, as in a real pre-filled inbox
    log_path = root / "daemon.log"
    log = open(log_path, "ab")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    spawned = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(root / "config.yaml")], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=root)
    db = state / "edged.db"
    rss: dict[str, float] = {}

    def count(sql: str) -> int:
        try:
            con = sqlite3.connect(db, timeout=30)
            try:
                return con.execute(sql).fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return -1

    deadline = time.monotonic() + 600 + n / 100
    while time.monotonic() < deadline and proc.poll() is None:
        if "ready" not in rss and b'"event": "ready"' in log_path.read_bytes()[-200_000:]:
            rss["ready"] = _rss_mb(proc.pid)
        if "queued" not in rss and count("SELECT COUNT(*) FROM files") >= n:
            rss["queued"] = _rss_mb(proc.pid)
        if count("SELECT COUNT(*) FROM files WHERE state = 'done'") >= n:
            rss["done"] = _rss_mb(proc.pid)
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    log.close()
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    done = [_ts(e) for e in events if e.get("event") == "job_done"]
    scan = next(_ts(e) for e in events if e.get("event") == "startup_scan")
    con = sqlite3.connect(db)
    # When each file was recorded (one timestamp per committed chunk), from the database itself.
    received = [_iso(t) for (t,) in con.execute("SELECT received_at FROM files")]
    con.close()
    if len(received) != n or len(done) != n:
        raise SystemExit(f"error: {len(received)} received, {len(done)} done, expected {n}; see {log_path}")
    span = max(received) - min(received)
    return {"intake_files_per_s": n / span if span else float("inf"), "intake_s": span,
            "backlog_queued_after_start_s": max(received) - spawned, "scan_listed_after_start_s": scan - spawned,
            "first_done_before_last_received_s": max(received) - min(done),
            "all_done_after_start_s": max(done) - spawned, "rss_ready_mb": rss.get("ready", float("nan")),
            "rss_queued_mb": rss.get("queued", float("nan")), "rss_done_mb": rss.get("done", float("nan"))}


def worker_overhead(root: Path, n: int, batch_size: int) -> dict[str, float]:
    configure_logging("info", "json", stream=open(os.devnull, "w"))
    quiet = 0.5
    settings = parse_config({
        "state_dir": str(root / "state"), "spool_dir": str(root / "spool"),
        "model": {"engine": "intake:create", "batch_size": batch_size, "options": {"name": "zero"}},
        "watch": {"stability_seconds": quiet}, "spool": {"min_free_mb": 0},
    }, root / "config.yaml")
    parts = open_parts(settings)
    parts.layout.ensure()
    _fill(parts.layout.inbox / "translate", n)
    time.sleep(quiet + 0.2)
    intake = parts.intake(settings)
    watcher = SpoolWatcher(parts.layout, quiet, intake.take)
    watcher.scan()
    intake.take(watcher.tracker.ready())
    worker = Worker(settings, parts.queue, parts.layout, parts.settler, ZeroEngine())
    per_job: list[float] = []
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        got = worker.run_batch()
        if not got:
            break
        per_job.extend([(time.perf_counter() - t0) * 1000 / got] * got)
    total_s = time.perf_counter() - t_all
    done = len(list((parts.layout.root / "done" / "translate").iterdir()))
    if done != n:
        raise SystemExit(f"error: {done} files in done/, expected {n}")
    return {"overhead_ms_p50": statistics.median(per_job), "overhead_ms_p95": statistics.quantiles(per_job, n=20)[-1],
            "jobs_per_s": len(per_job) / total_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--worker-files", type=int, default=10_000, help="files for the in-process overhead part")
    ap.add_argument("--skip-worker", action="store_true")
    ap.add_argument("--dir", help="work folder (default: a temp folder on this disk)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="edged-bench-"))
    (root / "daemon").mkdir(parents=True, exist_ok=True)
    d = daemon_backlog(root / "daemon", args.files, args.batch_size)
    print(f"daemon: {args.files} files queued in {d['intake_s']:.1f}s = {d['intake_files_per_s']:.0f} files/s;"
          f" first job done {d['first_done_before_last_received_s']:.1f}s before the last file was queued;"
          f" RSS {d['rss_ready_mb']:.0f} MB ready, {d['rss_queued_mb']:.0f} MB queued, {d['rss_done_mb']:.0f} MB done",
          flush=True)
    w: dict[str, float] = {}
    if not args.skip_worker:
        (root / "worker").mkdir(parents=True, exist_ok=True)
        w = worker_overhead(root / "worker", args.worker_files, args.batch_size)
        print(f"worker: per job (claim+read+commit+move+result file) p50 {w['overhead_ms_p50']:.2f} ms,"
              f" p95 {w['overhead_ms_p95']:.2f} ms, {w['jobs_per_s']:.0f} jobs/s")
    summary = {"files": args.files, "batch_size": args.batch_size, **{k: round(v, 2) for k, v in d.items()},
               **{k: round(v, 2) for k, v in w.items()}}
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
