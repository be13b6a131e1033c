"""Continuous batching over the fused decoder (models/fused.py): KV slots written in place.

The engine keeps `slots` rows of KV cache, preallocated once: global layers hold the context,
sliding layers a window-sized buffer that GroupQueryAttention evicts itself. A prompt takes a
free slot and is prefilled into it alone, in chunks of at most `chunk` tokens; every step
then decodes all running rows together, each at its own length (`seqlens_k`). A row that
finishes frees its slot at once and the next prompt takes it: nothing waits for the longest
row, nothing is copied, the cache never crosses to the host.

Step I/O stays put: token ids, embeddings, lengths, logits and the greedy choice live in
preallocated buffers that one IO binding per batch width points at; the embedding graph
writes straight into the decoder's input. A greedy row reads one int64; only sampling rows
look at logits.

A vision model's graph is masked (models/masks.py): image tokens attend to each other both
ways, so attention follows bias inputs built here at every call, every layer keeps the whole
context, and a prompt chunk never ends inside an image.

Rows are bound as contiguous ranges of the slot buffers (by pointer, so the same code serves
a device buffer). Free rows inside a range decode a throw-away token at position 0, which is
harmless: their next prompt starts the slot afresh. A row still being prefilled must not be
touched (its sliding layout depends on its length), so a decode range never spans one.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort

from edged.engine.api import BatchTiming, RequestError
from edged.engine.device_greedy import DeviceGreedy
from edged.engine.generate import GenParams, Scored, SeqOut, _choose, record
from edged.models import masks
from edged.models.manifest import WINDOW_SLACK, Manifest


@dataclass
class _Row:
    index: int  # position of the request in the caller's list
    prompt: Sequence[int]
    params: GenParams
    rng: Optional[np.random.Generator]
    out: SeqOut
    slot: int = -1
    length: int = 0  # positions in the cache
    token: int = -1  # the token to feed at the next decode step
    prefilled: bool = False
    features: Optional[np.ndarray] = None  # image features, one row per image soft token, in order
    runs: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each image's tokens


@dataclass
class _Buffers:
    """The step's host buffers, sized for all slots; a step binds the first n rows."""

    ids: np.ndarray
    embeds: np.ndarray
    seqlens: np.ndarray
    total: np.ndarray
    logits: np.ndarray
    bindings: dict[tuple[int, int], ort.IOBinding] = field(default_factory=dict)


