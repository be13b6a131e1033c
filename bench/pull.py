#!/usr/bin/env python3
"""How fast `edged model pull` writes and checks a file, with the network out of the way.

A file of random bytes is served by a plain HTTP server on loopback (a thread of this
process) and fetched by edged's own download code (`edged.models.fetch.download.fetch_file`:
the .part file, the sha256 and size checks, the final rename), alternating with a plain
`urllib` copy that checks nothing, to show what the checks cost. On a real link the link is
the limit; this says how far below it edged's own side stays.

Usage: python bench/pull.py [--mib 512] [--rounds 3] [--dir DIR]
Ends with one key=value summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edged.models.fetch.download import NoProgress, fetch_file
from edged.models.fetch.hub import Hub
from edged.models.fetch.plan import RemoteFile


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_args: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="work folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="edged-bench-pull-"))
    served = work / "served"
    served.mkdir(parents=True, exist_ok=True)
    blob = served / "weights.data"
    digest = hashlib.sha256()
    with open(blob, "wb") as f:
        for _ in range(args.mib):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/weights.data"
    remote = RemoteFile(path="weights.data", url=url, size=args.mib << 20, sha256=digest.hexdigest())
    hub = Hub(f"http://127.0.0.1:{server.server_address[1]}", None)
    edged_s, plain_s = [], []
    for r in range(args.rounds):
        dest = work / f"edged-{r}" / "weights.data"
        t0 = time.perf_counter()
        sha, checked = fetch_file(hub, remote, dest, NoProgress())
        edged_s.append(time.perf_counter() - t0)
        assert checked and sha == digest.hexdigest()
        shutil.rmtree(dest.parent)
        t0 = time.perf_counter()
        with urllib.request.urlopen(url) as resp, open(work / "plain", "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        plain_s.append(time.perf_counter() - t0)
        os.unlink(work / "plain")
        print(f"round {r + 1}: edged {args.mib / edged_s[-1]:.0f} MiB/s, plain copy {args.mib / plain_s[-1]:.0f} MiB/s",
              flush=True)
    server.shutdown()
    if not args.dir:
        shutil.rmtree(work)
    e, p = statistics.median(edged_s), statistics.median(plain_s)
    print(f"mib={args.mib} rounds={args.rounds} edged_mib_per_s={args.mib / e:.0f} plain_mib_per_s={args.mib / p:.0f}"
          f" checks_cost={e / p:.2f}")


if __name__ == "__main__":
    main()
