"""The Gemma 3 engine on ONNX Runtime: a model folder in, Generations out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

from edged.config import ModelSettings
from edged.engine.api import Generation, ModelUnavailable, Request, RequestError
from edged.engine.generate import BatchTiming, Generator, GenParams
from edged.engine.session import SessionSettings, choose_provider, open_session
from edged.engine.tokenizer import GemmaTokenizer
from edged.logs import get_logger
from edged.models.manifest import Manifest, ManifestError

log = get_logger("edged.engine")


class OnnxEngine:
    def __init__(self, model_dir: Path, session: SessionSettings, defaults: Optional[GenParams] = None) -> None:
        t0 = time.perf_counter()
        try:
            self.manifest = Manifest.load(model_dir)
        except ManifestError as exc:
            raise ModelUnavailable(str(exc)) from None
        m = self.manifest
        missing = [n for n in m.graphs.values() if n and not (model_dir / n).is_file()]
        if not (model_dir / "tokenizer.json").is_file():
            missing.append("tokenizer.json")
        if missing:
            raise ModelUnavailable(f"{model_dir}: missing {', '.join(missing)}")
        want, why = choose_provider(session)
        self.embed, got = open_session(model_dir / m.graphs["embed"], session, want)
        self.decoder, got = open_session(model_dir / m.graphs["decoder"], session, got)
        self.name = m.name
        self.provider = got
        self.tokenizer = GemmaTokenizer(model_dir / "tokenizer.json", m.tokens)
        self.generator = Generator(self.embed, self.decoder, m, device=got)
        self.defaults = defaults or GenParams()
        self.last_timing = BatchTiming()
        self.load_s = time.perf_counter() - t0
        log.info("model_loaded", model=m.name, weights=m.weights, provider=got, reason=why,
                 load_s=round(self.load_s, 2), context=m.text.context_length, chat=m.instruction_tuned)

    def prompt_ids(self, req: Request) -> list[int]:
        if req.images:
            raise RequestError(f"model {self.name} has no vision encoder: it cannot read images")
        return self.tokenizer.prompt(req.text, chat=self.manifest.instruction_tuned)

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        prompts = [self.prompt_ids(r) for r in requests]
        params = [GenParams(
            max_new_tokens=r.max_new_tokens or self.defaults.max_new_tokens,
            temperature=r.options.get("temperature", self.defaults.temperature),
            top_k=r.options.get("top_k", self.defaults.top_k),
            top_p=r.options.get("top_p", self.defaults.top_p),
            seed=r.options.get("seed", self.defaults.seed),
        ) for r in requests]
        outs, self.last_timing = self.generator.run(prompts, params)
        return [Generation(self.tokenizer.decode(o.tokens), o.prompt_tokens, len(o.tokens), o.finish_reason)
                for o in outs]

    def close(self) -> None:
        self.embed = self.decoder = None  # type: ignore[assignment]


def load(settings: ModelSettings, model_dir: Path) -> OnnxEngine:
    session = SessionSettings(provider=settings.provider, threads=settings.threads,
                              optimization=settings.graph_optimization)
    defaults = GenParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                         top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed)
    return OnnxEngine(model_dir, session, defaults)
