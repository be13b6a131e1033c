#!/usr/bin/env python3
"""Intake rate and per-job overhead of the daemon core, with a zero-cost engine.

1. A pre-filled inbox of N files -> queued rows: the start-up scan, the stability check,
   hashing and enqueue (what `edged run` does before the model matters).
2. Every job through the worker with an engine that costs nothing: claim + read + commit +
   move + result file, per job.

Real SQLite file (WAL, synchronous=FULL), real files on this machine's disk.
Usage: python bench/intake.py [--files 10000] [--batch-size 8] [--dir DIR]
Ends with one key=value summary line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from edged.wiring import open_parts
from edged.config import parse_config
from edged.engine.api import Generation, Request
from edged.logs import configure_logging
from edged.spool import SpoolWatcher
from edged.worker import Worker


class ZeroEngine:
    """Costs nothing, so that what is measured is the core around the model."""

    name = "zero"
    provider = "cpu"

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        return [Generation("ok", 1, 1) for _ in requests]

    def close(self) -> None:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dir", help="work folder (default: a temp folder on this disk)")
    args = ap.parse_args()
    # Info-level JSON logging as the daemon does it (one line per file), to /dev/null.
    configure_logging("info", "json", stream=open(os.devnull, "w"))

    root = Path(args.dir or tempfile.mkdtemp(prefix="edged-bench-"))
    quiet = 0.5
    settings = parse_config({
        "state_dir": str(root / "state"), "spool_dir": str(root / "spool"),
        "model": {"engine": "bench:zero", "batch_size": args.batch_size, "options": {"name": "zero"}},
        "watch": {"stability_seconds": quiet},
    }, root / "config.yaml")
    parts = open_parts(settings)
    parts.layout.ensure()
    inbox = parts.layout.inbox / "translate"
    t0 = time.perf_counter()
    for i in range(args.files):
        (inbox / f"doc{i:06d}.txt").write_bytes(f"Document {i}: the quick brown fox.\n".encode())
    print(f"wrote {args.files} files in {time.perf_counter() - t0:.1f}s under {root}")
    time.sleep(quiet + 0.2)  # so their ctime is older than the quiet period, as in a real pre-filled inbox

    intake = parts.intake(settings)
    watcher = SpoolWatcher(parts.layout, quiet, intake.take)
    t0 = time.perf_counter()
    intake.load_known()
    watcher.scan()
    intake.take(watcher.tracker.ready())
    intake_s = time.perf_counter() - t0
    with parts.queue.engine.connect().execution_options(readonly=True) as conn:
        queued = conn.exec_driver_sql("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").scalar_one()
    if queued != args.files:
        print(f"error: {queued} jobs queued, expected {args.files}", file=sys.stderr)
        return 1
    print(f"intake: {queued} queued rows in {intake_s:.2f}s = {queued / intake_s:.0f} files/s")

    worker = Worker(settings, parts.queue, parts.layout, parts.settler, ZeroEngine())
    per_job: list[float] = []
    t_all = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        n = worker.run_batch()
        if not n:
            break
        per_job.extend([(time.perf_counter() - t0) * 1000 / n] * n)
    total_s = time.perf_counter() - t_all
    done = len(list((parts.layout.root / "done" / "translate").iterdir()))
    if done != args.files:
        print(f"error: {done} files in done/, expected {args.files}", file=sys.stderr)
        return 1
    p50 = statistics.median(per_job)
    p95 = statistics.quantiles(per_job, n=20)[-1]
    print(f"worker: {len(per_job)} jobs in {total_s:.2f}s; per job (claim+read+commit+move+result file) "
          f"p50 {p50:.2f} ms, p95 {p95:.2f} ms")
    print(f"files={args.files} batch_size={args.batch_size} intake_s={intake_s:.2f} "
          f"intake_files_per_s={queued / intake_s:.0f} overhead_ms_p50={p50:.2f} overhead_ms_p95={p95:.2f} "
          f"jobs_per_s={len(per_job) / total_s:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
