"""Jobs per hour: a queue of mixed-length translation jobs through `edged run`, against the same
prompts sent to `llama-server -np 8 -cb` (continuous batching) by a client keeping 8 in flight.

edged's side is the whole product: files dropped in the inbox, intake, SQLite, the worker, the
engine, results written and files moved; the clock runs from the daemon's `ready` to the last
`job_done`. llama-server's side is only HTTP and generation; its clock runs from the server
answering /health to the last answer. The prompts are edged's own (the translate task's
few-shot completions, the same token budgets and stop strings), greedy on both sides.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from edged.config import Settings
from edged.engine.api import model_info
from edged.tasks import translate

REPO = Path(__file__).resolve().parent.parent
LANGS = ("fr", "de", "es", "it")


def texts(n: int, seed: int = 11) -> list[tuple[str, str]]:
    """(language, text) pairs of 1 to 12 sentences: the queue's mix of short and long jobs."""
    sys.path.insert(0, str(REPO / "bench"))
    from translate import make_text

    rng = random.Random(seed)
    pool = [s.strip() + "." for s in make_text(64, 64, seed).replace("\n", " ").split(".") if s.strip()]
    out = []
    for i in range(n):
        k = rng.choice((1, 1, 2, 3, 4, 6, 8, 12))
        start = rng.randrange(0, len(pool) - k)
        out.append((LANGS[i % len(LANGS)], " ".join(pool[start:start + k])))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def edged_run(model: Path, jobs: list[tuple[str, str]], threads: int, decoder: str = "auto") -> float:
    """Seconds from `ready` to the last job done, through the real daemon."""
    root = Path(tempfile.mkdtemp(prefix="edged-jobs-"))
    spool = root / "spool"
    cfg = {"state_dir": str(root / "state"), "spool_dir": str(spool),
           "model": {"path": str(model), "batch_size": 8, "threads": threads, "provider": "cpu", "decoder": decoder},
           "watch": {"stability_seconds": 0.2}, "spool": {"min_free_mb": 0}, "log": {"format": "json"}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    for i, (lang, text) in enumerate(jobs):
        folder = spool / "inbox" / "translate" / lang
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"job{i:04d}.txt").write_text(text + "\n")
    time.sleep(0.5)
    log = root / "daemon.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(root / "config.yaml")],
                                stdout=fh, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        db = root / "state" / "edged.db"
        deadline = time.monotonic() + 3600
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(1.0)
                try:
                    con = sqlite3.connect(db, timeout=30)
                    finished = con.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')").fetchone()[0]
                    con.close()
                except sqlite3.Error:
                    continue
                if finished >= len(jobs):
                    break
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    events = _events(log)
    ready = next(_ts(e) for e in events if e.get("event") == "ready")
    # A job the base model answers with a loop fails (its file goes to failed/): finished all the same.
    done = [_ts(e) for e in events if e.get("event") in ("job_done", "job_failed")]
    if len(done) < len(jobs):
        raise SystemExit(f"edged finished {len(done)} of {len(jobs)} jobs; see {log}")
    failed = sum(1 for e in events if e.get("event") == "job_failed")
    tokens = sum(int(e.get("output_tokens", 0)) for e in events if e.get("event") == "job_done")
    print(f"edged: {len(jobs) - failed} done, {failed} failed (the model looped); {tokens} tokens in done jobs, "
          f"{tokens / (max(done) - ready):.1f} tok/s", flush=True)
    return max(done) - ready


def prompts(model: Path, jobs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """edged's own requests for these jobs, as llama-server /completion bodies."""
    from edged.engine.onnx import OnnxEngine
    from edged.engine.session import SessionSettings

    engine = OnnxEngine(model, SessionSettings(provider="cpu", threads=1))
    info, settings = model_info(engine), Settings()
    bodies = []
    for lang, text in jobs:
        prepared = translate.prepare({"target_language": lang}, (text + "\n").encode(), settings, info)
        for req in prepared.requests:
            ids = engine.prompt_ids(req, [])
            bodies.append({"prompt": ids, "n_predict": req.max_new_tokens or settings.model.max_new_tokens,
                           "stop": list(req.stop), "temperature": 0.0, "cache_prompt": False})
    engine.close()
    return bodies


def server_run(bins: Path, gguf: Path, bodies: list[dict[str, Any]], threads: int,
               load_mode: Sequence[str] = ()) -> Optional[float]:
    tool = bins / "llama-server"
    if not tool.exists():
        return None
    port = _free_port()
    proc = subprocess.Popen([str(tool), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", "8", "-cb",
                             *load_mode, "-c", str(8 * 2048), "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)

        def post(body: dict[str, Any]) -> int:
            data = json.dumps(body).encode()
            req = urllib.request.Request(f"{url}/completion", data=data, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=3600) as r:
                return int(json.loads(r.read()).get("tokens_predicted", 0))

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            tokens = sum(pool.map(post, bodies))
        wall = time.perf_counter() - t0
        print(f"llama-server: {tokens} tokens generated, {tokens / wall:.1f} tok/s", flush=True)
        return wall
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def jobs_per_hour(model: Path, bins: Path, gguf: Path, threads: int, n: int,
                  load_mode: Sequence[str] = ()) -> Optional[tuple[float, float]]:
    """(edged, llama-server) jobs per hour on the same queue; None when llama-server is missing."""
    jobs = texts(n)
    bodies = prompts(model, jobs)
    theirs = server_run(bins, gguf, bodies, threads, load_mode)
    if theirs is None:
        return None
    ours = edged_run(model, jobs, threads)
    print(f"queue: {n} jobs, {len(bodies)} prompts; edged {ours:.1f} s, llama-server {theirs:.1f} s", flush=True)
    return n * 3600 / ours, n * 3600 / theirs
