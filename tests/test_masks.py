"""The masked fused decoder's attention biases (models/masks.py) against the traced graph's masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edged.models import masks
from edged.models.graphs import build_masks, image_pairs

SOFT = 9


def _prompt(rng: np.random.Generator, length: int, images: int, image_len: int) -> list[int]:
    prompt = rng.integers(10, 50, size=length).tolist()
    for _ in range(images):
        at = int(rng.integers(1, length - image_len))
        prompt[at:at + image_len] = [SOFT] * image_len
    return prompt


def test_image_runs_are_the_runs_of_soft_tokens() -> None:
    assert masks.image_runs([2, SOFT, SOFT, 5, SOFT, 7, SOFT, SOFT, SOFT], SOFT) == [(1, 3), (4, 5), (6, 9)]
    assert masks.image_runs([2, 3, 4], SOFT) == []
    assert masks.image_runs([SOFT, SOFT], None) == []


@pytest.mark.parametrize("begin,chunk,expected", [
    (0, 4, 4),     # no image in the way
    (0, 7, 12),    # the chunk would end inside the image: it takes the rest of the image too
    (5, 4, 12),    # the chunk starts with the image: all of it, whatever the chunk size
    (12, 50, 20),  # the rest of the prompt
    (0, 12, 12),   # ends exactly where the image does
    (0, 5, 5),     # ends where the image starts
    (0, 16, 16),   # a tail of a quarter chunk is a chunk of its own
    (0, 17, 20),   # a shorter tail joins this chunk
    (3, 3, 12),    # into the image, the 8 tokens after it stay a chunk of their own
])
def test_a_chunk_never_ends_inside_an_image(begin: int, chunk: int, expected: int) -> None:
    assert masks.chunk_end(begin, chunk, 20, [(5, 12)]) == expected


@pytest.mark.parametrize("seed", range(6))
def test_prefill_biases_allow_the_pairs_the_traced_masks_allow(seed: int) -> None:
    rng = np.random.default_rng(seed)
    window = int(rng.integers(2, 9))
    prompt = _prompt(rng, int(rng.integers(20, 40)), int(rng.integers(0, 3)), int(rng.integers(3, 12)))
    runs = masks.image_runs(prompt, SOFT)
    ids = torch.tensor([prompt])
    ref = build_masks(torch.ones_like(ids), len(prompt), window, torch.float32,
                      image_pairs((ids == SOFT).long(), 0))
    chunk, begin = int(rng.integers(1, 9)), 0
    while begin < len(prompt):  # chunk by chunk, as the engine feeds a prompt
        end = masks.chunk_end(begin, chunk, len(prompt), runs)
        g, s = masks.prefill(begin, end, window, runs)
        assert g.shape == s.shape == (1, 1, end - begin, end) and g.dtype == np.float32
        np.testing.assert_array_equal(g[0, 0], ref["full_attention"][0, 0, begin:end, :end].numpy())
        np.testing.assert_array_equal(s[0, 0], ref["sliding_attention"][0, 0, begin:end, :end].numpy())
        begin = end


def test_decode_biases_follow_each_rows_length() -> None:
    window, lengths, total = 4, [9, 3, 1], 9
    got = masks.DecodeBias(slots=4, context=16, window=window).fill(lengths, total)
    assert got[masks.GLOBAL].shape == (3, 1, 1, total)
    for r, length in enumerate(lengths):
        ref = build_masks(torch.ones(1, length, dtype=torch.long), 1, window, torch.float32)
        for name, kind in ((masks.GLOBAL, "full_attention"), (masks.SLIDING, "sliding_attention")):
            row = got[name][r, 0, 0]
            np.testing.assert_array_equal(row[:length], ref[kind][0, 0, 0].numpy())
            assert (row[length:] == masks.NEG).all()  # later columns belong to longer rows