class SlotGenerator:
    def __init__(self, embed: ort.InferenceSession, decoder: ort.InferenceSession, manifest: Manifest,
                 device: str = "cpu", slots: int = 8, context: Optional[int] = None, chunk: int = 256,
                 greedy: Optional[ort.InferenceSession] = None) -> None:
        t = manifest.text
        self.embed, self.decoder, self.m, self.device = embed, decoder, manifest, device
        self.slots = max(1, slots)
        self.context = min(context or t.context_length, t.context_length)
        self.chunk = max(1, chunk)
        self.eos = set(manifest.tokens.eos)
        types = {i.name: i.type for i in decoder.get_inputs()}
        self.masked = masks.GLOBAL in types
        window = t.sliding_window + WINDOW_SLACK - 1
        self.caps = [window if kind == "sliding_attention" and not self.masked else self.context
                     for kind in t.layer_types]
        self.bias = masks.DecodeBias(self.slots, self.context, t.sliding_window) if self.masked else None
        self.kv_shape = (t.num_kv_heads, t.head_dim)
        self.kv_dtype = np.float16 if types.get("past_key_values.0.key") == "tensor(float16)" else np.float32
        self.kv: list[ort.OrtValue] = []  # layer-major: key, value
        for cap in self.caps:
            for _ in range(2):
                self.kv.append(ort.OrtValue.ortvalue_from_shape_and_type(
                    [self.slots, *self.kv_shape[:1], cap, self.kv_shape[1]], self.kv_dtype, device, 0))
        v, h = t.vocab_size, t.hidden_size
        self.buf = _Buffers(ids=np.zeros((self.slots, 1), np.int64), embeds=np.zeros((self.slots, 1, h), np.float32),
                            seqlens=np.zeros(self.slots, np.int32), total=np.zeros((), np.int32),
                            logits=np.zeros((self.slots, 1, v), np.float32))
        self.embed_bindings: dict[int, ort.IOBinding] = {}
        # Greedy choice: on a device the greedy graph's ArgMax (device_greedy.py), on the CPU
        # numpy's argmax over the bound logits buffer.
        self.on_device = DeviceGreedy(greedy, device, self.slots, v) if greedy is not None else None
        self.device_choice = self.on_device is not None and device != "cpu"
        self.rows: list[Optional[_Row]] = [None] * self.slots
        self.waiting: deque[_Row] = deque()
        self.timing = BatchTiming()  # of the current run, or of the stream since it was last read
        # Called about once a second while a run lasts (the worker feeds the systemd watchdog from it).
        self.heartbeat: Callable[[], None] = lambda: None

    # -- binding ---------------------------------------------------------------------------

    def kv_bytes(self) -> int:
        """Bytes of KV cache held for all slots (the whole preallocation)."""
        kvh, hd = self.kv_shape
        return sum(2 * self.slots * kvh * cap * hd * np.dtype(self.kv_dtype).itemsize for cap in self.caps)

    def _bind_kv(self, b: ort.IOBinding, start: int, n: int) -> None:
        kvh, hd = self.kv_shape
        dt = self.kv_dtype
        for i, cap in enumerate(self.caps):
            row = kvh * cap * hd * np.dtype(dt).itemsize
            for j, kind in enumerate(("key", "value")):
                value = self.kv[2 * i + j]
                ptr = value.data_ptr() + start * row
                shape = [n, kvh, cap, hd]
                b.bind_input(f"past_key_values.{i}.{kind}", self.device, 0, dt, shape, ptr)
                b.bind_output(f"present.{i}.{kind}", self.device, 0, dt, shape, ptr)

    def _decode_binding(self, start: int, n: int) -> ort.IOBinding:
        key = (start, n)
        b = self.buf.bindings.get(key)
        if b is None:
            f = self.buf
            b = self.decoder.io_binding()
            h = f.embeds.shape[-1]
            b.bind_input("inputs_embeds", "cpu", 0, np.float32, [n, 1, h], f.embeds[start:].ctypes.data)
            b.bind_input("seqlens_k", "cpu", 0, np.int32, [n], f.seqlens[start:].ctypes.data)
            b.bind_input("total_sequence_length", "cpu", 0, np.int32, [], f.total.ctypes.data)
            v = f.logits.shape[-1]
            if self.device_choice:
                b.bind_output("logits", self.device, 0, np.float32, [n, 1, v], self._device().ptr(start))
            else:
                b.bind_output("logits", "cpu", 0, np.float32, [n, 1, v], f.logits[start:].ctypes.data)
            self._bind_kv(b, start, n)
            self.buf.bindings[key] = b
        return b

    def _embed_into(self, start: int, n: int) -> None:
        """The embedding graph writes the decode step's inputs_embeds in place."""
        b = self.embed_bindings.get(start * self.slots + n)
        if b is None:
            f = self.buf
            b = self.embed.io_binding()
            b.bind_input("input_ids", "cpu", 0, np.int64, [n, 1], f.ids[start:].ctypes.data)
            b.bind_output("inputs_embeds", "cpu", 0, np.float32, [n, 1, f.embeds.shape[-1]],
                          f.embeds[start:].ctypes.data)
            self.embed_bindings[start * self.slots + n] = b
        self.embed.run_with_iobinding(b)

    # -- one prompt chunk, one decode step ----------------------------------------------------

    def _prefill_chunk(self, row: _Row) -> Optional[tuple[np.ndarray, int]]:
        """Feed the next chunk of `row`'s prompt; at its end, (last logits, greedy token)."""
        return self._prefill([row])[0]

    def _first_chunks(self, rows: list[Optional[_Row]], first: _Row) -> list[_Row]:
        """`first` and the fresh rows in the slots right after it whose first chunk is as long:
        one call prefills them all (the kernel takes several rows of a chunk only without a past,
        and rows of one length need no padding, so every row's last position is its own)."""
        group = [first]
        if first.length:
            return group
        end = masks.chunk_end(0, self.chunk, len(first.prompt), first.runs)
        for s in range(first.slot + 1, self.slots):
            row = rows[s]
            if row is None or row.prefilled or row.length or \
                    masks.chunk_end(0, self.chunk, len(row.prompt), row.runs) != end:
                break
            group.append(row)
        return group

    def _prefill(self, group: list[_Row]) -> list[Optional[tuple[np.ndarray, int]]]:
        """Feed the next chunk of each row (contiguous slots, one begin and end): per row, at its
        prompt's end, (last logits, greedy token), else None."""
        row, n = group[0], len(group)
        begin = row.length
        total = masks.chunk_end(begin, self.chunk, len(row.prompt), row.runs)
        piece = np.asarray([r.prompt[begin:total] for r in group], dtype=np.int64)
        embeds = self.embed.run(None, {"input_ids": piece})[0].astype(np.float32, copy=False)
        for i, r in enumerate(group):
            if r.features is not None:
                masks.place_features(embeds[i], r.features, r.runs, begin, total)
        b = self.decoder.io_binding()
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(embeds))
        b.bind_cpu_input("seqlens_k", np.full(n, total - 1, np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(total, np.int32))
        if self.masked:
            pairs = [masks.prefill(begin, total, self.m.text.sliding_window, r.runs) for r in group]
            for k, name in enumerate((masks.GLOBAL, masks.SLIDING)):
                b.bind_cpu_input(name, np.concatenate([p[k] for p in pairs]))
        v = self.buf.logits.shape[-1]
        logits = np.empty((n, 1, v), np.float32)
        if self.device_choice:
            b.bind_output("logits", self.device, 0, np.float32, [n, 1, v], self._device().ptr(row.slot))
        else:
            b.bind_output("logits", "cpu", 0, np.float32, [n, 1, v], logits.ctypes.data)
        self._bind_kv(b, row.slot, n)
        self.decoder.run_with_iobinding(b)
        out: list[Optional[tuple[np.ndarray, int]]] = [None] * n
        ending = [i for i, r in enumerate(group) if total == len(r.prompt)]  # the others go on
        tokens = self._device().choose(row.slot, n) if self.device_choice and ending else [-1] * n
        for i, r in enumerate(group):
            r.length = total
            if i in ending:
                r.prefilled = True
                if self.device_choice and r.rng is not None:
                    logits[i, 0] = self._device().host_logits(r.slot)
                out[i] = logits[i, 0], tokens[i]
        return out

    def _ranges(self, rows: list[Optional[_Row]]) -> list[tuple[int, int]]:
        """Contiguous slot ranges to decode: all decoding rows, never a row mid-prefill."""
        out: list[tuple[int, int]] = []
        start: Optional[int] = None
        last = -1
        for s, row in enumerate(rows):
            if row is not None and not row.prefilled:  # a wall
                if start is not None:
                    out.append((start, last - start + 1))
                start = None
                continue
            if row is not None:
                start = s if start is None else start
                last = s
        if start is not None:
            out.append((start, last - start + 1))
        return out

    def _decode(self, rows: list[Optional[_Row]]) -> list[tuple[_Row, np.ndarray, int]]:
        f = self.buf
        chosen: list[tuple[_Row, np.ndarray, int]] = []
        for start, n in self._ranges(rows):
            total = 1
            for s in range(start, start + n):
                row = rows[s]
                if row is None:  # a free slot: a throw-away token at position 0
                    f.ids[s, 0], f.seqlens[s] = self.m.tokens.pad, 0
                    continue
                f.ids[s, 0] = row.token
                row.length += 1
                f.seqlens[s] = row.length - 1
                total = max(total, row.length)
            f.total[()] = total
            self._embed_into(start, n)
            b = self._decode_binding(start, n)
            if self.bias is not None:
                lengths = [int(f.seqlens[s]) + 1 for s in range(start, start + n)]
                for name, bias in self.bias.fill(lengths, total).items():
                    b.bind_input(name, "cpu", 0, np.float32, list(bias.shape), bias.ctypes.data)
            self.decoder.run_with_iobinding(b)
            greedy = self._device().choose(start, n) if self.device_choice else [-1] * n
            for s in range(start, start + n):
                row = rows[s]
                if row is None:
                    continue
                if self.device_choice and row.rng is not None:
                    f.logits[s, 0] = self._device().host_logits(s)  # a sampled row needs its logits here
                chosen.append((row, f.logits[s, 0], greedy[s - start]))
        return chosen

    @property
    def logits_dev(self) -> Optional[ort.OrtValue]:
        """The device logits buffer, once a step has written there."""
        return self.on_device.logits if self.on_device is not None else None

    def _device(self) -> DeviceGreedy:
        assert self.on_device is not None  # device_choice is set only with a greedy graph
        return self.on_device

    # -- token bookkeeping --------------------------------------------------------------------

    def _accept(self, row: _Row, logits: np.ndarray, greedy: int) -> bool:
        """Choose and record the row's next token; True when the row is finished."""
        if row.rng is not None:
            token = _choose(logits, row.params, row.rng)
        else:
            token = greedy if greedy >= 0 else int(np.argmax(logits))
        if record(row.out, token, row.params, self.eos, self.context):
            return True
        row.token = token
        return False

    def _check(self, prompt: Sequence[int]) -> None:
        if not prompt:
            raise RequestError("empty prompt")
        if len(prompt) > self.context:
            held = (f"the model's context of {self.context}" if self.context == self.m.text.context_length
                    else f"the {self.context} positions a KV slot holds (model.context)")
            raise RequestError(f"prompt is {len(prompt)} tokens, longer than {held}")

    # -- generation ---------------------------------------------------------------------------

    def run(self, prompts: Sequence[Sequence[int]], params: Sequence[GenParams],
            features: Optional[list[Optional[np.ndarray]]] = None) -> tuple[list[SeqOut], BatchTiming]:
        """All prompts, at most `slots` at a time; a finished row's slot goes to the next prompt."""
        if self.busy():
            raise RuntimeError("run() while a stream of submitted rows is in flight")
        for prompt in prompts:
            self._check(prompt)
        outs = [SeqOut(prompt_tokens=len(p)) for p in prompts]
        for i, (p, gp) in enumerate(zip(prompts, params, strict=True)):
            self.add(i, p, gp, outs[i], features[i] if features else None)
        timing = self.timing = BatchTiming()
        beat = time.monotonic()
        try:
            while self.busy():
                self.step()
                if time.monotonic() - beat >= 1.0:
                    self.heartbeat()
                    beat = time.monotonic()
        finally:
            self.clear()
        return outs, timing

    # -- the stream: rows added at any time, one scheduling step at a time -----------------------

    def add(self, index: int, prompt: Sequence[int], params: GenParams, out: Optional[SeqOut] = None,
            features: Optional[np.ndarray] = None) -> _Row:
        """Queue one prompt (`features`: its image features, a row per image soft token); it takes
        the next free slot. Raises RequestError for one that cannot run."""
        self._check(prompt)
        runs: list[tuple[int, int]] = []
        if features is not None:
            if not self.masked:
                raise RequestError("this fused decoder takes text prompts only (a text model's)")
            runs = masks.image_runs(prompt, self.m.tokens.image_soft_token)
            slots = sum(stop - start for start, stop in runs)
            if slots != len(features):
                raise RequestError(f"{slots} image token slots for {len(features)} image feature rows")
        rng = np.random.default_rng(params.seed) if params.temperature > 0 else None
        row = _Row(index, prompt, params, rng, out or SeqOut(prompt_tokens=len(prompt)),
                   features=None if features is None else np.asarray(features, np.float32), runs=runs)
        self.waiting.append(row)
        return row

    def busy(self) -> int:
        """Rows in slots or waiting for one."""
        return sum(r is not None for r in self.rows) + len(self.waiting)

    def free(self) -> int:
        """Slots no row holds or waits for."""
        return max(self.slots - self.busy(), 0)

    def clear(self) -> None:
        """Drop every row (after an error or a stop; their slots are simply reused)."""
        self.rows = [None] * self.slots
        self.waiting.clear()

    def step(self) -> list[_Row]:
        """Admit waiting rows, prefill one chunk, decode every running row once; the rows that ended."""
        rows, timing, ended = self.rows, self.timing, []
        for s in range(self.slots):
            if rows[s] is None and self.waiting:
                row = self.waiting.popleft()
                row.slot, row.length, row.prefilled = s, 0, False
                rows[s] = row
        pending = [r for r in rows if r is not None and not r.prefilled]
        if pending:
            # One chunk per step, so a long prompt never stalls the running rows for long; fresh
            # prompts of one first-chunk length side by side go in together.
            t0 = time.perf_counter()
            group = self._first_chunks(rows, pending[0])
            for row, done in zip(group, self._prefill(group), strict=True):
                if done is not None and self._accept(row, *done):
                    rows[row.slot] = None
                    ended.append(row)
            timing.prefill_ms += (time.perf_counter() - t0) * 1000
        if any(r is not None and r.prefilled for r in rows):
            t0 = time.perf_counter()
            for row, logits, greedy in self._decode(rows):
                if self._accept(row, logits, greedy):
                    rows[row.slot] = None
                    ended.append(row)
            timing.decode_ms += (time.perf_counter() - t0) * 1000
            timing.steps += 1
        return ended

    def score(self, rows: Sequence[Sequence[int]], first: int) -> Scored:
        """As Generator.score: log p of each token after `first`, and the model's own top token."""
        if self.busy():
            raise RuntimeError("score() while a stream of submitted rows is in flight")
        ids = np.asarray(rows, dtype=np.int64)
        n, length = ids.shape
        if not 0 <= first < length - 1:
            raise RequestError(f"score: first position {first} outside rows of {length} tokens")
        scores = np.empty((n, length - 1 - first), dtype=np.float64)
        best = np.empty((n, length - 1 - first), dtype=np.int64)
        for r in range(n):
            row = _Row(r, list(ids[r, :first + 1]), GenParams(), None, SeqOut(), slot=0)
            logits, _ = self._prefill_chunk_all(row)
            for j in range(first, length - 1):
                z = logits.astype(np.float64)
                top = z.max()
                scores[r, j - first] = z[ids[r, j + 1]] - (top + np.log(np.exp(z - top).sum()))
                best[r, j - first] = int(z.argmax())
                if j + 1 < length - 1:
                    row.token, row.prefilled = int(ids[r, j + 1]), True
                    (_, logits, _), = self._decode_one([row])
        return Scored(scores, best)

    def _prefill_chunk_all(self, row: _Row) -> tuple[np.ndarray, int]:
        while True:
            done = self._prefill_chunk(row)
            if done is not None:
                return done[0].copy(), done[1]

    def _decode_one(self, rows: list[Optional[_Row]]) -> list[tuple[_Row, np.ndarray, int]]:
        return [(r, z.copy(), g) for r, z, g in self._decode(rows)]
