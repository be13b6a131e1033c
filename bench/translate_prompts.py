#!/usr/bin/env python3
"""Zero-shot against few-shot translation prompts on a base model, scored with chrF.

Usage: python bench/translate_prompts.py [--model DIR] [--data bench/data/translation_dev.tsv]
       [--max-new-tokens 128] [--threads N]
       (default model: the built-in one, ~/.cache/edged/models/gemma-3-270m)

Each English sentence of the dev set goes through edged's own translate task (the prompt,
stops and output checks a job gets), once with `few_shot: off` (today's completion prompt)
and once with `few_shot: always` (three example pairs, tasks/fewshot.py), greedy. chrF
(sacrebleu, `pip install 'edged[bench]'`) against the references, per language; `echo` is
the share of outputs that are mostly the English again (chrF against the source above 60). A
failed output (empty, a loop) scores as an empty translation.

Ends with `wins=…` (the languages where few-shot scored higher by at least --margin chrF),
the set tasks/fewshot.py's WINS holds.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from edged.config import Settings
from edged.engine.onnx import OnnxEngine
from edged.engine.session import SessionSettings
from edged.logs import configure_logging
from edged.models.default import cache_dir
from edged.tasks import fewshot, translate
from edged.tasks.base import InputError

DEV = Path(__file__).resolve().parent / "data" / "translation_dev.tsv"


def translations(engine: OnnxEngine, rows: list[tuple[str, str]], lang: str, mode: str, max_new: int) -> list[str]:
    settings = Settings.model_validate({"tasks": {"translate": {"few_shot": mode, "max_new_tokens": max_new}}})
    info = engine.info()
    prepared = [translate.prepare({"target_language": lang}, src.encode(), settings, info) for src, _ in rows]
    flat = [r for p in prepared for r in p.requests]
    gens = iter(engine.generate(flat))
    out = []
    for p in prepared:
        mine = [next(gens) for _ in p.requests]
        try:
            out.append(p.assemble(mine).output)
        except InputError:
            out.append("")
    return out


def main() -> int:
    import sacrebleu

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=cache_dir() / "models" / "gemma-3-270m")
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--margin", type=float, default=1.0, help="chrF points few-shot must win by")
    ap.add_argument("--show", type=int, default=0, help="print the first N outputs of each language")
    args = ap.parse_args()
    configure_logging("warning", "console")
    by_lang: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(args.data, encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            by_lang[row["lang"]].append((row["english"], row["reference"]))
    engine = OnnxEngine(args.model, SessionSettings(provider="cpu", threads=args.threads))
    print(f"model={engine.name} weights={engine.manifest.weights} sentences={sum(map(len, by_lang.values()))}")
    print(f"{'lang':5} {'n':>3} {'zero-shot':>10} {'few-shot':>9} {'delta':>7} {'echo0':>6} {'echo3':>6}")
    wins, lines = [], []
    for lang, rows in by_lang.items():
        refs = [ref for _, ref in rows]
        scores, echoes = {}, {}
        for mode in ("off", "always"):
            hyps = translations(engine, rows, lang, mode, args.max_new_tokens)
            scores[mode] = sacrebleu.corpus_chrf(hyps, [refs]).score
            echoes[mode] = sum(sacrebleu.sentence_chrf(h, [src]).score > 60 for h, (src, _) in zip(hyps, rows,
                                                                                                  strict=True))
            for h, (src, _) in list(zip(hyps, rows, strict=True))[:args.show]:
                print(f"  [{lang} {mode}] {src!r} -> {h!r}")
        delta = scores["always"] - scores["off"]
        if delta >= args.margin and fewshot.base(lang) in fewshot.EXAMPLES:
            wins.append(lang)
        print(f"{lang:5} {len(rows):3d} {scores['off']:10.1f} {scores['always']:9.1f} {delta:+7.1f} "
              f"{echoes['off']:6d} {echoes['always']:6d}", flush=True)
        lines.append(f"lang={lang} chrf_zero={scores['off']:.1f} chrf_few={scores['always']:.1f}")
    print("\n".join(lines))
    print(f"wins={','.join(wins) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
