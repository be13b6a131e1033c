#!/usr/bin/env python3
"""Where a decode step of the fused decoder goes: ONNX Runtime's own profile, per operator.

Usage: python bench/profile_decode.py --model DIR [--depth 1024] [--batch 1] [--tokens 33] [--threads 2]

Prefills `batch` prompts of `depth` tokens, decodes `tokens` more, and sums ORT's kernel times
of the decode steps only (nodes whose input has one position), per operator and per weight of
the projections. Profiling slows every kernel a little: read shares, not speeds. Ends with one
key=value line (per-step milliseconds of the largest parts).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edged.engine.generate import GenParams
from edged.engine.slots import SlotGenerator
from edged.models.manifest import Manifest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--depth", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=33)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    folder = Path(args.model)
    m = Manifest.load(folder)

    def session(name: str, profile: str = "") -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = args.threads
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = profile
        return ort.InferenceSession(str(folder / name), so, providers=["CPUExecutionProvider"])

    prefix = str(Path(tempfile.mkdtemp(prefix="edged-profile-")) / "decode")
    decoder = session(m.graph("decoder_fused"), prefix)
    gen = SlotGenerator(session(m.graph("embed")), decoder, m, slots=max(8, args.batch),
                        context=args.depth + args.tokens + 8)
    ids = np.random.default_rng(0).integers(1000, 20000, size=args.depth + 8 * args.batch).tolist()
    prompts = [[m.tokens.bos] + ids[7 * i:7 * i + args.depth - 1] for i in range(args.batch)]
    fixed = GenParams(max_new_tokens=args.tokens, stop_on_eos=False, repetition_guard=False)
    outs, timing = gen.run(prompts, [fixed] * args.batch)
    events = json.loads(Path(decoder.end_profiling()).read_text())
    per_op: collections.Counter[str] = collections.Counter()
    per_weight: collections.Counter[str] = collections.Counter()
    count: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        shapes = e["args"].get("input_type_shape", [])
        first = list(shapes[0].values())[0] if shapes else []
        if len(first) != 3 or first[1] != 1:
            continue  # a prefill chunk
        op = e["args"].get("op_name", "?")
        per_op[op] += e["dur"]
        count[op] += 1
        if op == "MatMulNBits":
            per_weight["lm_head" if "lm_head" in e["name"] else e["name"].split("/")[-2]] += e["dur"]
    steps = timing.steps
    total = sum(per_op.values())
    print(f"{args.batch} row(s) after {args.depth} tokens, {steps} decode steps; kernel time per step "
          f"{total / steps / 1000:.2f} ms")
    for op, us in per_op.most_common(10):
        print(f"  {op:36s} {us / steps / 1000:7.3f} ms/step {100 * us / total:5.1f} %  ({count[op] // steps} nodes)")
    print("  MatMulNBits by weight:")
    for name, us in per_weight.most_common(8):
        print(f"    {name:20s} {us / steps / 1000:7.3f} ms/step")
    gqa = per_op["GroupQueryAttention"] / steps / 1000
    mm = per_op["MatMulNBits"] / steps / 1000
    head = per_weight["lm_head"] / steps / 1000
    print(f"depth={args.depth} batch={args.batch} step_kernel_ms={total / steps / 1000:.2f} matmulnbits_ms={mm:.2f} "
          f"lm_head_ms={head:.2f} gqa_ms={gqa:.2f} gqa_share={gqa / (total / steps / 1000):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
