#!/usr/bin/env python3
"""Fleet: N boxes (processes) claiming from one PostgreSQL queue, and the shipper's rate.

A throw-away PostgreSQL server (Debian's binaries, as the tests start it: tests/pgserver.py)
on a Unix socket. For each N, a fresh schema holds `--jobs` queued jobs; N processes, each a
box with its own owner, claim `--batch` jobs at a time and complete them at once (a zero-cost
engine: what is measured is the queue alone, the part a faster engine cannot hide). Per job:
the time its box spent in claim + complete divided by the jobs of that claim (overhead_ms);
per run: jobs finished / wall time from the common start to the last box done (jobs_per_s).
The same loop on a SQLite file at N = 1 is the single-box baseline. Then the shipper (mode
"ship"): a SQLite box with `--ship-jobs` finished jobs ships its outbox into the server's
fleet tables; ship_rows_per_s counts the table rows stored centrally.

On one machine the N boxes share its cores with each other and with the server, unlike real
boxes: read the N > 1 figures as a floor.

`--engine-ms` gives each batch a model time spent off the machine's cores (a sleep), as a box
whose model runs on its own GPU: then the queue's cost is what stands between batches, and the
boxes' claims overlap as real boxes' do.

Usage: python bench/fleet.py [--jobs 2000] [--batch 1] [--boxes 1,2,4] [--ship-jobs 3000] [--engine-ms 0]
Ends with: boxes=1,2,4 jobs_per_s=…,…,… overhead_ms_p50=…,…,… sqlite_jobs_per_s=…
           sqlite_overhead_ms_p50=… ship_rows_per_s=…
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from edged.shipper import Shipper  # noqa: E402
from edged.store import NewFile, PgOptions, Queue, ResultData, open_engine, open_queue  # noqa: E402
from pgserver import PgServer, bindir  # noqa: E402  (the tests' own server helper)


def _box(url: str, name: str, batch: int, engine_ms: float, start, out) -> None:  # multiprocessing objects
    q = Queue(open_engine(url), owner=f"{name}:1", box_id=name)
    q.claim(0)  # connect and warm up before the clock starts
    start.wait(timeout=120)
    spent: list[float] = []
    done = 0
    while True:
        t0 = time.perf_counter()
        jobs = q.claim(batch)
        if not jobs:
            break
        t1 = time.perf_counter()
        if engine_ms:
            time.sleep(engine_ms / 1000)  # a model that waits on its own device, not on these cores
        t2 = time.perf_counter()
        q.complete([(j, ResultData("ok", 1, 1, 0)) for j in jobs])
        spent.append(((t1 - t0) + (time.perf_counter() - t2)) * 1000 / len(jobs))
        done += len(jobs)
    out.put((done, time.perf_counter(), spent))


def _fill(url: str, jobs: int) -> None:
    q = open_queue(url)
    for first in range(0, jobs, 500):
        q.enqueue([NewFile("translate", f"translate/{i}.txt", f"sha{i}", size_bytes=10)
                   for i in range(first, min(first + 500, jobs))], "m")
    q.engine.dispose()


def run_boxes(url: str, boxes: int, jobs: int, batch: int, engine_ms: float = 0.0) -> tuple[float, float]:
    """(jobs per second, p50 per-job overhead in ms) of `boxes` processes draining `jobs`."""
    _fill(url, jobs)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(boxes + 1), ctx.Queue()
    procs = [ctx.Process(target=_box, args=(url, f"box{i}", batch, engine_ms, start, out)) for i in range(boxes)]
    for p in procs:
        p.start()
    start.wait(timeout=120)
    t0 = time.perf_counter()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
    total = sum(g[0] for g in got)
    if total != jobs:
        raise SystemExit(f"{boxes} boxes finished {total} jobs of {jobs}: a job was lost or taken twice")
    wall = max(g[1] for g in got) - t0
    spent = [ms for g in got for ms in g[2]]
    return jobs / wall, statistics.median(spent)


def ship_rate(url: str, work_dir: Path, jobs: int) -> float:
    q = open_queue(f"sqlite:///{work_dir / 'ship.db'}", box_id="shipper")
    shipper = Shipper(q.engine, url, "shipper", PgOptions(), batch_rows=1000)
    shipper.enable()
    for first in range(0, jobs, 500):
        q.enqueue([NewFile("ocr", f"ocr/{i}.png", f"s{i}", size_bytes=1) for i in range(first, min(first + 500, jobs))],
                  "m")
        claimed = q.claim(500)
        q.complete([(j, ResultData("text", 1, 1, 0)) for j in claimed])
    t0 = time.perf_counter()
    rows = 0
    while True:
        r = shipper.round(max_seconds=600)
        if r.error:
            raise SystemExit(f"shipping failed: {r.error}")
        rows += r.rows
        if r.backlog == 0:
            break
    wall = time.perf_counter() - t0
    shipper.close()
    return rows / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1, help="jobs per claim (1: every job pays a claim)")
    ap.add_argument("--boxes", default="1,2,4")
    ap.add_argument("--ship-jobs", type=int, default=3000)
    ap.add_argument("--engine-ms", type=float, default=0.0,
                    help="per batch, a model's time spent off these cores (a sleep: each real box has its own"
                         " device); 0: the zero-cost engine")
    args = ap.parse_args()
    found = bindir()
    if found is None:
        raise SystemExit("no PostgreSQL server binaries (Debian: apt-get install postgresql)")
    server = PgServer(found).start()
    rates, overheads = [], []
    try:
        counts = [int(n) for n in args.boxes.split(",")]
        for n in counts:
            rate, overhead = run_boxes(server.url(server.new_schema()), n, args.jobs, args.batch, args.engine_ms)
            rates.append(rate)
            overheads.append(overhead)
            print(f"postgresql boxes={n}: {rate:.0f} jobs/s, per-job overhead p50 {overhead:.2f} ms", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            s_rate, s_overhead = run_boxes(f"sqlite:///{Path(tmp) / 'q.db'}", 1, args.jobs, args.batch, args.engine_ms)
            print(f"sqlite boxes=1: {s_rate:.0f} jobs/s, per-job overhead p50 {s_overhead:.2f} ms", flush=True)
            ship = ship_rate(server.url(server.new_schema()), Path(tmp), args.ship_jobs)
            print(f"shipper: {ship:.0f} rows/s", flush=True)
    finally:
        server.stop()
    print(f"boxes={args.boxes} jobs_per_s={','.join(f'{r:.0f}' for r in rates)}"
          f" overhead_ms_p50={','.join(f'{o:.2f}' for o in overheads)} sqlite_jobs_per_s={s_rate:.0f}"
          f" sqlite_overhead_ms_p50={s_overhead:.2f} ship_rows_per_s={ship:.0f}")


if __name__ == "__main__":
    main()
