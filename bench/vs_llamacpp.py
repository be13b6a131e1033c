#!/usr/bin/env python3
"""edged's engine against llama.cpp's own tools on the same GGUF, same threads, alternating.

Usage: python bench/vs_llamacpp.py --model DIR [--gguf FILE] [--llama-bin DIR] [--threads 2]
                                   [--repeats 3] [--engine fused|traced] [--jobs 200]

DIR is the edged build of FILE (`edged model export --from FILE --weights gguf`). The llama.cpp
tools come from llama-cpp-python's sdist built with cmake, AMX off (FACTS.md has the recipe):
`llama-bench` for prefill and batch-1 decode at a depth, `llama-batched-bench` for 8 sequences,
`llama-server -np 8 -cb` for the job queue. Each figure runs edged, then llama.cpp, `--repeats`
times; medians. Ratios are edged ÷ llama.cpp (higher is better for edged). The last line is
key=value: pp512_ratio tg_ratio tg_d1024_ratio b8_d512_ratio … jobs_per_hour_ratio (NA when a
tool is missing).

Both engines run with the same memory setting: by default the script restarts itself once with
glibc's huge-page tunable (as `edged run` and the systemd unit do; edged/hugepages.py), so the
llama.cpp tools inherit it too; `--huge-pages off` measures both on small pages. llama.cpp
is given its faster load mode on this box: a probe at the start times `-lm mmap` (its default)
against `-lm none` (weights copied onto the heap, where the huge pages are) and keeps the better.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from edged import hugepages
from edged.engine.generate import GenParams
from edged.engine.onnx import DecodeSettings, OnnxEngine
from edged.engine.session import SessionSettings
from edged.engine.slots import SlotGenerator
from edged.logs import configure_logging

CACHE = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged"))


def find_bin(given: Optional[str]) -> Path:
    if given:
        return Path(given)
    hits = sorted(glob.glob(str(CACHE / "llama.cpp" / "*" / "vendor" / "llama.cpp" / "build" / "bin")))
    if not hits:
        raise SystemExit("llama.cpp tools not found: build them (FACTS.md) or pass --llama-bin")
    return Path(hits[-1])


LOAD_MODE = ["-lm", "mmap"]  # llama.cpp's load mode; main() keeps the faster of mmap and none


def llama_bench(bins: Path, gguf: Path, threads: int, p: int, n: int, d: int) -> float:
    """llama-bench's own t/s for one test (pp when n == 0, else tg at depth d)."""
    cmd = [str(bins / "llama-bench"), "-m", str(gguf), "-t", str(threads), "-p", str(p), "-n", str(n),
           "-d", str(d), "-r", "2", "-o", "json", *LOAD_MODE]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)[0]["avg_ts"])


def batched_bench(bins: Path, gguf: Path, threads: int, npp: int, ntg: int, npl: int) -> Optional[float]:
    """llama-batched-bench's aggregate decode t/s (S_TG) for npl sequences after npp-token prompts."""
    tool = bins / "llama-batched-bench"
    if not tool.exists():
        return None
    cmd = [str(tool), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-c", str(npl * (npp + ntg) + 64),
           "-b", "2048", "-ub", "512", "-npp", str(npp), "-ntg", str(ntg), "-npl", str(npl), "--output-format", "jsonl",
           *LOAD_MODE]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[-1]["speed_tg"]) if rows else None


class Edged:
    def __init__(self, model: Path, threads: int, decoder: str) -> None:
        self.engine = OnnxEngine(model, SessionSettings(provider="cpu", threads=threads),
                                 decode=DecodeSettings(decoder=decoder, slots=8, context=8192))
        self.gen = self.engine.generator
        text = ("The old lighthouse keeper walked along the shore every morning, counting the boats that came "
                "back from the night's fishing and writing their names in a worn notebook. ")
        self.ids = self.engine.tokenizer.encode(text * 400)
        self.bos = self.engine.manifest.tokens.bos

    def prompt(self, n: int, offset: int = 0) -> list[int]:
        return [self.bos, *self.ids[offset:offset + n - 1]]

    def prefill(self, n: int) -> float:
        _, t = self.gen.run([self.prompt(n)], [GenParams(max_new_tokens=1, stop_on_eos=False)])
        return n / (t.prefill_ms / 1000)

    def decode(self, batch: int, depth: int, new: int) -> float:
        """Aggregate decode tok/s of `batch` rows after `depth`-token prompts, once every prompt is in:
        what llama-bench (tg at depth) and llama-batched-bench (S_TG) time."""
        prompts = [self.prompt(max(depth, 1), offset=7 * i) for i in range(batch)]
        fixed = GenParams(max_new_tokens=new, stop_on_eos=False, repetition_guard=False)
        if not isinstance(self.gen, SlotGenerator):  # a static batch: prefill of all, then decode
            outs, t = self.gen.run(prompts, [fixed] * batch)
            return (sum(len(o.tokens) for o in outs) - batch) / (t.decode_ms / 1000)
        gen = self.gen
        rows = [gen.add(i, p, fixed) for i, p in enumerate(prompts)]
        try:
            while not all(r.prefilled for r in rows):  # the prompts go in (with decode steps between)
                gen.step()
            done = [len(r.out.tokens) for r in rows]
            t0 = time.perf_counter()
            while all(len(r.out.tokens) < new for r in rows):  # all rows decoding together
                gen.step()
            wall = time.perf_counter() - t0
        finally:
            gen.clear()
        return sum(len(r.out.tokens) - d for r, d in zip(rows, done, strict=True)) / wall


