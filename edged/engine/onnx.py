"""The Gemma 3 engine on ONNX Runtime: a model folder in, Generations out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import onnxruntime as ort
from PIL import Image

from edged.config import ModelSettings
from edged.engine.api import BatchTiming, Generation, ModelInfo, ModelUnavailable, Request, RequestError
from edged.engine.generate import Generator, GenParams
from edged.engine.images import batch_pixels, pan_and_scan
from edged.engine.session import SessionSettings, choose_provider, open_session
from edged.engine.slots import SlotGenerator
from edged.engine.tokenizer import GemmaTokenizer
from edged.hugepages import anon_huge_mb
from edged.logs import get_logger
from edged.models.manifest import Manifest, ManifestError

log = get_logger("edged.engine")


@dataclass(frozen=True)
class DecodeSettings:
    decoder: str = "auto"  # auto: the fused decoder where the model has one; traced: the exported graph
    slots: int = 8  # sequences decoded together (KV slots, preallocated)
    context: int = 0  # positions each slot holds; 0: the model's context
    prefill_chunk: int = 256  # a long prompt is prefilled this many tokens at a time, between decode steps


class OnnxEngine:
    def __init__(self, model_dir: Path, session: SessionSettings, defaults: Optional[GenParams] = None,
                 decode: Optional[DecodeSettings] = None) -> None:
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
        decode = decode or DecodeSettings()
        fused = m.graphs.get("decoder_fused") if decode.decoder != "traced" else None
        want, why = choose_provider(session)
        self.embed, got = open_session(model_dir / m.graph("embed"), session, want)
        if fused and got != "cpu" and decode.decoder == "auto":
            # CUDA registers GroupQueryAttention for fp16/bf16 only, and this graph is fp32 (bf16
            # fused graphs are not built yet): its attention would fall back to the CPU.
            log.info("fused_decoder_skipped", provider=got,
                     detail="the fused decoder is fp32; on a device the traced decoder runs (model.decoder: fused"
                            " forces it)")
            fused = None
        self.decoder = None
        if fused:
            try:
                self.decoder, got = open_session(model_dir / fused, session, got)
            except ModelUnavailable as exc:
                if decode.decoder == "fused":
                    raise
                # An older ONNX Runtime (1.23, the last for Python 3.10) lacks attributes the
                # fused graph uses (GroupQueryAttention's sliding_window_cache): run the traced one.
                log.warning("fused_decoder_unavailable", error=str(exc).splitlines()[0][:400],
                            onnxruntime=ort.__version__,
                            detail="the traced decoder runs instead (no continuous batching); ONNX Runtime"
                                   " 1.31 or newer runs the fused one")
                fused = None
        if self.decoder is None:
            self.decoder, got = open_session(model_dir / m.graph("decoder"), session, got)
        self.vision: Optional[ort.InferenceSession] = None
        if m.graphs.get("vision"):
            self.vision, got = open_session(model_dir / m.graph("vision"), session, got)
        self.name = m.name
        self.provider = got
        self.tokenizer = GemmaTokenizer(model_dir / "tokenizer.json", m.tokens)
        self.generator: Union[Generator, SlotGenerator]
        if decode.decoder == "fused" and not fused:
            raise ModelUnavailable(f"{model_dir}: model.decoder is fused, but {m.name} has no fused decoder"
                                   " (imported releases and models exported before it have none; re-export"
                                   " the model with this edged, or set model.decoder: auto)")
        # With slots, one call takes any number of prompts and keeps the slots full (continuous batching).
        self.continuous = bool(fused)
        if fused:
            greedy = None
            if got != "cpu" and m.graphs.get("greedy"):  # on a device only token ids cross to the host
                greedy, got = open_session(model_dir / m.graph("greedy"), session, got)
            self.generator = SlotGenerator(self.embed, self.decoder, m, device=got, slots=decode.slots,
                                           context=decode.context or None, chunk=decode.prefill_chunk,
                                           greedy=greedy)
        else:
            self.generator = Generator(self.embed, self.decoder, m, device=got)
        self.defaults = defaults or GenParams()
        self._next_ticket = 0
        self._stops: dict[int, tuple[str, ...]] = {}
        self.last_timing = BatchTiming()
        self.load_s = time.perf_counter() - t0
        kv = self.generator.kv_bytes() if isinstance(self.generator, SlotGenerator) else None
        log.info("model_loaded", model=m.name, weights=m.weights, provider=got, reason=why,
                 load_s=round(self.load_s, 2), context=m.text.context_length, chat=m.instruction_tuned,
                 decoder="fused" if fused else "traced", slots=decode.slots if fused else None,
                 kv_reserved_mb=round(kv / 2**20) if kv else None, anon_huge_mb=anon_huge_mb())

    @property
    def sees_images(self) -> bool:
        """Whether requests may carry images (the model has a vision encoder)."""
        return self.vision is not None

    @property
    def heartbeat(self) -> Callable[[], None]:
        return getattr(self.generator, "heartbeat", lambda: None)

    @heartbeat.setter
    def heartbeat(self, beat: Callable[[], None]) -> None:
        """Called about once a second during a long continuous-batching call."""
        if isinstance(self.generator, SlotGenerator):
            self.generator.heartbeat = beat

    def info(self) -> ModelInfo:
        return ModelInfo(name=self.name, context_length=self.manifest.text.context_length,
                         instruction_tuned=self.manifest.instruction_tuned,
                         count_tokens=lambda text: len(self.tokenizer.encode(text)))

    def _stop_check(self, stops: Sequence[str]) -> Optional[Callable[[list[int]], bool]]:
        """A check for stop strings on the decoded tail (a string may span several tokens)."""
        if not stops:
            return None
        window = max(len(s) for s in stops) + 8  # tokens: at least one character each

        def check(tokens: list[int]) -> bool:
            tail = self.tokenizer.decode(tokens[-window:])
            if len(tokens) <= window:
                tail = tail.lstrip()  # leading blank lines are not the end of an answer not yet begun
            return any(s in tail for s in stops)
        return check

    def _text(self, tokens: Sequence[int], stops: Sequence[str]) -> str:
        text = self.tokenizer.decode(tokens)
        begin = len(text) - len(text.lstrip())
        cut = min((i for i in (text.find(s, begin) for s in stops) if i >= 0), default=-1)
        return text[:cut] if cut >= 0 else text

    def views(self, req: Request) -> list[list[Image.Image]]:
        """Per image: the whole picture, then its pan-and-scan crops when the request asks for them."""
        if req.images and self.vision is None:
            raise RequestError(f"model {self.name} has no vision encoder: it cannot read images")
        return [[im, *(pan_and_scan(im, req.pan_and_scan) if req.pan_and_scan else [])] for im in req.images]

    def prompt_ids(self, req: Request, views: list[list[Image.Image]]) -> list[int]:
        n_tokens = self.manifest.vision.tokens_per_image if req.images and self.manifest.vision else 0
        return self.tokenizer.prompt(req.text, chat=self.manifest.instruction_tuned, images=len(req.images),
                                     image_tokens=n_tokens, crops=[len(v) - 1 for v in views])

    def image_features(self, views: Sequence[list[list[Image.Image]]]) -> Optional[list[Optional[np.ndarray]]]:
        """Every picture of the batch through the vision graph at once; rows per request, in order."""
        flat = [[im for group in req_views for im in group] for req_views in views]
        images = [im for req in flat for im in req]
        if not images:
            return None
        v = self.manifest.vision
        assert v is not None and self.vision is not None  # views() refused images for a model without them
        feats = self.vision.run(None, {"pixel_values": batch_pixels(images, v.image_size, v.mean, v.std)})[0]
        out: list[Optional[np.ndarray]] = []
        at = 0
        for req in flat:
            n = len(req)
            out.append(feats[at:at + n].reshape(-1, feats.shape[-1]) if n else None)
            at += n
        return out

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        views = [self.views(r) for r in requests]
        prompts = [self.prompt_ids(r, v) for r, v in zip(requests, views, strict=True)]
        features = self.image_features(views)
        params = [self._params(r) for r in requests]
        outs, self.last_timing = self.generator.run(prompts, params, features)
        return [Generation(self._text(o.tokens, r.stop), o.prompt_tokens, len(o.tokens), o.finish_reason)
                for o, r in zip(outs, requests, strict=True)]

    # -- the stream (continuous batching across engine calls; fused decoder only) ----------------

    def submit(self, request: Request) -> int:
        """Queue one request; it joins the running rows at the next free slot. Returns its ticket.
        Raises RequestError for a request that can never run (nothing is queued then)."""
        gen = self._slots()
        views = self.views(request)  # a model without a vision encoder says so
        features = self.image_features([views])
        gen.add(self._next_ticket, self.prompt_ids(request, views), self._params(request), None,
                features[0] if features else None)
        ticket = self._next_ticket
        self._next_ticket += 1
        self._stops[ticket] = request.stop
        return ticket

    def step(self) -> list[tuple[int, Generation]]:
        """One scheduling step (a prompt chunk, one token for every running row); what ended."""
        out = []
        for row in self._slots().step():
            stops = self._stops.pop(row.index, ())
            o = row.out
            out.append((row.index, Generation(self._text(o.tokens, stops), o.prompt_tokens, len(o.tokens),
                                              o.finish_reason)))
        return out

    def free_slots(self) -> int:
        return self._slots().free()

    def in_flight(self) -> int:
        return self._slots().busy()

    def abandon(self) -> None:
        """Drop every submitted request (after an engine error or a stop)."""
        self._slots().clear()
        self._stops.clear()

    def take_timing(self) -> BatchTiming:
        """The stream's prefill/decode time since the last call."""
        gen = self._slots()
        timing, gen.timing = gen.timing, BatchTiming()
        return timing

    def _slots(self) -> SlotGenerator:
        if not isinstance(self.generator, SlotGenerator):
            raise RuntimeError("this engine runs the traced decoder: no stream, use generate()")
        return self.generator

    def _params(self, r: Request) -> GenParams:
        d, s = self.defaults, r.sampling
        return GenParams(
            max_new_tokens=r.max_new_tokens or d.max_new_tokens,
            temperature=s.temperature if s else d.temperature, top_k=s.top_k if s else d.top_k,
            top_p=s.top_p if s else d.top_p, seed=s.seed if s else d.seed,
            stop_check=self._stop_check(r.stop),
        )

    def close(self) -> None:
        self.embed = self.decoder = self.vision = None


def load(settings: ModelSettings, model_dir: Path) -> OnnxEngine:
    session = SessionSettings(provider=settings.provider, threads=settings.threads,
                              optimization=settings.graph_optimization)
    defaults = GenParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                         top_k=settings.top_k, top_p=settings.top_p, seed=settings.seed)
    decode = DecodeSettings(decoder=settings.decoder, slots=settings.batch_size, context=settings.context,
                            prefill_chunk=settings.prefill_chunk)
    return OnnxEngine(model_dir, session, defaults, decode)
