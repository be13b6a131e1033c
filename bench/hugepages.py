#!/usr/bin/env python3
"""Decode speed with and without huge pages for the heap (glibc.malloc.hugetlb=1, edged/hugepages.py).

Usage: python bench/hugepages.py --model DIR [--rounds 3] [--threads 2] [--depths 16,1024,4096]

Each round runs one fresh process per setting, alternating (tunables are read at process start):
it loads the fused decoder (8 slots, 8K context, as bench/vs_llamacpp.py) and times batch-1
decode of 64 tokens after prompts of each depth. Medians over rounds; the last line is
key=value: tok/s per depth for each setting, their ratio, and MB of the process on huge pages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys
sys.path.insert(0, {bench!r})
from pathlib import Path
from edged.hugepages import anon_huge_mb
from edged.logs import configure_logging
from vs_llamacpp import Edged
configure_logging("warning", "console")
e = Edged(Path({model!r}), {threads}, "fused")
e.decode(1, 32, 8)
out = {{str(d): e.decode(1, d, 64) for d in {depths!r}}}
out["huge_mb"] = anon_huge_mb()
print(json.dumps(out))
"""


def run(model: str, threads: int, depths: list[int], huge: bool) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1" if huge else "glibc.malloc.hugetlb=0"
    code = CHILD.format(bench=str(Path(__file__).parent), model=model, threads=threads, depths=depths)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--depths", default="16,1024,4096")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    got: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for r in range(args.rounds):
        for huge in (r % 2 == 0, r % 2 != 0):  # alternate which setting goes first
            got[huge].append(run(args.model, args.threads, depths, huge))
            row = got[huge][-1]
            print(f"round {r + 1} huge_pages={'on' if huge else 'off'}: "
                  + " ".join(f"d{d}={row[str(d)]:.1f}" for d in depths) + f" huge_mb={row['huge_mb']}", flush=True)
    med = {h: {d: statistics.median(x[str(d)] for x in got[h]) for d in depths} for h in got}
    parts = [f"d{d}_on={med[True][d]:.1f} d{d}_off={med[False][d]:.1f} d{d}_ratio={med[True][d] / med[False][d]:.3f}"
             for d in depths]
    mb = {h: statistics.median(x["huge_mb"] or 0 for x in got[h]) for h in got}
    print(" ".join(parts) + f" huge_mb_on={mb[True]:.0f} huge_mb_off={mb[False]:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
