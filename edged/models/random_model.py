"""Random-weight Gemma 3 models from a recipe: real shapes, meaningless outputs.

They let export, quantization, batching and the daemon be tested end to end where no real
weights can be had, and let an operator check memory and speed of a model's shape (a
4B-shaped export) before fetching gigabytes. A small byte-level tokenizer with Gemma's
control tokens stands in for the 262k-token one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from edged.models.torch_model import Loaded, eager, split

SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")


def byte_tokenizer(path: Path, special_ids: dict[str, int]) -> Path:
    """A byte-level BPE tokenizer (no merges): every text encodes, ids 4..259 are bytes."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    for i, ch in enumerate(sorted(ByteLevel.alphabet(), key=ord)):
        vocab[ch] = 4 + i
    vocab.update(special_ids)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<pad>", "<eos>", "<bos>", "<unk>", *special_ids)])
    tok.save(str(path))
    return path


def build_random(recipe_path: Path, progress: Callable[[str], None]) -> Loaded:
    from transformers import Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig


    recipe: dict[str, Any] = json.loads(recipe_path.read_text())
    torch.manual_seed(int(recipe.get("seed", 0)))
    text_cfg = Gemma3TextConfig(**recipe["text_config"])
    if recipe.get("vision_config"):
        cfg = Gemma3Config(text_config=text_cfg.to_dict(), vision_config=recipe["vision_config"],
                           **recipe.get("multimodal", {}))
        model = Gemma3ForConditionalGeneration(cfg)
        # transformers initialises the projector to zeros, which would make every image
        # feature 0 and every image test pass trivially: give it weights of unit gain.
        proj = model.model.multi_modal_projector.mm_input_projection_weight
        torch.nn.init.normal_(proj, std=proj.shape[0] ** -0.5)
    else:
        model = Gemma3ForCausalLM(text_cfg)
    progress(f"built {recipe['name']} with random weights ({sum(p.numel() for p in model.parameters()):,} parameters)")
    work = Path(tempfile.mkdtemp(prefix="edged-random-"))
    tokens = recipe["tokens"]
    special = {name: int(tokens[name.strip("<>")]) for name in SPECIALS if name.strip("<>") in tokens}
    tokenizer = byte_tokenizer(work / "tokenizer.json", special)
    text, head = split(eager(model))
    return Loaded(model, text, head, tokenizer, {"kind": "random", "recipe": str(recipe_path)},
                  bool(recipe.get("chat", False)), recipe["name"], cleanup=[work])
