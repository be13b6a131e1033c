#!/usr/bin/env python3
"""A hostile producer in the inbox while the real daemon runs.

Random operations for a fixed count: create (whole, or by .part + rename), append, replace
by rename, delete, symlink a file or a folder out of the spool, hard-link one in, rename
folders, make folders with umask 022, names that are not UTF-8 or are 255 bytes long.
Canary files outside the spool hold a known text.

Checks: the daemon never exits; nothing outside the spool is read or written (no canary text
in any result or log line, every canary where it was, unchanged); every job's result is the
result of the bytes it was queued for (the engine double echoes its prompt, so a result names
its input's text); every input in done/ holds its job's bytes; at the end nothing the
producer left is unaccounted for.

With --users (root): the daemon runs as its own user with the unit's UMask=0007, the producer
as another user with umask 022, as on a box (tests/users.py sets them up).

Usage: python bench/producer_fuzz.py [--ops 2000] [--seed 1] [--users] [--dir DIR]
Ends with: ops=… exits=… outside_reads=… wrong_results=… wrong_moves=… unaccounted=… jobs=… wall_s=…
"""

from __future__ import annotations

import argparse
import hashlib
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

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
CANARY = "CANARY-fuzz-4b21-not-for-the-daemon"
LANGS = ("de", "fr", "es", "it")


# -- the producer -----------------------------------------------------------------------

