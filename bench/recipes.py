#!/usr/bin/env python3
"""Which int4 recipe keeps a float model closest to itself: build variants from an fp32 export
and score each with bench/fidelity.py's perplexity and greedy agreement.

Usage: python bench/recipes.py --reference FP32_DIR [--work DIR] [--keep] SPEC [SPEC ...]
       python bench/recipes.py --reference FP32_DIR --sensitivity SPEC

SPEC: algorithm:block[:sym][:int8=kind,kind][:head=4|8], e.g. `k_quant:32`, `rtn:128:sym`,
`hqq:64:int8=v_proj,down_proj`. A kind is the MatMul's module name (q_proj … down_proj); it
is kept at 8 bits in every layer. The stand-in source for Hugging Face weights is the 270M's
fp32 export (`edged model export --from GGUF --weights fp32`).

--sensitivity SPEC: the SPEC's ppl_ratio with each kind in turn at 8 bits, then with kinds
added in order of gain per extra MB while the ratio improves: the measured way to choose
`int8` kinds.

Ends with one key=value line per variant (variant=SPEC size_mb=… ppl=… ppl_ratio=…
agreement_median=…).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from edged.logs import configure_logging
from edged.models.blockwrite import write_graphs
from edged.models.manifest import MANIFEST
from edged.models.quantize import lm_head_nodes
from edged.models.recipe import Recipe, RecipeSource

sys.path.insert(0, str(Path(__file__).resolve().parent))
fidelity = importlib.import_module("fidelity")  # bench/fidelity.py: the same measurement
DATA, TEXTS, measure, report = fidelity.DATA, fidelity.TEXTS, fidelity.measure, fidelity.report

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def parse(spec: str, head: frozenset[str]) -> Recipe:
    algorithm, block, *rest = spec.split(":")
    opts: dict[str, Any] = {"algorithm": algorithm, "block": int(block), "head": head}
    for part in rest:
        if part == "sym":
            opts["symmetric"] = True
        elif part.startswith("int8="):
            opts["int8"] = tuple(f"*/{kind}/*" for kind in part[5:].split(",") if kind)
        elif part.startswith("head="):
            opts["head_bits"] = int(part[5:])
        else:
            raise SystemExit(f"{spec}: cannot read {part!r}")
    return Recipe(**opts)


def with_int8(spec: str, kinds: list[str]) -> str:
    parts = [p for p in spec.split(":") if not p.startswith("int8=")]
    return ":".join([*parts, "int8=" + ",".join(kinds)]) if kinds else ":".join(parts)


def build(reference: Path, spec: str, work: Path) -> Path:
    head = frozenset(lm_head_nodes(reference / "decoder_model_merged.onnx"))
    recipe = parse(spec, head)
    out = work / spec.replace(":", "_").replace(",", "+").replace("=", "-")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source = RecipeSource(recipe)
    types = write_graphs(source, reference, out, 4, lambda m: None)
    for f in reference.iterdir():
        if f.suffix not in (".onnx", ".data") and f.name != MANIFEST:
            shutil.copy(f, out / f.name)
    manifest = json.loads((reference / MANIFEST).read_text())
    manifest["weights"] = "int4"
    manifest["quantization"] = {**recipe.describe(), "types": dict(types), "notes": source.notes}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        paths = {t: args.data / f"{t}.txt" for t in TEXTS}
        self.texts = {t: p.read_text(encoding="utf-8") for t, p in paths.items() if p.exists()}
        self.prompts = [p for p in (args.data / "prompts.txt").read_text(encoding="utf-8").splitlines() if p.strip()]
        self.ref = measure(args.reference, self.texts, self.prompts, args)
        report(self.ref, None, {})
        self.lines: list[str] = []

    def score(self, spec: str) -> dict[str, float]:
        folder = build(self.args.reference, spec, self.args.work)
        try:
            fig = measure(folder, self.texts, self.prompts, self.args)
            fig.name = spec
            figures = report(fig, self.ref, {})
        finally:
            if not self.args.keep:
                shutil.rmtree(folder)
        self.lines.append(f"variant={spec} " + " ".join(f"{k}={v:.4f}" for k, v in figures.items()))
        print(self.lines[-1], flush=True)
        return figures


def sensitivity(bench: Bench, spec: str) -> None:
    base = bench.score(spec)
    gains = {}
    for kind in KINDS:
        f = bench.score(with_int8(spec, [kind]))
        extra = max(f["size_mb"] - base["size_mb"], 1e-3)
        gains[kind] = ((base["ppl_ratio"] - f["ppl_ratio"]) / extra, f)
    order = sorted(KINDS, key=lambda k: -gains[k][0])
    print("gain per extra MB: " + ", ".join(f"{k}={gains[k][0]:.5f}" for k in order), flush=True)
    chosen: list[str] = []
    best = base["ppl_ratio"]
    for kind in order:
        if gains[kind][0] <= 0:
            break
        if not chosen:
            chosen, best = [kind], gains[kind][1]["ppl_ratio"]
            continue
        f = bench.score(with_int8(spec, [*chosen, kind]))
        if f["ppl_ratio"] >= best:
            break
        chosen.append(kind)
        best = f["ppl_ratio"]
    print(f"chosen int8 kinds: {','.join(chosen) or 'none'} ppl_ratio={best:.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="*")
    ap.add_argument("--reference", type=Path, required=True, help="the fp32 export (source and reference)")
    ap.add_argument("--sensitivity", metavar="SPEC")
    ap.add_argument("--work", type=Path, help="where variants are built (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the built variants")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not args.specs and not args.sensitivity:
        ap.error("give SPECs or --sensitivity SPEC")
    configure_logging("warning", "console")
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        args.work = args.work or Path(tmp)
        bench = Bench(args)
        for spec in args.specs:
            bench.score(spec)
        if args.sensitivity:
            sensitivity(bench, args.sensitivity)
        print()
        print("\n".join(bench.lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
