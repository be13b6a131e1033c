#!/usr/bin/env python3
"""Translation of one long text through the real path: decode, chunk, batched engine calls, reassembly.

Usage: python bench/translate.py --model DIR [--kb 200] [--paragraphs 500] [--to fr]
       [--batch-size 8] [--chunk-tokens 384] [--max-new-tokens N] [--provider cpu|cuda|auto]

The text is generated (English sentences from templates, fixed seed), so every run
translates the same bytes. Ends with one key=value summary line: chunks per second and
tokens per second (prompt, output, both) over the wall time of all engine calls.
Run it on a quiet machine: other jobs on the cores change every figure.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

from edged.config import Settings
from edged.engine.onnx import load
from edged.logs import configure_logging
from edged.tasks import translate

SUBJECTS = ["The farmer", "My neighbour", "A young engineer", "The old library", "Our team", "The city council",
            "A small boat", "The teacher", "Every visitor", "The museum"]
VERBS = ["opened", "repaired", "described", "visited", "painted", "discussed", "measured", "carried", "found",
         "planned"]
OBJECTS = ["a wooden bridge", "the new school", "three letters", "the evening train", "a quiet garden",
           "the broken window", "a long report", "the summer market", "an empty room", "the river bank"]
TAILS = ["before the rain started", "with great care", "near the harbour", "after a long discussion",
         "on a cold morning", "for the first time", "without any help", "during the festival",
         "in the north of the country", "as everyone expected"]


def make_text(kb: int, paragraphs: int, seed: int = 7) -> str:
    rng = random.Random(seed)
    target = kb * 1024
    per_paragraph = target // paragraphs
    out = []
    for _ in range(paragraphs):
        para: list[str] = []
        while sum(len(s) + 1 for s in para) < per_paragraph:
            para.append(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}.")
        out.append(" ".join(para))
    return "\n\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder (e.g. the built-in default)")
    ap.add_argument("--kb", type=int, default=200)
    ap.add_argument("--paragraphs", type=int, default=500)
    ap.add_argument("--to", default="fr")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk-tokens", type=int, default=384)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    configure_logging("warning", "console")

    settings = Settings.model_validate({
        "model": {"provider": args.provider, "batch_size": args.batch_size, "threads": args.threads},
        "tasks": {"translate": {"chunk_tokens": args.chunk_tokens, "max_new_tokens": args.max_new_tokens,
                                "source_language": "en"}},
    })
    engine = load(settings.model, Path(args.model))
    info = engine.info()
    text = make_text(args.kb, args.paragraphs)
    data = text.encode("utf-8")

    t0 = time.perf_counter()
    prepared = translate.prepare({"target_language": args.to}, data, settings, info)
    prepare_s = time.perf_counter() - t0
    requests = prepared.requests
    print(f"model={engine.name} provider={engine.provider} text_bytes={len(data)} paragraphs={args.paragraphs} "
          f"chunks={len(requests)} chunk_budget={prepared.notes['chunk_budget']} prepare_s={prepare_s:.2f}",
          flush=True)

    gens = []
    prefill_ms = decode_ms = 0.0
    t0 = time.perf_counter()
    for start in range(0, len(requests), args.batch_size):
        gens += engine.generate(requests[start:start + args.batch_size])
        prefill_ms += engine.last_timing.prefill_ms
        decode_ms += engine.last_timing.decode_ms
        done = len(gens)
        elapsed = time.perf_counter() - t0
        print(f"  {done}/{len(requests)} chunks, {elapsed:.0f} s, "
              f"{sum(g.output_tokens for g in gens) / elapsed:.1f} output tok/s", flush=True)
    wall = time.perf_counter() - t0
    try:
        output = prepared.assemble(gens).output
        verdict = "done"
    except translate.InputError as exc:  # what the job would fail with; the speed still counts
        output, verdict = "\n\n".join(g.text.strip() for g in gens), f"failed: {exc}"
    print(f"job={verdict}")

    prompt_tokens = sum(g.prompt_tokens for g in gens)
    output_tokens = sum(g.output_tokens for g in gens)
    reasons = Counter(g.finish_reason for g in gens)
    print(f"finish_reasons={dict(reasons)} output_chars={len(output)} "
          f"paragraph_breaks_in={text.count(chr(10) * 2)} paragraph_breaks_out={output.count(chr(10) * 2)}")
    print(f"sample_in={text[:120]!r}")
    print(f"sample_out={output[:200]!r}")
    print(f"chunks={len(requests)} seconds={wall:.1f} chunks_per_s={len(requests) / wall:.3f} "
          f"prompt_tokens={prompt_tokens} output_tokens={output_tokens} "
          f"prompt_tok_s={prompt_tokens / wall:.1f} output_tok_s={output_tokens / wall:.1f} "
          f"total_tok_s={(prompt_tokens + output_tokens) / wall:.1f} "
          f"prefill_s={prefill_ms / 1000:.1f} decode_s={decode_ms / 1000:.1f} batch_size={args.batch_size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