def producer(inbox: Path, outside: Path, ops: int, seed: int, log: Path) -> None:
    """The random operations; every content ever written is logged (JSON lines) to `log`."""
    rng = random.Random(seed)
    base = inbox / "translate"
    written = open(log, "a", encoding="utf-8")

    def folders() -> list[Path]:
        out = []
        for dirpath, dirnames, _ in os.walk(base):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            out.append(Path(dirpath))
        return [p for p in out if p != base] or [base]

    def files() -> list[Path]:
        return [Path(dp) / f for dp, _, fs in os.walk(base) for f in fs if not f.startswith(".")]

    def content() -> bytes:
        text = f"Text {rng.randrange(10**9)} " + " ".join(rng.choice(["sea", "sky", "stone", "river", "lamp"])
                                                          for _ in range(rng.randint(1, 12)))
        written.write(json.dumps({"text": text}) + "\n")
        written.flush()
        return (text + "\n").encode()

    def name() -> str:
        roll = rng.random()
        if roll < 0.05:
            return "n" * 251 + ".txt"
        if roll < 0.10:
            return os.fsdecode(b"caf\xe9-" + str(rng.randrange(10**6)).encode() + b".txt")
        return f"f{rng.randrange(10**6)}.txt"

    def new_file(path: Path, data: bytes) -> None:
        # Never through an existing name: that may be one of the producer's own links to a
        # canary, and writing the canary would be the producer's doing, not the daemon's.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)

    for lang in LANGS:
        (base / lang).mkdir(parents=True, exist_ok=True)
    for _ in range(ops):
        try:
            op = rng.choice(["create", "create", "create", "part", "part", "append", "replace", "delete",
                             "symlink_file", "symlink_dir", "hardlink_out", "hardlink_in", "rename_dir",
                             "mkdir_022"])
            here = rng.choice(folders())
            if op == "create":
                new_file(here / name(), content())
            elif op == "part":
                target = here / name()
                tmp = target.with_name("." + target.name[:200] + ".part")
                new_file(tmp, content())
                os.rename(tmp, target)
            elif op == "append" and files():
                victim = rng.choice(files())
                # Not through a link: writing the canary itself would be the producer's doing.
                if not victim.is_symlink() and victim.stat().st_nlink == 1:
                    fd = os.open(victim, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
                    with os.fdopen(fd, "ab") as fh:
                        fh.write(b"Appended " + content())
            elif op == "replace" and files():
                victim = rng.choice(files())
                tmp = victim.with_name(".r" + str(rng.randrange(10**6)) + ".part")
                new_file(tmp, content())
                os.rename(tmp, victim)
            elif op == "delete" and files():
                os.unlink(rng.choice(files()))
            elif op == "symlink_file":
                os.symlink(outside / "canary.txt", here / name())
            elif op == "symlink_dir":
                os.symlink(outside, here / f"d{rng.randrange(10**6)}")
            elif op == "hardlink_out":
                os.link(outside / "canary.txt", here / name())
            elif op == "hardlink_in" and files():
                src = rng.choice(files())
                if not src.is_symlink():
                    os.link(src, here / name())
            elif op == "rename_dir":
                subs = [p for p in folders() if p.parent != base]
                if subs:
                    victim = rng.choice(subs)
                    os.rename(victim, victim.with_name(f"r{rng.randrange(10**6)}"))
            elif op == "mkdir_022":
                old = os.umask(0o022)
                try:
                    (here / f"p{rng.randrange(10**6)}").mkdir()
                finally:
                    os.umask(old)
        except OSError:
            pass  # a race with the daemon moving things is part of the game
        time.sleep(rng.uniform(0, 0.01))
    written.close()


# -- the run ----------------------------------------------------------------------------

def _daemon_cmd(cfg: Path, as_daemon: list[str]) -> list[str]:
    return [*as_daemon, sys.executable, "-m", "edged", "run", "-c", str(cfg)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--users", action="store_true", help="daemon and producer as two users (root only)")
    ap.add_argument("--dir", help="work folder (default: a temp folder)")
    ap.add_argument("--producer-loop", nargs=4, metavar=("INBOX", "OUTSIDE", "OPS", "LOG"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.producer_loop:
        inbox, outside, ops, log = args.producer_loop
        producer(Path(inbox), Path(outside), int(ops), args.seed, Path(log))
        return 0
    t0 = time.monotonic()
    work = Path(args.dir or tempfile.mkdtemp(prefix="edged-fuzz-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    outside = work / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text(CANARY)
    (outside / "inner.txt").write_text(CANARY + " inner")
    canaries = {p: (p.stat().st_ino, p.read_text()) for p in outside.iterdir()}
    spool, state = work / "spool", work / "state"
    cfg = {"state_dir": str(state), "spool_dir": str(spool),
           "model": {"engine": "echo_engine:create", "batch_size": 4, "options": {"mode": "echo", "delay_s": 0.02}},
           "queue": {"backoff_seconds": 0.2, "backoff_max_seconds": 1, "recover_seconds": 1},
           "watch": {"stability_seconds": 0.3, "rescan_seconds": 2},
           "spool": {"min_free_mb": 0}, "log": {"format": "json", "level": "info"}}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    os.chmod(work / "config.yaml", 0o644)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "doubles"), str(REPO)])}
    as_daemon: list[str] = []
    as_producer: list[str] = []
    inbox = spool / "inbox"
    if args.users:
        import users

        if users.missing():
            print(f"--users: {users.missing()}", file=sys.stderr)
            return 2
        users.ensure_users()
        uid, gid = users.uid(users.DAEMON), users.gid()
        for path, mode in [(state, 0o750), (spool, 0o2750), (inbox, 0o2750), *[(inbox / t, 0o2770) for t in
                           ("caption", "ocr", "translate")]]:
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        as_daemon = users.as_user(users.DAEMON, [], 0o007, work / "view-d")
        as_producer = users.as_user(users.PRODUCER, [], 0o022, work / "view-p")
    log = open(work / "daemon.log", "ab")
    proc = subprocess.Popen(_daemon_cmd(work / "config.yaml", as_daemon), stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=work)
    _wait(lambda: b'"ready"' in (work / "daemon.log").read_bytes() or proc.poll() is not None, 60)
    contents = work / "contents.jsonl"
    contents.touch()
    os.chmod(contents, 0o666)
    loop = [sys.executable, str(Path(__file__).resolve()), "--seed", str(args.seed),
            "--producer-loop", str(inbox), str(outside), str(args.ops), str(contents)]
    if args.users:
        subprocess.run([*as_producer, *loop], check=True, env=env)
    else:
        producer(inbox, outside, args.ops, args.seed, contents)
    exits = 0 if proc.poll() is None else 1
    db = state / "edged.db"
    _wait(lambda: _quiet(db), 120)
    exits += 0 if proc.poll() is None else 1
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    log.close()
    exits += 0 if code == 0 else 1
    res = _check(work, db, contents, canaries)
    wall = time.monotonic() - t0
    print(f"ops={args.ops} exits={exits} outside_reads={res['outside']} wrong_results={res['wrong_results']}"
          f" wrong_moves={res['wrong_moves']} unaccounted={res['unaccounted']} jobs={res['jobs']}"
          f" done={res['done']} failed={res['failed']} left_in_inbox={res['left']} wall_s={wall:.0f}")
    ok = exits == 0 and not any(res[k] for k in ("outside", "wrong_results", "wrong_moves", "unaccounted"))
    if ok and not args.dir:
        subprocess.run(["umount", "-R", str(work / "view-d"), str(work / "view-p")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _wait(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.2)


def _quiet(db: Path) -> bool:
    """Nothing queued or running, and no finished job's file still waiting to be moved."""
    try:
        con = sqlite3.connect(db, timeout=30)
        busy = con.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        stuck = con.execute("SELECT COUNT(*) FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.state = 'pending'"
                            " AND j.status IN ('done', 'failed')").fetchone()[0]
        con.close()
    except sqlite3.Error:
        return False
    time.sleep(3)  # a rescan's worth: files the producer left last must have been seen
    return busy == 0 and stuck == 0


def _check(work: Path, db: Path, contents: Path, canaries: dict) -> dict[str, int]:
    texts = {hashlib.sha256((json.loads(line)["text"] + "\n").encode()).hexdigest(): json.loads(line)["text"]
             for line in contents.read_text().splitlines()}
    con = sqlite3.connect(db)
    log_text = (work / "daemon.log").read_text(errors="replace")
    leaks = [f"result of job {j} ({src})" for j, src, o in con.execute(
        "SELECT r.job_id, j.source_path, r.output FROM results r JOIN jobs j ON j.id = r.job_id") if CANARY in o]
    leaks += [f"log line: {line[:300]}" for line in log_text.splitlines() if CANARY in line]
    leaks += [f"canary {p} changed" for p, (ino, text) in canaries.items()
              if not p.exists() or p.stat().st_ino != ino or p.read_text() != text]
    for leak in leaks[:5]:
        print(f"outside: {leak}", file=sys.stderr)
    outside = len(leaks)
    wrong = 0
    for sha, output in con.execute("SELECT j.sha256, r.output FROM jobs j JOIN results r ON r.job_id = j.id"):
        # An appended file's bytes are several writes: each must appear, in its order.
        wrong += not _echoes(output, sha, texts)
    wrong_moves = 0
    for moved, sha in con.execute("SELECT f.moved_to, j.sha256 FROM files f JOIN jobs j ON j.id = f.job_id"
                                  " WHERE f.state = 'done' AND f.left_in_inbox = 0 AND f.moved_to IS NOT NULL"):
        path = work / "spool" / os.fsdecode(moved)
        if path.is_file() and path.stat().st_nlink > 1:
            continue  # linked again by the producer after it was read: its other name still writes it
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            wrong_moves += 1
    known = {os.fsdecode(p) for (p,) in con.execute(
        "SELECT path FROM files WHERE left_in_inbox = 1 OR state = 'pending'")}
    unaccounted = 0
    inbox = work / "spool" / "inbox"
    for dirpath, dirnames, names in os.walk(inbox):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for n in names:
            rel = str((Path(dirpath) / n).relative_to(inbox))
            if not n.startswith(".") and rel not in known:
                unaccounted += 1
    jobs = con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    done = con.execute("SELECT COUNT(*) FROM jobs WHERE status = 'done'").fetchone()[0]
    failed = con.execute("SELECT COUNT(*) FROM jobs WHERE status = 'failed'").fetchone()[0]
    left = con.execute("SELECT COUNT(*) FROM files WHERE left_in_inbox = 1").fetchone()[0]
    return {"outside": outside, "wrong_results": wrong, "wrong_moves": wrong_moves, "unaccounted": unaccounted,
            "jobs": jobs, "done": done, "failed": failed, "left": left}


def _echoes(output: str, sha: str, texts: dict[str, str]) -> bool:
    """Whether `output` (the echoed prompt) holds exactly the bytes whose hash is `sha`."""
    if sha in texts:
        return texts[sha] in output
    # Appends: the input was several pieces; rebuild its bytes from the output and hash them.
    body = output.split("\n\n", 1)[-1]
    return hashlib.sha256(body.encode()).hexdigest() == sha or hashlib.sha256(
        (body.rstrip("\n") + "\n").encode()).hexdigest() == sha


if __name__ == "__main__":
    raise SystemExit(main())