def alternate(ours: Callable[[], float], theirs: Callable[[], Optional[float]], repeats: int
              ) -> tuple[float, Optional[float]]:
    a, b = [], []
    for _ in range(repeats):
        a.append(ours())
        got = theirs()
        if got is not None:
            b.append(got)
    return statistics.median(a), (statistics.median(b) if b else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--gguf", default=str(CACHE / "gguf" / "gemma-3-270m-q4_k_m.gguf"))
    ap.add_argument("--llama-bin")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--engine", default="fused", choices=["fused", "traced"])
    ap.add_argument("--jobs", type=int, default=200, help="translation jobs for the queue figure (0: skip)")
    ap.add_argument("--quick", action="store_true", help="skip the 4096-deep figure")
    ap.add_argument("--huge-pages", choices=["on", "off"], default="on",
                    help="both engines on 2 MiB heap pages (glibc's tunable, as the service runs) or not")
    args = ap.parse_args()
    if args.huge_pages == "on":
        hugepages.ensure()  # a re-exec: the llama.cpp tools started below inherit the tunable
    elif hugepages.has_tunable(os.environ):
        os.execve(sys.executable, list(sys.orig_argv), {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"})
    configure_logging("warning", "console")
    bins, gguf = find_bin(args.llama_bin), Path(args.gguf)
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')} (both engines); THP {hugepages.thp_mode()}",
          flush=True)
    probe = {mode: [] for mode in ("mmap", "none")}
    for _ in range(2):
        for mode in probe:
            LOAD_MODE[1] = mode
            probe[mode].append(llama_bench(bins, gguf, args.threads, 0, 64, 0))
    LOAD_MODE[1] = max(probe, key=lambda m: max(probe[m]))
    print("llama.cpp load mode: " + ", ".join(f"{m} {max(v):.1f} tok/s" for m, v in probe.items())
          + f" -> -lm {LOAD_MODE[1]}", flush=True)
    ed = Edged(Path(args.model), args.threads, args.engine)
    ed.decode(1, 32, 8)  # warm-up
    t = args.threads
    rows: list[tuple[str, str, float, Optional[float]]] = []

    def figure(key: str, label: str, ours: Callable[[], float], theirs: Callable[[], Optional[float]]) -> None:
        a, b = alternate(ours, theirs, args.repeats)
        rows.append((key, label, a, b))
        ratio = f"{a / b:.2f}" if b else "NA"
        print(f"{label:<52} edged {a:8.1f}  llama.cpp {b if b is not None else float('nan'):8.1f}  ratio {ratio}",
              flush=True)

    figure("pp512", "prefill, 512-token prompt (tok/s)", lambda: ed.prefill(512),
           lambda: llama_bench(bins, gguf, t, 512, 0, 0))
    figure("tg", "decode, batch 1, empty context", lambda: ed.decode(1, 1, 128),
           lambda: llama_bench(bins, gguf, t, 0, 128, 0))
    figure("tg_d1024", "decode, batch 1, after a 1024-token prompt", lambda: ed.decode(1, 1024, 128),
           lambda: llama_bench(bins, gguf, t, 0, 128, 1024))
    if not args.quick:
        figure("tg_d4096", "decode, batch 1, after a 4096-token prompt", lambda: ed.decode(1, 4096, 64),
               lambda: llama_bench(bins, gguf, t, 0, 64, 4096))
    figure("b8_d128", "aggregate decode, 8 sequences after 128-token prompts", lambda: ed.decode(8, 128, 64),
           lambda: batched_bench(bins, gguf, t, 128, 64, 8))
    figure("b8_d512", "aggregate decode, 8 sequences after 512-token prompts", lambda: ed.decode(8, 512, 64),
           lambda: batched_bench(bins, gguf, t, 512, 64, 8))
    figure("b8_d1024", "aggregate decode, 8 sequences after 1024-token prompts", lambda: ed.decode(8, 1024, 64),
           lambda: batched_bench(bins, gguf, t, 1024, 64, 8))
    by = {k: (a, b) for k, _, a, b in rows}
    flat = by["tg"][0]
    print(f"edged decode after 1024 tokens is {by['tg_d1024'][0] / flat:.2f}x its empty-context rate")
    jobs_ratio = "NA"
    if args.jobs:
        from vs_llamacpp_jobs import jobs_per_hour

        ed.engine.close()
        got = jobs_per_hour(Path(args.model), bins, gguf, t, args.jobs, LOAD_MODE)
        if got is not None:
            ours, theirs = got
            jobs_ratio = f"{ours / theirs:.2f}"
            print(f"{'jobs per hour, ' + str(args.jobs) + ' mixed translation jobs':<52} edged {ours:8.0f}  "
                  f"llama-server {theirs:8.0f}  ratio {jobs_ratio}")
    summary = " ".join(f"{k}_ratio={a / b:.2f}" if b else f"{k}_ratio=NA" for k, _, a, b in rows)
    print(f"{summary} tg_d1024_over_tg={by['tg_d1024'][0] / flat:.2f} jobs_per_hour_ratio={jobs_ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
