#!/usr/bin/env python3
"""Speed of the vision graph, and what int8/int4 weights do to its image features.

Builds the vision tower + projector of a recipe with random weights (models/*.json),
exports vision_encoder.onnx with the project's export code, then measures images/s on the
CPU for fp32, int8 and int4 (MatMulNBits) graphs and the relative error of their features
against fp32. Random weights make the errors indicative, not final.
Usage: python bench/vision.py [--recipe models/tiny-gemma3-vision.json] [--images 8]
Ends with one key=value summary line.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edged.models import graphs
from edged.models.quantize import quantize_nbits
from edged.models.random_model import build_random


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = len(os.sched_getaffinity(0))
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe",
                    default=str(Path(__file__).resolve().parent.parent / "models" / "tiny-gemma3-vision.json"))
    ap.add_argument("--images", type=int, default=8, help="images per timed batch")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("onnxruntime.quantization").setLevel(logging.ERROR)

    loaded = build_random(Path(args.recipe), print)
    size = loaded.model.config.vision_config.image_size
    work = Path(tempfile.mkdtemp(prefix="edged-vision-bench-"))
    t0 = time.perf_counter()
    fp32 = graphs.export_vision(loaded.model.model, size, work / "vision_fp32.onnx")
    print(f"exported {fp32.name} in {time.perf_counter() - t0:.1f}s "
          f"({sum(p.stat().st_size for p in work.iterdir()) / 2**20:.0f} MiB)")
    variants = {"fp32": fp32}
    for bits in (8, 4):
        out = work / f"vision_int{bits}.onnx"
        quantize_nbits(fp32, out, bits=bits, block_size=32, symmetric=True, accuracy_level=4)
        variants[f"int{bits}"] = out

    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, size=(args.images, 3, size, size)).astype(np.float32)
    ref = None
    summary = {}
    for name, path in variants.items():
        sess = session(path)
        sess.run(None, {"pixel_values": pixels[:1]})  # warm-up
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            feats = sess.run(None, {"pixel_values": pixels})[0]
            rates.append(args.images / (time.perf_counter() - t0))
        rate = statistics.median(rates)
        if ref is None:
            ref = feats
        rel = float(np.linalg.norm(feats - ref) / np.linalg.norm(ref))
        norms = np.linalg.norm(feats, axis=-1) * np.linalg.norm(ref, axis=-1)
        cos = float(np.mean(np.sum(feats * ref, -1) / np.maximum(norms, 1e-12)))
        mib = (path.stat().st_size + sum(p.stat().st_size for p in work.glob(path.name + ".data"))) / 2**20
        print(f"{name:5} {mib:8.1f} MiB  {rate:8.3f} images/s ({1 / rate:.2f} s/image)  "
              f"feature error vs fp32: relative {rel:.4f}, "
              f"mean cosine {cos:.5f}")
        summary[name] = (rate, rel, cos)
    print(" ".join([f"recipe={Path(args.recipe).stem} image_size={size} batch={args.images}"] +
                   [f"{n}_images_per_s={r:.3f} {n}_rel_err={e:.4f}" for n, (r, e, _c) in summary.items()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
