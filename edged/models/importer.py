"""`edged model import`: a published Gemma 3 ONNX release (onnx-community layout) as an edged model.

The release holds `onnx/{embed_tokens,decoder_model_merged,vision_encoder}<suffix>.onnx`
(suffix by dtype: `_q4`, `_q4f16`, `_fp16`, `_quantized`, none for fp32) with their
`.onnx_data` files, plus config.json and tokenizer.json. The graphs are copied unchanged
(their weight files keep the names the graphs refer to); the manifest records that their
decoder returns logits for every position and, as transformers.js feeds it, 1-based
position ids.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from edged.exitcodes import EdgedError, ExitCode
from edged.models.manifest import Manifest, TextShape, Tokens, Vision
from edged.timeutil import now_iso

SUFFIX = {"fp32": "", "fp16": "_fp16", "q4": "_q4", "q4f16": "_q4f16", "quantized": "_quantized", "int8": "_int8",
          "uint8": "_uint8", "bnb4": "_bnb4"}
WEIGHTS = {"fp32": "fp32", "fp16": "fp16", "q4": "int4", "q4f16": "int4", "bnb4": "int4", "quantized": "int8",
           "int8": "int8", "uint8": "int8"}


class ReleaseError(EdgedError):
    """A release folder that cannot be imported; the message says what is missing."""

    code = ExitCode.INPUT


def _graph(src: Path, stem: str, dtype: str) -> Optional[Path]:
    path = src / "onnx" / f"{stem}{SUFFIX[dtype]}.onnx"
    return path if path.is_file() else None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links (FAT)
        shutil.copy2(src, dst)


def _copy_graph(path: Path, out: Path, place: Callable[[Path, Path], object]) -> str:
    place(path, out / path.name)
    for data in path.parent.glob(path.name + "_data*"):
        place(data, out / data.name)
    for data in path.parent.glob(path.name + ".data"):
        place(data, out / data.name)
    return path.name


def _tokens(tokenizer: dict[str, Any], cfg: dict[str, Any], text: dict[str, Any]) -> Tokens:
    added = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", [])}
    eos = text.get("eos_token_id", cfg.get("eos_token_id", 1))
    eos = list(eos) if isinstance(eos, list) else [eos]
    if added.get("<end_of_turn>") is not None and added["<end_of_turn>"] not in eos:
        eos.append(added["<end_of_turn>"])
    return Tokens(bos=text.get("bos_token_id", cfg.get("bos_token_id", 2)), eos=eos,
                  pad=text.get("pad_token_id", cfg.get("pad_token_id", 0)) or 0,
                  start_of_turn=added.get("<start_of_turn>", 105), end_of_turn=added.get("<end_of_turn>", 106),
                  start_of_image=added.get("<start_of_image>"), end_of_image=added.get("<end_of_image>"),
                  image_soft_token=added.get("<image_soft_token>", cfg.get("image_token_index")))


def import_onnx_community(src: Path, out: Path, dtype: str = "q4", name: Optional[str] = None,
                          position_base: int = 1, link: bool = False) -> Manifest:
    """`link`: hard-link the files instead of copying them where `src` is on the same filesystem
    (a pulled 4B release would otherwise need its size twice on disk; `src` stays whole, so a
    failed import loses no download)."""
    place: Callable[[Path, Path], object] = _link_or_copy if link else shutil.copy2
    if dtype not in SUFFIX:
        raise ReleaseError(f"--dtype {dtype!r}: choose one of {', '.join(SUFFIX)}")
    for need in ("config.json", "tokenizer.json"):
        if not (src / need).is_file():
            raise ReleaseError(f"{src}: {need} missing (not an onnx-community release folder?)")
    embed, decoder = _graph(src, "embed_tokens", dtype), _graph(src, "decoder_model_merged", dtype)
    if embed is None or decoder is None:
        have = sorted(p.name for p in (src / "onnx").glob("*.onnx")) if (src / "onnx").is_dir() else []
        raise ReleaseError(f"{src}: no embed_tokens/decoder_model_merged graphs for dtype {dtype}; found {have}")
    cfg = json.loads((src / "config.json").read_text())
    text = cfg.get("text_config", cfg)
    tokenizer = json.loads((src / "tokenizer.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    graphs = {"embed": _copy_graph(embed, out, place), "decoder": _copy_graph(decoder, out, place), "vision": None}
    vision = None
    vis_graph = _graph(src, "vision_encoder", dtype) or _graph(src, "vision_encoder", "fp32")
    if cfg.get("vision_config") and vis_graph is not None:
        graphs["vision"] = _copy_graph(vis_graph, out, place)
        vc = cfg["vision_config"]
        vision = Vision(image_size=vc.get("image_size", 896), tokens_per_image=cfg.get("mm_tokens_per_image", 256),
                        mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], patch_size=vc.get("patch_size", 14))
    place(src / "tokenizer.json", out / "tokenizer.json")
    layers = text["num_hidden_layers"]
    pattern = text.get("sliding_window_pattern", 6)
    layer_types = text.get("layer_types") or [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]
    manifest = Manifest(
        name=name or src.name.removesuffix("-ONNX"),
        text=TextShape(vocab_size=text.get("vocab_size", 262208), hidden_size=text["hidden_size"], num_layers=layers,
                       num_attention_heads=text["num_attention_heads"], num_kv_heads=text["num_key_value_heads"],
                       head_dim=text.get("head_dim", 256), sliding_window=text.get("sliding_window", 1024),
                       layer_types=layer_types, context_length=text.get("max_position_embeddings", 131072)),
        tokens=_tokens(tokenizer, cfg, text),
        weights=WEIGHTS[dtype],
        instruction_tuned="start_of_turn" in json.dumps(json.loads((src / "tokenizer_config.json").read_text()))
        if (src / "tokenizer_config.json").is_file() else src.name.lower().endswith(("-it", "-it-onnx")),
        graphs=graphs,
        vision=vision,
        source={"kind": "onnx-community", "path": str(src), "dtype": dtype},
        decoder={"logits": "all", "position_ids_base": position_base,
                 "kv_dtype": "float16" if dtype in ("fp16", "q4f16") else "float32"},
        created_at=now_iso(),
    )
    manifest.record_files(out)
    manifest.save(out)
    return manifest
