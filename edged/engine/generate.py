"""Batched generation over the embed and decoder graphs, with the KV cache kept in OrtValues.

Prompts of different lengths are left-padded into one batch (padding masked, positions
counted from each row's first real token). Each step feeds the previous step's `present.*`
outputs back as `past_key_values.*` through I/O binding, so on CUDA the cache never leaves
the device; only the last position's logits come to the host for token choice. A row that
finishes leaves the batch (the cache is compacted then, the one time it crosses to the host),
so finished sequences stop costing work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import onnxruntime as ort

from edged.engine.api import BatchTiming, FinishReason, RequestError
from edged.models.manifest import Manifest

_NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


@dataclass(frozen=True)
class GenParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None
    repetition_guard: bool = True
    stop_on_eos: bool = True  # False only for benchmarks that need a fixed length
    # Called with the tokens so far after each new token; True ends the row (stop strings).
    stop_check: Optional[Callable[[list[int]], bool]] = None


@dataclass
class SeqOut:
    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    finish_reason: FinishReason = "length"


class Scored(NamedTuple):
    logprobs: np.ndarray  # float64 [rows, positions]: log p(actual next token)
    top: np.ndarray  # int64 [rows, positions]: the model's own most likely next token


def repeating(tokens: Sequence[int], max_period: int = 32, min_span: int = 48, min_reps: int = 4) -> bool:
    """True when the tail is one short pattern repeated: a loop the model will not leave."""
    n = len(tokens)
    for period in range(1, max_period + 1):
        reps = max(min_reps, -(-min_span // period))
        span = period * reps
        if span > n:
            continue
        tail = tokens[n - span:]
        unit = tail[-period:]
        if all(tail[i] == unit[i % period] for i in range(span)):
            return True
    return False


def _nucleus(x: np.ndarray, pool: np.ndarray, top_p: float) -> np.ndarray:
    """The ids of `pool` in the smallest most-likely set whose probability reaches top_p.

    Sorts only the head of the distribution (grown until it holds top_p), not all 262k logits:
    a full sort per row per step cost 10.7 ms on a 2-core box."""
    z = x[pool]
    m = z.max()
    total = np.exp(z - m, dtype=np.float64).sum()
    k = min(64, pool.size)
    while True:
        head = np.argpartition(z, -k)[-k:] if k < pool.size else np.arange(pool.size)
        order = head[np.argsort(-z[head], kind="stable")]
        probs = np.exp(z[order] - m, dtype=np.float64) / total
        cum = np.cumsum(probs)
        if cum[-1] >= top_p or k >= pool.size:
            return pool[order[(cum - probs) < top_p]]
        k = min(k * 4, pool.size)


def _choose(logits: np.ndarray, p: GenParams, rng: Optional[np.random.Generator]) -> int:
    if p.temperature <= 0 or rng is None:
        return int(np.argmax(logits))
    x = logits.astype(np.float32) / np.float32(p.temperature)
    pool = np.arange(x.size)
    if p.top_k and p.top_k < x.size:
        pool = np.argpartition(x, -p.top_k)[-p.top_k:]
    if p.top_p < 1.0:
        pool = _nucleus(x, pool, p.top_p)
    w = np.exp(x[pool] - x[pool].max(), dtype=np.float64)
    return int(pool[rng.choice(pool.size, p=w / w.sum())])


def record(out: SeqOut, token: int, p: GenParams, eos: set[int], context: int) -> bool:
    """Record the chosen `token` in `out`; True when the sequence ends with it (finish_reason set)."""
    if token in eos and p.stop_on_eos:
        out.finish_reason = "stop"
        return True
    out.tokens.append(token)
    if len(out.tokens) >= p.max_new_tokens or out.prompt_tokens + len(out.tokens) >= context:
        out.finish_reason = "length"
        return True
    if p.stop_check is not None and p.stop_check(out.tokens):
        out.finish_reason = "stop"
        return True
    if p.repetition_guard and len(out.tokens) % 8 == 0 and repeating(out.tokens):
        out.finish_reason = "repetition"
        return True
    return False


class Generator:
    def __init__(self, embed: ort.InferenceSession, decoder: ort.InferenceSession, manifest: Manifest,
                 device: str = "cpu") -> None:
        self.embed = embed
        self.decoder = decoder
        self.m = manifest
        self.device = device
        t = manifest.text
        self.layers = t.num_layers
        self.past_names = [f"past_key_values.{i}.{k}" for i in range(t.num_layers) for k in ("key", "value")]
        self.present_names = [f"present.{i}.{k}" for i in range(t.num_layers) for k in ("key", "value")]
        types = {i.name: i.type for i in decoder.get_inputs()}
        self.kv_dtype = _NP.get(types.get(self.past_names[0], "tensor(float)"), np.float32)
        self.embed_dtype = _NP.get(types.get("inputs_embeds", "tensor(float)"), np.float32)
        self.has_position_ids = "position_ids" in types
        self.has_token_types = "token_type_ids" in types
        self.eos = set(manifest.tokens.eos)
        self.pos_base = int(manifest.decoder.get("position_ids_base", 0))

    # -- OrtValue plumbing --------------------------------------------------------------

    def _value(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def _embed(self, ids: np.ndarray, features: Optional[list[Optional[np.ndarray]]] = None) -> ort.OrtValue:
        embeds = self.embed.run(None, {"input_ids": ids})[0]
        if features:
            soft = self.m.tokens.image_soft_token
            for row, feats in enumerate(features):
                if feats is not None:
                    slots = np.nonzero(ids[row] == soft)[0]
                    if len(slots) != len(feats):
                        raise RequestError(f"{len(slots)} image token slots for {len(feats)} image feature rows")
                    embeds[row, slots] = feats.astype(embeds.dtype)
        return self._value(embeds.astype(self.embed_dtype, copy=False))

    def _step(self, embeds: ort.OrtValue, mask: np.ndarray, pos: np.ndarray, past: list[ort.OrtValue],
              token_types: Optional[np.ndarray] = None) -> tuple[np.ndarray, list[ort.OrtValue]]:
        b = self.decoder.io_binding()
        b.bind_ortvalue_input("inputs_embeds", embeds)
        b.bind_cpu_input("attention_mask", mask)
        if self.has_position_ids:
            b.bind_cpu_input("position_ids", pos)
        if self.has_token_types:
            b.bind_cpu_input("token_type_ids", token_types if token_types is not None else np.zeros_like(pos))
        for name, value in zip(self.past_names, past, strict=True):
            b.bind_ortvalue_input(name, value)
        b.bind_output("logits", "cpu")
        for name in self.present_names:
            b.bind_output(name, self.device)
        self.decoder.run_with_iobinding(b)
        outs = b.get_outputs()
        logits = outs[0].numpy()
        return logits[:, -1, :], list(outs[1:])

    def _compact(self, past: list[ort.OrtValue], keep: list[int]) -> list[ort.OrtValue]:
        return [self._value(v.numpy()[keep]) for v in past]

    # -- generation ---------------------------------------------------------------------

    def run(self, prompts: Sequence[Sequence[int]], params: Sequence[GenParams],
            features: Optional[list[Optional[np.ndarray]]] = None) -> tuple[list[SeqOut], BatchTiming]:
        ctx = self.m.text.context_length
        for prompt in prompts:
            if len(prompt) > ctx:
                raise RequestError(f"prompt is {len(prompt)} tokens, longer than the model's context of {ctx}")
        n = len(prompts)
        width = max(len(p) for p in prompts)
        ids = np.full((n, width), self.m.tokens.pad, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0) + self.pos_base
        kvh, hd = self.m.text.num_kv_heads, self.m.text.head_dim
        past = [self._value(np.zeros((n, kvh, 0, hd), dtype=self.kv_dtype)) for _ in self.past_names]
        outs = [SeqOut(prompt_tokens=len(prompt)) for prompt in prompts]
        rngs = [np.random.default_rng(gp.seed) if gp.temperature > 0 else None for gp in params]
        timing = BatchTiming()

        t0 = time.perf_counter()
        soft = self.m.tokens.image_soft_token
        types = np.equal(ids, soft).astype(np.int64) if features and soft is not None else None
        logits, past = self._step(self._embed(ids, features), mask, pos, past, types)
        timing.prefill_ms = (time.perf_counter() - t0) * 1000
        active = list(range(n))  # batch row -> request index
        last_pos = pos[:, -1].copy()
        t0 = time.perf_counter()
        while True:
            next_ids, keep = [], []
            for row, idx in enumerate(active):
                out, p = outs[idx], params[idx]
                token = _choose(logits[row], p, rngs[idx])
                if record(out, token, p, self.eos, ctx):
                    continue
                next_ids.append(token)
                keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                past = self._compact(past, keep)
                mask, last_pos = mask[keep], last_pos[keep]
                active = [active[r] for r in keep]
            mask = np.concatenate([mask, np.ones((len(active), 1), dtype=np.int64)], axis=1)
            last_pos = last_pos + 1
            embeds = self._embed(np.asarray(next_ids, dtype=np.int64)[:, None])
            logits, past = self._step(embeds, mask, last_pos[:, None], past)
            timing.steps += 1
        timing.decode_ms = (time.perf_counter() - t0) * 1000
        return outs, timing

    def score(self, rows: Sequence[Sequence[int]], first: int) -> Scored:
        """Log-probabilities of each token after position `first` given all before it, for rows of
        one length ([rows, length - 1 - first]), and the model's own top token at each of those
        positions. As llama-perplexity scores a window (its second half), but one position per
        step, because the decoder returns the last position's logits only."""
        ids = np.asarray(rows, dtype=np.int64)
        n, length = ids.shape
        if not 0 <= first < length - 1:
            raise RequestError(f"score: first position {first} outside rows of {length} tokens")
        kvh, hd = self.m.text.num_kv_heads, self.m.text.head_dim
        past = [self._value(np.zeros((n, kvh, 0, hd), dtype=self.kv_dtype)) for _ in self.past_names]
        mask = np.ones((n, first + 1), dtype=np.int64)
        pos = np.arange(first + 1, dtype=np.int64)[None].repeat(n, 0) + self.pos_base
        logits, past = self._step(self._embed(ids[:, :first + 1]), mask, pos, past)
        scores = np.empty((n, length - 1 - first), dtype=np.float64)
        best = np.empty((n, length - 1 - first), dtype=np.int64)
        for j in range(first, length - 1):
            z = logits.astype(np.float64)
            top = z.max(axis=1, keepdims=True)
            lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
            scores[:, j - first] = z[np.arange(n), ids[:, j + 1]] - lse
            best[:, j - first] = z.argmax(axis=1)
            if j + 1 < length - 1:
                mask = np.ones((n, j + 2), dtype=np.int64)
                logits, past = self._step(self._embed(ids[:, j + 1:j + 2]), mask,
                                          np.full((n, 1), j + 1 + self.pos_base, dtype=np.int64), past)
        return Scored(scores, best)
