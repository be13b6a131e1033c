"""Attention masks of the masked fused decoder (a vision model's: fused.py, `masked=True`).

Gemma 3 lets the tokens of one image attend to each other both ways at prefill; everything
else is causal, and sliding layers see the last `window` positions (the current one included).
GroupQueryAttention's causal kernel cannot allow a pair that lies ahead, so a vision model's
fused graph runs it with `causal=0` and an additive bias per layer kind, built here as
graphs.build_masks builds the traced graph's: the same pairs allowed, so the same logits.

A bias is [rows, 1, queries, total] float32, 0 where a pair is allowed and the float32
minimum elsewhere (finite, as the traced graph's: a row never turns into NaNs). Columns are
absolute key positions. numpy only: the engine builds them at every step.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

NEG = float(np.finfo(np.float32).min)
GLOBAL, SLIDING = "attention_bias_global", "attention_bias_sliding"


def image_runs(prompt: Sequence[int], soft: Optional[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of consecutive image soft tokens: one image's tokens."""
    if soft is None:
        return []
    is_image = np.asarray(prompt) == soft
    if not is_image.any():
        return []
    edges = np.diff(np.concatenate([[0], is_image.astype(np.int8), [0]]))
    return list(zip(np.nonzero(edges == 1)[0].tolist(), np.nonzero(edges == -1)[0].tolist(), strict=True))


def chunk_end(begin: int, chunk: int, length: int, runs: Sequence[tuple[int, int]]) -> int:
    """Where a prefill chunk from `begin` ends: after `chunk` tokens, but never inside an image (its
    tokens must meet in one call): a chunk that would end inside one takes the rest of it too
    (at most chunk + one image's tokens, fewer and fuller calls than stopping before it). A tail
    of less than a quarter chunk joins the chunk before it: a call of a few tokens streams all the
    weights for little, and prompts of one template then go in as one call (slots.py)."""
    end = min(begin + chunk, length)
    for start, stop in runs:
        if start < end < stop:
            end = stop
            break
    return length if length - end < chunk // 4 else end


def place_features(embeds: np.ndarray, features: np.ndarray, runs: Sequence[tuple[int, int]], begin: int,
                   end: int) -> None:
    """Put the image feature rows of prompt positions begin..end-1 into their `embeds` rows (in place)."""
    at = sum(max(0, min(stop, begin) - start) for start, stop in runs)  # soft tokens fed before
    for start, stop in runs:
        lo, hi = max(start, begin), min(stop, end)
        if lo < hi:
            embeds[lo - begin:hi - begin] = features[at:at + hi - lo]
            at += hi - lo


def prefill(begin: int, end: int, window: int, runs: Sequence[tuple[int, int]] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(global, sliding) biases [1, 1, end - begin, end] for prompt positions begin..end-1 over keys 0..end-1."""
    q = np.arange(begin, end)[:, None]
    k = np.arange(end)[None, :]
    causal = k <= q
    pairs = np.zeros_like(causal)
    for start, stop in runs:
        if start < end and stop > begin:
            inside_q = (q >= start) & (q < stop)
            pairs |= inside_q & (k >= start) & (k < stop)
    full = causal | pairs
    sliding = (causal & (k > q - window)) | pairs
    return _bias(full)[None, None], _bias(sliding)[None, None]


class DecodeBias:
    """The decode step's biases, in two flat buffers sized for every slot at full context (one
    query per row: a view of the first rows x total floats is contiguous)."""

    def __init__(self, slots: int, context: int, window: int) -> None:
        self.window = window
        self.buf = {GLOBAL: np.empty(slots * context, np.float32), SLIDING: np.empty(slots * context, np.float32)}

    def fill(self, lengths: Sequence[int], total: int) -> dict[str, np.ndarray]:
        """Biases [rows, 1, 1, total] for rows whose newest token sits at position length - 1."""
        n = len(lengths)
        k = np.arange(total)[None, :]
        last = np.asarray(lengths)[:, None] - 1
        seen = k <= last
        out = {}
        for name, allowed in ((GLOBAL, seen), (SLIDING, seen & (k > last - self.window))):
            view = self.buf[name][: n * total].reshape(n, 1, 1, total)
            view[:, 0, 0] = _bias(allowed)
            out[name] = view
        return out


def _bias(allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, np.float32(0.0), np.float32(NEG)).astype(np.float32)
