#!/usr/bin/env python3
"""Chaos: the real `edged run` over mixed inputs, killed with SIGKILL at random moments.

N inputs (translate, caption and OCR through the tiny vision model built by the project's own
export, duplicates, a few bad files, some dropped while the daemon is down) and M kills:
during model calls (at least half of them: the daemon's debug line `engine_call` says a batch
is in the model, `engine_submit` that jobs joined the continuous stream, and the kill is checked
to have landed before the batch ended, or while the stream still had rows in flight), during
start-up and reconcile, and at random moments of processing (commits, moves). Restarted at
once after each kill, as systemd does.

A reference run of the same inputs without kills says what each input's outcome must be (a
random model's output can fail a task's output check, the same way every time). Checks:
every input in done/ or failed/ exactly once, every input with the reference's outcome (none
failed by a kill), one result per job and one result file per done input, PRAGMA
integrity_check ok, no temp debris.

Usage: python bench/chaos.py [--files 500] [--kills 200] [--model DIR] [--seed 1] [--dir DIR]
Ends with: files=… kills=… kills_in_model=… lost=… duplicated=… failed_by_kills=… integrity=… wall_s=…
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import yaml
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "models" / "tiny-gemma3-vision.json"


# -- inputs -----------------------------------------------------------------------------

def _image(rng: random.Random, fmt: str) -> bytes:
    w, h = rng.randint(24, 160), rng.randint(24, 160)
    img = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(rng.randint(0, 6)):
        x, y = rng.randrange(w), rng.randrange(h)
        img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, min(w, x + 9), min(h, y + 9)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_inputs(n: int, rng: random.Random) -> dict[str, bytes]:
    """rel path under inbox/ -> bytes."""
    words = "the quick brown fox jumps over a lazy dog while rain falls on quiet harbour towns".split()
    out: dict[str, bytes] = {}
    for i in range(n):
        kind = rng.random()
        if kind < 0.03:  # bad files
            bad = rng.choice([("caption", ".png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(64)),
                              ("translate", ".txt", b"\x00\x01binary\x00" * 8), ("ocr", ".jpg", b"")])
            out[f"{bad[0]}/bad{i:04d}{bad[1]}"] = bad[2]
        elif kind < 0.08 and out:  # a copy of an earlier input under another name
            rel, data = rng.choice(sorted(out.items()))
            task, name = rel.split("/", 1)
            out[f"{task}/copy{i:04d}-{name.replace('/', '-')}"] = data
        elif kind < 0.45:
            text = " ".join(rng.choice(words) for _ in range(rng.randint(4, 20))).capitalize() + f". ({i})\n"
            lang = rng.choice(["", "de/", "fr/"])
            out[f"translate/{lang}doc{i:04d}.txt"] = text.encode()
        elif kind < 0.75:
            out[f"caption/pic{i:04d}.png"] = _image(rng, "PNG")
        else:
            out[f"ocr/scan{i:04d}.jpg"] = _image(rng, "JPEG")
    return out


def write_inputs(inbox: Path, inputs: dict[str, bytes]) -> None:
    for rel, data in inputs.items():
        path = inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name("." + path.name + ".part")
        part.write_bytes(data)
        os.rename(part, path)


# -- the daemon -------------------------------------------------------------------------

class Daemon:
    def __init__(self, root: Path, model: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.config = root / "config.yaml"
        self.log = root / "daemon.log"
        self.db = root / "state" / "edged.db"
        self.spool = root / "spool"
        cfg = {
            "state_dir": str(root / "state"), "spool_dir": str(self.spool),
            "model": {"engine": "onnx", "path": str(model), "provider": "cpu", "threads": 1, "batch_size": 4,
                      "max_new_tokens": 96},
            "tasks": {"ocr": {"pan_and_scan": False}},
            "watch": {"stability_seconds": 0.3, "rescan_seconds": 5},
            "queue": {"backoff_seconds": 0.5, "backoff_max_seconds": 2, "recover_seconds": 2},
            "spool": {"min_free_mb": 0},
            "log": {"format": "json", "level": "debug"},
        }
        self.config.write_text(yaml.safe_dump(cfg))
        self.proc: Optional[subprocess.Popen] = None
        self._offset = 0

    def start(self) -> None:
        self._fh = open(self.log, "ab")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(self.config)],
                                     stdout=self._fh, stderr=subprocess.STDOUT, env=env, cwd=self.root)

    def events_since(self, offset: int) -> tuple[list[dict], int]:
        with open(self.log, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        cut = data.rfind(b"\n") + 1
        events = []
        for line in data[:cut].splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
        return events, offset + cut

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._fh.close()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=120)
        self._fh.close()
        return code

    def query(self, sql: str) -> list[tuple]:
        con = sqlite3.connect(self.db, timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def finished(self, total: int) -> bool:
        try:
            settled = self.query("SELECT COUNT(*) FROM files WHERE state != 'pending'")[0][0]
            busy = self.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]
        except sqlite3.OperationalError:
            return False
        return settled >= total and busy == 0


def wait_finished(d: Daemon, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.finished(total):
            return
        if d.proc is not None and d.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited ({d.proc.returncode}); see {d.log}")
        time.sleep(0.2)
    raise RuntimeError(f"not finished within {timeout}s; see {d.log}")


# -- outcomes ---------------------------------------------------------------------------

def outcomes(d: Daemon) -> dict[str, tuple[str, str]]:
    """Input rel -> (job status, kind of error) for every file record that was not superseded."""
    rows = d.query("SELECT f.path, j.status, COALESCE(j.error, '') FROM files f JOIN jobs j ON j.id = f.job_id"
                   " WHERE f.state != 'superseded'")
    return {str(path): (status, error.split(":", 1)[0]) for path, status, error in rows}


def _places(spool: Path) -> dict[str, list[str]]:
    """Input rel -> where it is now (area/rel), for every file under done/ and failed/."""
    out: dict[str, list[str]] = {}
    for area in ("done", "failed"):
        base = spool / area
        for p in base.rglob("*"):
            if p.is_dir() or p.name.endswith(".error.json"):
                continue
            out.setdefault(str(p.relative_to(base)), []).append(area)
    return out


def check(d: Daemon, inputs: dict[str, bytes], reference: dict[str, tuple[str, str]]) -> dict[str, object]:
    places = _places(d.spool)
    lost = [rel for rel in inputs if rel not in places]
    duplicated = [rel for rel, where in places.items() if len(where) > 1 or rel not in inputs]
    got = outcomes(d)
    by_kill = [rel for rel, want in reference.items() if got.get(rel) != want]
    crash_errors = d.query("SELECT COUNT(*) FROM jobs WHERE error LIKE 'the worker %'")[0][0]
    results, distinct = d.query("SELECT COUNT(*), COUNT(DISTINCT job_id) FROM results")[0]
    done_jobs = d.query("SELECT COUNT(*) FROM jobs WHERE status = 'done'")[0][0]
    done_files = d.query("SELECT COUNT(*) FROM files WHERE state = 'done'")[0][0]
    out_files = [p for p in (d.spool / "out").rglob("*") if p.is_file()]
    debris = [str(p) for p in d.spool.rglob(".edged-*")] + [str(p) for p in (d.spool / "inbox").rglob("*")
                                                                 if p.is_file()]
    integrity = sqlite3.connect(d.db).execute("PRAGMA integrity_check").fetchone()[0]
    return {"lost": len(lost), "duplicated": len(duplicated), "failed_by_kills": len(by_kill) + crash_errors,
            "second_results": results - distinct + max(0, results - done_jobs),
            "result_files_off": len(out_files) - done_files, "debris": len(debris), "integrity": integrity,
            "detail": {"lost": lost[:5], "duplicated": duplicated[:5], "by_kill": by_kill[:5], "debris": debris[:5]}}


# -- the run ----------------------------------------------------------------------------

def build_model(cache: Path) -> Path:
    key = hashlib.sha256(RECIPE.read_bytes() + b"fp32").hexdigest()[:12]
    out = cache / f"bench-tiny-vision-{key}"
    if not (out / "edged-model.json").exists():
        subprocess.run([sys.executable, "-m", "edged", "model", "export", "--from", f"random:{RECIPE}", "--out",
                        str(out), "--weights", "fp32", "--no-verify"], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    return out


def reference_run(root: Path, model: Path, inputs: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    d = Daemon(root, model)
    write_inputs(d.spool / "inbox", inputs)
    d.start()
    wait_finished(d, len(inputs), timeout=600 + len(inputs))
    d.stop()
    return outcomes(d)


def kill_once(d: Daemon, rng: random.Random, mode: str, more_work: Callable[[], bool]) -> bool:
    """Start the daemon and kill it in `mode`; True if the kill landed while a batch was in the model.

    `more_work` drops the next wave of inputs (False when none is left): a "model" kill that
    finds the daemon idle brings work instead of killing an idle process.
    """
    _events, offset = d.events_since(0) if d.log.exists() else ([], 0)
    d.start()
    if mode == "startup":  # start-up: recovery, reconcile, the start-up scan, the model load
        time.sleep(rng.uniform(0.0, 2.0))
        d.kill()
        return False
    deadline = time.monotonic() + 60
    ready, calls, target = False, 0, rng.randint(1, 2)
    in_model, ready_at, streaming = False, None, False
    while time.monotonic() < deadline and d.proc.poll() is None:
        events, offset = d.events_since(offset)
        for e in events:
            name = e.get("event")
            if name == "ready":
                ready, ready_at = True, time.monotonic()
            if name in ("engine_call", "engine_submit"):  # a batch goes in; jobs join the stream
                calls, in_model = calls + 1, True
                streaming = streaming or name == "engine_submit"
            elif name == "engine_rows_ended":  # the stream: in the model while rows are in flight
                in_model = e.get("in_flight", 0) > 0
            elif name in ("batch", "batch_error") and not streaming:
                in_model = False
        if ready and mode == "random":
            time.sleep(rng.uniform(0.0, 3.0))
            break
        if mode == "model" and in_model and calls >= target:
            time.sleep(rng.uniform(0.0, 0.005))
            break
        if ready_at and time.monotonic() - ready_at > 1.0 and not in_model and _idle(d):
            if mode == "model" and more_work():
                ready_at = time.monotonic()
                continue
            break  # nothing left to run: the kill lands on an idle daemon
        time.sleep(0.003)
    d.kill()
    events, _ = d.events_since(offset)
    ended = any(e.get("event") in ("batch", "batch_error") if not streaming else
                (e.get("event") == "engine_rows_ended" and not e.get("in_flight")) for e in events)
    return mode == "model" and in_model and not ended


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--model", help="a model folder (default: the tiny vision model, exported once)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", help="work folder (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    t_all = time.monotonic()
    rng = random.Random(args.seed)
    cache = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged"))
    model = Path(args.model) if args.model else build_model(cache)
    work = Path(args.dir or tempfile.mkdtemp(prefix="edged-chaos-"))
    inputs = make_inputs(args.files, rng)
    print(f"{len(inputs)} inputs under {work}; model {model}", flush=True)
    reference = reference_run(work / "reference", model, inputs)
    print(f"reference: {sum(1 for s, _ in reference.values() if s == 'done')} done,"
          f" {sum(1 for s, _ in reference.values() if s == 'failed')} failed", flush=True)

    d = Daemon(work / "chaos", model)
    # Most inputs arrive in waves between kills (while the daemon is down, or starting), so
    # that every run has work in flight when its kill comes.
    order = sorted(inputs)
    rng.shuffle(order)
    held = order[len(order) * 3 // 10:]
    write_inputs(d.spool / "inbox", {k: v for k, v in inputs.items() if k not in set(held)})
    modes = ["model"] * 12 + ["random"] * 5 + ["startup"] * 3
    waves = [held[k * len(held) // args.kills:(k + 1) * len(held) // args.kills] for k in range(args.kills)]

    def more_work() -> bool:
        while waves and not waves[0]:
            waves.pop(0)
        if not waves:
            return False
        write_inputs(d.spool / "inbox", {rel: inputs[rel] for rel in waves.pop(0)})
        return True

    in_model = 0
    tally: dict[str, int] = {}
    for k in range(args.kills):
        more_work()
        mode = rng.choice(modes)
        landed = kill_once(d, rng, mode, more_work)
        in_model += landed
        tally[mode + ("_in_model" if landed else "")] = tally.get(mode + ("_in_model" if landed else ""), 0) + 1
        if (k + 1) % 20 == 0:
            print(f"  {k + 1} kills ({in_model} in the model): {tally}", flush=True)
    while more_work():
        pass
    d.start()
    wait_finished(d, len(inputs), timeout=600 + len(inputs))
    code = d.stop()
    res = check(d, inputs, reference)
    wall = time.monotonic() - t_all
    if any(res["detail"].values()):
        print(f"detail: {res['detail']}")
    ok = (code == 0 and res["lost"] == 0 and res["duplicated"] == 0 and res["failed_by_kills"] == 0
          and res["second_results"] == 0 and res["result_files_off"] == 0 and res["debris"] == 0
          and res["integrity"] == "ok")
    print(f"files={len(inputs)} kills={args.kills} kills_in_model={in_model} lost={res['lost']}"
          f" duplicated={res['duplicated']} failed_by_kills={res['failed_by_kills']}"
          f" second_results={res['second_results']} debris={res['debris']} integrity={res['integrity']}"
          f" wall_s={wall:.0f}")
    if not args.keep and ok and not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _idle(d: Daemon) -> bool:
    try:
        busy = d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')")[0][0]
    except sqlite3.OperationalError:
        return False
    return busy == 0 and not any(f for _, _, files in os.walk(d.spool / "inbox") for f in files
                                 if not f.startswith("."))


if __name__ == "__main__":
    raise SystemExit(main())
