#!/usr/bin/env python3
"""Speed of the ONNX engine on this machine: load, memory, prefill, decode at batch 1 and 8.

Usage: python bench/engine.py [--model DIR] [--threads N] [--provider cpu|cuda|auto]
                              [--decoder auto|fused|traced] [--mixed N] [--rss-context 4096] [--images N]
       (default model: the built-in one, <state_dir>/models/gemma-3-270m via -c CONFIG,
        else ~/.cache/edged/models/gemma-3-270m)
--mixed N: N prompts whose answer lengths are drawn from a fixed seed (8 to 256 tokens), run
  8 at a time: the figure continuous batching changes (a static batch waits for its longest row).
--images N: N jobs of one picture each (a vision model), answers of 8 to 64 tokens from a fixed
  seed; traced in batches of 8 as the worker runs them, fused continuously: image jobs per hour.
--rss-context T [--rows N]: peak RSS of N (8) sequences of T tokens each (a fresh process is best:
  run it alone), against the bound model + N x KV of the layout + 15 %; `--rss-context 32704
  --rows 1` is a prompt of the 270M's whole context.
Ends with one key=value summary line. Run it on a quiet machine: other jobs on the cores
change every figure.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edged.engine.generate import GenParams, _choose
from edged.engine.onnx import DecodeSettings, OnnxEngine
from edged.engine.session import SessionSettings
from edged.logs import configure_logging


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _full_sort_choice(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float) -> int:
    """The way the engine sampled before: float64 probabilities and a sort of the whole row."""
    x = np.exp(logits.astype(np.float64) / temperature - logits.max() / temperature)
    probs = x / x.sum()
    order = np.argsort(-probs)
    keep = order[np.cumsum(probs[order]) - probs[order] < top_p]
    kept = np.zeros_like(probs)
    kept[keep] = probs[keep]
    return int(rng.choice(len(kept), p=kept / kept.sum()))


def sampling_ms(vocab: int, repeats: int = 50) -> tuple[float, float]:
    """Host time to sample one token with top_p from a model-sized row of logits: the engine's
    way, and a full sort of the row (the way before) in the same run."""
    rng = np.random.default_rng(0)
    # Spread so that the nucleus holds a few hundred tokens (298 for 262,144 logits): an
    # uncertain step of a language model.
    logits = (rng.normal(size=vocab) * 4).astype(np.float32)
    p = GenParams(temperature=0.8, top_p=0.95)
    t0 = time.perf_counter()
    for _ in range(repeats):
        _choose(logits, p, rng)
    t1 = time.perf_counter()
    for _ in range(repeats):
        _full_sort_choice(logits, rng, 0.8, 0.95)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000 / repeats, (t2 - t1) * 1000 / repeats


def mixed(engine: OnnxEngine, ids: list[int], n: int) -> int:
    """Tokens per second over a run of n prompts with answer lengths from a fixed seed."""
    rng = np.random.default_rng(42)
    lengths = rng.integers(8, 257, size=n)
    bos = engine.manifest.tokens.bos
    prompts = [[bos] + ids[i * 5 % 300:i * 5 % 300 + 16 + int(rng.integers(0, 96))] for i in range(n)]
    params = [GenParams(max_new_tokens=int(k), stop_on_eos=False, repetition_guard=False) for k in lengths]
    gen = engine.generator
    t0 = time.perf_counter()
    if getattr(engine, "continuous", False):
        outs, _ = gen.run(prompts, params)  # slots refill as rows finish
    else:
        outs = []
        for i in range(0, n, 8):  # a static batch of 8 at a time, as the worker ran it
            outs += gen.run(prompts[i:i + 8], params[i:i + 8])[0]
    wall = time.perf_counter() - t0
    tokens = sum(len(o.tokens) for o in outs)
    decoder = "fused" if getattr(engine, "continuous", False) else "traced"
    print(f"mixed: {n} prompts, answers of {int(lengths.min())}-{int(lengths.max())} tokens "
          f"(sum {tokens}), {wall:.1f} s")
    print(f"decoder={decoder} mixed_prompts={n} mixed_tokens={tokens} mixed_wall_s={wall:.1f} "
          f"mixed_tok_s={tokens / wall:.1f}")
    return 0


def images(engine: OnnxEngine, n: int) -> int:
    """Image jobs: n requests of one picture each (the model's image tokens in the prompt) with
    answers of 8-64 tokens from a fixed seed; traced: batches of 8 as the worker runs them,
    fused: one continuous run."""
    from PIL import Image

    from edged.engine.api import Request

    v = engine.manifest.vision
    if v is None:
        raise SystemExit(f"{engine.name} has no vision encoder: --images needs a vision model")
    rng = np.random.default_rng(7)
    side = (v.image_size, v.image_size, 3)
    reqs = [Request(f"describe picture {i}", images=(Image.fromarray(rng.integers(0, 256, side, dtype=np.uint8)),),
                    max_new_tokens=int(rng.integers(8, 65))) for i in range(n)]
    t0 = time.perf_counter()
    if getattr(engine, "continuous", False):
        gens = engine.generate(reqs)
    else:
        gens = [g for i in range(0, n, 8) for g in engine.generate(reqs[i:i + 8])]
    wall = time.perf_counter() - t0
    tokens = sum(g.output_tokens for g in gens)
    decoder = "fused" if getattr(engine, "continuous", False) else "traced"
    print(f"images: {n} jobs of {gens[0].prompt_tokens}-token prompts, {tokens} tokens out, {wall:.1f} s")
    print(f"decoder={decoder} image_jobs={n} image_tokens={tokens} image_wall_s={wall:.1f} "
          f"image_jobs_per_hour={n * 3600 / wall:.0f}")
    return 0


def peak_rss(engine: OnnxEngine, ids: list[int], context: int, rss_model: float, rows: int = 8) -> int:
    """Peak RSS of `rows` sequences of `context` tokens, against the KV layout's bound."""
    m = engine.manifest
    bos = m.tokens.bos
    long_ids = (ids * (context // max(len(ids), 1) + 2))
    prompts = [[bos] + long_ids[i:i + context - 17] for i in range(rows)]
    fixed = GenParams(max_new_tokens=16, stop_on_eos=False, repetition_guard=False)
    t0 = time.perf_counter()
    outs, timing = engine.generator.run(prompts, [fixed] * rows)
    wall = time.perf_counter() - t0
    with open("/proc/self/status") as fh:
        hwm = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    t = m.text
    # The traced decoder keeps every layer's whole cache (and past beside present while a step runs).
    kv = m.kv_bytes(context, batch=rows) / 2**20 if getattr(engine, "continuous", False) else \
        2 * t.num_layers * t.num_kv_heads * t.head_dim * 4 * context * rows / 2**20
    bound = (rss_model + kv) * 1.15
    print(f"{rows} x {context} tokens: {wall:.1f} s (prefill {timing.prefill_ms / 1000:.1f} s), "
          f"{sum(len(o.tokens) for o in outs)} tokens out, peak RSS {hwm:.0f} MB; "
          f"model {rss_model:.0f} MB + KV {kv:.0f} MB + 15 % = {bound:.0f} MB")
    print(f"rows={rows} rss_context={context} peak_rss_mb={hwm:.0f} rss_model_mb={rss_model:.0f} kv_mb={kv:.0f} "
          f"bound_mb={bound:.0f} within_bound={hwm <= bound}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder")
    ap.add_argument("-c", "--config", help="edged config (its model is used)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--provider", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--decoder", default="auto", choices=["auto", "fused", "traced"])
    ap.add_argument("--mixed", type=int, default=0)
    ap.add_argument("--rss-context", type=int, default=0)
    ap.add_argument("--images", type=int, default=0, help="N image jobs (a vision model)")
    ap.add_argument("--rows", type=int, default=8, help="sequences for --rss-context")
    args = ap.parse_args()
    configure_logging("warning", "console")
    if args.model:
        model = Path(args.model)
    elif args.config:
        from edged.config import load_config

        model = load_config(Path(args.config)).model_dir
    else:
        model = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged")) / "models" / "gemma-3-270m"

    rss0 = rss_mb()
    t0 = time.perf_counter()
    context = args.rss_context + 64 if args.rss_context else 0  # the engine caps it at the model's context
    engine = OnnxEngine(model, SessionSettings(provider=args.provider, threads=args.threads),
                        decode=DecodeSettings(decoder=args.decoder, slots=8, context=context))
    load_s = time.perf_counter() - t0
    rss = rss_mb()
    gen = engine.generator
    print(f"model {engine.name} ({engine.manifest.weights}) on {engine.provider}: loaded in {load_s:.2f}s, "
          f"RSS {rss:.0f} MB ({rss - rss0:+.0f} MB for the model)")

    text = ("The old lighthouse keeper walked along the shore every morning, counting the boats that came "
            "back from the night's fishing and writing their names in a worn notebook. ")
    ids = engine.tokenizer.encode(text * 40)
    if args.rss_context:
        return peak_rss(engine, ids, args.rss_context, rss, args.rows)
    if args.mixed:
        return mixed(engine, ids, args.mixed)
    if args.images:
        return images(engine, args.images)
    long_prompt = [engine.manifest.tokens.bos] + ids[:511]
    one = GenParams(max_new_tokens=1, stop_on_eos=False, repetition_guard=False)
    gen.run([long_prompt[:32]], [one])  # warm-up
    prefill = []
    for _ in range(args.repeats):
        _, t = gen.run([long_prompt], [one])
        prefill.append(len(long_prompt) / (t.prefill_ms / 1000))
    prefill_tok_s = statistics.median(prefill)
    print(f"prefill: {len(long_prompt)}-token prompt, {prefill_tok_s:.0f} tok/s (median of {args.repeats})")

    fixed = GenParams(max_new_tokens=args.new_tokens, stop_on_eos=False, repetition_guard=False)

    def decode_rate(batch: int) -> float:
        prompts = [[engine.manifest.tokens.bos] + ids[i * 7:i * 7 + 12 + i] for i in range(batch)]
        rates = []
        for _ in range(args.repeats):
            outs, t = gen.run(prompts, [fixed] * batch)
            # steps after the first token: each produced one token for every row in the batch
            rates.append(t.steps * batch / (t.decode_ms / 1000))
        return statistics.median(rates)

    b1 = decode_rate(1)
    print(f"decode batch 1: {b1:.1f} tok/s")
    b8 = decode_rate(8)
    print(f"decode batch 8: {b8:.1f} tok/s aggregate ({b8 / b1:.2f}x batch 1)")
    print(f"peak RSS {rss_mb():.0f} MB")
    sample_ms, full_sort_ms = sampling_ms(engine.manifest.text.vocab_size)
    print(f"choosing one token with temperature 0.8, top_p 0.95 over {engine.manifest.text.vocab_size} logits: "
          f"{sample_ms:.2f} ms per row ({full_sort_ms:.2f} ms with a full sort of the row)")
    print(f"model={engine.name} weights={engine.manifest.weights} provider={engine.provider} load_s={load_s:.2f} "
          f"rss_mb={rss:.0f} prefill_tok_s={prefill_tok_s:.0f} decode_tok_s_b1={b1:.1f} decode_tok_s_b8={b8:.1f} "
          f"b8_over_b1={b8 / b1:.2f} sample_top_p_ms={sample_ms:.2f} sample_full_sort_ms={full_sort_ms:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
