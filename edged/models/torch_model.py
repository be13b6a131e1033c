"""A Gemma 3 PyTorch model loaded for export, whatever its source (HF folder, GGUF, random recipe)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Loaded:
    model: torch.nn.Module
    text_model: torch.nn.Module
    lm_head: torch.nn.Module
    tokenizer_json: Path
    source: dict[str, Any]
    chat: bool
    name: str
    cleanup: list[Path] = field(default_factory=list)


def split(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the text model, the output layer) of a causal or image-text Gemma 3."""
    inner = model.model
    text = getattr(inner, "language_model", inner)
    return text, model.lm_head


def eager(model: torch.nn.Module) -> torch.nn.Module:
    """The model in eval mode, fp32, with eager attention (what torch.onnx traces faithfully)."""
    model.config._attn_implementation = "eager"
    for sub in model.modules():
        cfg = getattr(sub, "config", None)
        if cfg is not None and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = "eager"
    return model.eval().float()
