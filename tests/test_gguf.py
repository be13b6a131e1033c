"""A GGUF that is not a whole model is refused before transformers fills it with random weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from edged.models.gguf import IncompleteGGUF, check_tensors  # noqa: E402
from model_cache import default_gguf  # noqa: E402


def _write(path: Path, tensors: dict[str, np.ndarray], blocks: int = 2) -> Path:
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(blocks)
    writer.add_token_list(["<pad>", "<eos>", "<bos>"])
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_vocabulary_only_gguf_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "vocab-only.gguf", {"w": np.zeros((4, 4), np.float32)})
    with pytest.raises(IncompleteGGUF, match="11 weight tensors a 2-block gemma3 needs are missing"):
        check_tensors(path)


def test_a_gguf_missing_one_block_is_refused(tmp_path: Path) -> None:
    w = np.zeros((4, 4), np.float32)
    tensors = {"token_embd.weight": w, **{f"blk.0.{k}.weight": w for k in
                                          ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")}}
    with pytest.raises(IncompleteGGUF, match="first: blk.1.attn_q.weight"):
        check_tensors(_write(tmp_path / "half.gguf", tensors))


def test_a_gguf_cut_short_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "whole.gguf", {"token_embd.weight": np.zeros((64, 64), np.float32)}, blocks=0)
    check_tensors(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(IncompleteGGUF, match="cut short|missing"):
        check_tensors(path)


def test_the_real_270m_is_whole() -> None:
    check_tensors(default_gguf())
