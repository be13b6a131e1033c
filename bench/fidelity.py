#!/usr/bin/env python3
"""How faithfully a model build answers as its reference does: perplexity, greedy agreement, size.

Usage: python bench/fidelity.py --reference FP32_DIR MODEL_DIR [MODEL_DIR ...]
       [--data bench/data] [--ctx 512] [--steps 32] [--threads N]
       [--llama-perplexity BIN --gguf FILE]

Perplexity is scored as llama.cpp's `llama-perplexity -c 512` scores it: the text (BOS first)
is cut into windows of 512 tokens, the first token of each window is BOS, and only the second
half of each window counts (each of those tokens has at least 256 tokens of context). Greedy
agreement: for each prompt of bench/data/prompts.txt, how many of the first 32 greedy tokens
equal the reference's. Size: the model's weight files (graphs and their data).

With --llama-perplexity (built from llama-cpp-python's sdist, see the README) and --gguf, the
same texts are scored by llama.cpp on the GGUF, beside ours. With --llama-f32 too (the same
GGUF made F32 by `llama-quantize --allow-requantize X.gguf X-f32.gguf F32`), llama.cpp's own
fidelity to its F32 on the same texts (`--kl-divergence`: ppl ratio, same top token), the
yardstick for ours against the fp32 export. With --llama-completion as well (target
`llama-completion` of the same build), llama.cpp's greedy agreement between the GGUF and its
F32 over the same prompts (outputs compared as Gemma tokens).

One table per model, then one key=value line per model; the last line is the last model's.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edged.engine.generate import GenParams
from edged.engine.onnx import OnnxEngine
from edged.engine.session import SessionSettings
from edged.logs import configure_logging

DATA = Path(__file__).resolve().parent / "data"
TEXTS = ("en", "fr", "de", "es")


@dataclass
class Figures:
    name: str
    weights: str
    size_mb: float
    nll: dict[str, np.ndarray] = field(default_factory=dict)  # per text: log-probs of the scored tokens
    top: dict[str, np.ndarray] = field(default_factory=dict)  # per text: the model's top token there
    greedy: list[list[int]] = field(default_factory=list)

    def ppl(self, text: str = "all") -> float:
        values = np.concatenate(list(self.nll.values())) if text == "all" else self.nll[text]
        return math.exp(-float(values.mean()))


def weights_mb(folder: Path) -> float:
    files = [p for p in folder.iterdir() if p.suffix in (".onnx", ".data") or p.name.endswith(".onnx_data")]
    return sum(p.stat().st_size for p in files) / 1e6


def windows(ids: list[int], bos: int, ctx: int) -> list[list[int]]:
    tokens = [bos, *ids]
    rows = [tokens[i * ctx:(i + 1) * ctx] for i in range(len(tokens) // ctx)]
    for row in rows:
        row[0] = bos
    return rows


def measure(folder: Path, texts: dict[str, str], prompts: list[str], args: argparse.Namespace) -> Figures:
    engine = OnnxEngine(folder, SessionSettings(provider="cpu", threads=args.threads))
    gen, bos = engine.generator, engine.manifest.tokens.bos
    fig = Figures(folder.name, engine.manifest.weights, weights_mb(folder))
    for name, text in texts.items():
        rows = windows(engine.tokenizer.encode(text), bos, args.ctx)
        scores = [gen.score(rows[i:i + 8], args.ctx // 2) for i in range(0, len(rows), 8)]
        fig.nll[name] = np.concatenate([s.logprobs.ravel() for s in scores])
        fig.top[name] = np.concatenate([s.top.ravel() for s in scores])
    fixed = GenParams(max_new_tokens=args.steps, stop_on_eos=False, repetition_guard=False)
    for prompt in prompts:
        outs, _ = gen.run([[bos, *engine.tokenizer.encode(prompt)]], [fixed])
        fig.greedy.append(outs[0].tokens)
    return fig


def agreement(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def llama_ppl(binary: str, gguf: str, path: Path, ctx: int, threads: int) -> tuple[float, int]:
    """(perplexity, scored tokens) from llama-perplexity's own final estimate."""
    run = subprocess.run([binary, "-m", gguf, "-f", str(path), "-c", str(ctx), "-b", str(ctx),
                          "-t", str(threads or 2), "--no-warmup"], capture_output=True, text=True, check=False)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", run.stdout + run.stderr)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", run.stdout + run.stderr)
    if run.returncode != 0 or not found or not chunks:
        sys.exit(f"llama-perplexity failed on {path.name}:\n{(run.stdout + run.stderr)[-2000:]}")
    return float(found.group(1)), int(chunks.group(1)) * (ctx - 1 - ctx // 2)


def llama_kld(binary: str, f32: str, gguf: str, path: Path, ctx: int, threads: int) -> tuple[float, float, int]:
    """(ppl ratio, same top token %, scored tokens) of llama.cpp on `gguf` against its own F32."""
    import tempfile

    common = ["-f", str(path), "-c", str(ctx), "-b", str(ctx), "-t", str(threads or 2), "--no-warmup"]
    with tempfile.TemporaryDirectory() as tmp:
        base = str(Path(tmp) / "base.kld")
        first = subprocess.run([binary, "-m", f32, *common, "--kl-divergence-base", base], capture_output=True,
                               text=True, check=False)
        run = subprocess.run([binary, "-m", gguf, *common, "--kl-divergence-base", base, "--kl-divergence"],
                             capture_output=True, text=True, check=False)
    out = run.stdout + run.stderr
    ratio = re.search(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)", out)
    same = re.search(r"Same top p:\s*([0-9.]+)", out)
    chunks = re.search(r"calculating perplexity over (\d+) chunks", first.stdout + first.stderr)
    if first.returncode or run.returncode or not ratio or not same or not chunks:
        sys.exit(f"llama-perplexity --kl-divergence failed on {path.name}:\n{out[-2000:]}")
    return float(ratio.group(1)), float(same.group(1)), int(chunks.group(1)) * (ctx - 1 - ctx // 2)


def llama_greedy(binary: str, model: str, prompts: list[str], steps: int, threads: int) -> list[str]:
    outs = []
    for prompt in prompts:
        run = subprocess.run([binary, "-m", model, "-p", prompt, "-n", str(steps), "--temp", "0", "--ignore-eos",
                              "-t", str(threads or 2), "--no-warmup", "-no-cnv", "--no-display-prompt", "-c", "512"],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            sys.exit(f"llama-completion failed:\n{run.stderr[-2000:]}")
        outs.append(run.stdout)
    return outs


def llama_agreement(args: argparse.Namespace, prompts: list[str]) -> list[int]:
    """llama.cpp's own greedy agreement, GGUF against its F32, in Gemma tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(args.reference / "tokenizer.json"))
    f32 = llama_greedy(args.llama_completion, args.llama_f32, prompts, args.steps, args.threads)
    quant = llama_greedy(args.llama_completion, args.gguf, prompts, args.steps, args.threads)
    ids = [[tok.encode(t, add_special_tokens=False).ids for t in pair] for pair in zip(f32, quant, strict=True)]
    return [min(agreement(a, b), args.steps) for a, b in ids]


def report(fig: Figures, ref: Figures | None, llama: dict[str, float]) -> dict[str, float]:
    print(f"\n{fig.name}  ({fig.weights}, weights {fig.size_mb:.1f} MB)")
    head = f"{'text':6} {'tokens':>7} {'ppl':>9}"
    head += f" {'ref ppl':>9} {'ratio':>7}" if ref else ""
    head += f" {'llama.cpp':>10}" if llama else ""
    print(head)
    for text in [*fig.nll, "all"]:
        tokens = sum(len(v) for v in fig.nll.values()) if text == "all" else len(fig.nll[text])
        line = f"{text:6} {tokens:7d} {fig.ppl(text):9.4f}"
        if ref:
            line += f" {ref.ppl(text):9.4f} {fig.ppl(text) / ref.ppl(text):7.4f}"
        if llama:
            line += f" {llama.get(text, float('nan')):10.4f}"
        print(line)
    out = {"size_mb": fig.size_mb, "ppl": fig.ppl()}
    if ref:
        agree = [agreement(a, b) for a, b in zip(fig.greedy, ref.greedy, strict=True)]
        print(f"greedy agreement with {ref.name} ({len(agree)} prompts x {len(fig.greedy[0])} tokens): "
              f"median {statistics.median(agree):g}, min {min(agree)}, all {agree}")
        same = np.concatenate([fig.top[t] == ref.top[t] for t in fig.top]).mean()
        print(f"same top token as {ref.name} at the scored positions (teacher-forced): {100 * same:.2f} %")
        out |= {"ppl_ratio": fig.ppl() / ref.ppl(), "agreement_median": statistics.median(agree),
                "same_top_pct": 100 * float(same)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="model folders to measure")
    ap.add_argument("--reference", type=Path, help="the fp32 export every model is compared with")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--llama-perplexity", help="llama.cpp's llama-perplexity binary")
    ap.add_argument("--gguf", help="the GGUF llama-perplexity scores")
    ap.add_argument("--llama-f32", help="the same GGUF as F32: llama.cpp's own fidelity as a yardstick")
    ap.add_argument("--llama-completion", help="llama.cpp's llama-completion: its own greedy agreement too")
    args = ap.parse_args()
    configure_logging("warning", "console")
    paths = {t: args.data / f"{t}.txt" for t in TEXTS}
    texts = {t: p.read_text(encoding="utf-8") for t, p in paths.items() if p.exists()}
    prompts = [p for p in (args.data / "prompts.txt").read_text(encoding="utf-8").splitlines() if p.strip()]

    llama: dict[str, float] = {}
    if args.llama_perplexity and args.gguf:
        counts = {}
        for t in texts:
            llama[t], counts[t] = llama_ppl(args.llama_perplexity, args.gguf, args.data / f"{t}.txt", args.ctx,
                                            args.threads)
        total = sum(counts.values())
        llama["all"] = math.exp(sum(counts[t] * math.log(llama[t]) for t in texts) / total)
    yardstick = ""
    if llama and args.llama_f32:
        kld = {t: llama_kld(args.llama_perplexity, args.llama_f32, args.gguf, args.data / f"{t}.txt", args.ctx,
                            args.threads) for t in texts}
        print("llama.cpp on the GGUF against its own F32 (--kl-divergence):")
        for t, (ratio, same, _) in kld.items():
            print(f"  {t:6} ppl ratio {ratio:.4f}  same top token {same:.2f} %")
        n = sum(k[2] for k in kld.values())
        ratio = math.exp(sum(k[2] * math.log(k[0]) for k in kld.values()) / n)
        same = sum(k[2] * k[1] for k in kld.values()) / n
        yardstick = f"llama_cpp_vs_own_f32 ppl_ratio={ratio:.4f} same_top_pct={same:.2f}"
        if args.llama_completion and args.reference:
            agree = llama_agreement(args, prompts)
            print(f"  greedy agreement ({len(agree)} prompts x {args.steps} tokens): "
                  f"median {statistics.median(agree):g}, all {agree}")
            yardstick += f" agreement_median={statistics.median(agree):g}"

    ref = measure(args.reference, texts, prompts, args) if args.reference else None
    lines = []
    if ref:
        report(ref, None, llama)
    for folder in args.models:
        fig = ref if ref and folder.resolve() == args.reference.resolve() else measure(folder, texts, prompts, args)
        figures = report(fig, ref, llama)
        lines.append(f"variant={fig.name} " + " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    if yardstick:
        lines.insert(0, yardstick)
    if llama:
        lines.insert(0, f"llama_cpp_ppl={llama['all']:.4f}")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
