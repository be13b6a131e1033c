"""`edged model export`: a Gemma 3 source -> the three-graph ONNX layout with a manifest.

Sources: a Hugging Face model folder, a GGUF file, `random:<config.json>` (random weights
for shape, memory and speed checks, and for tests), or a model id (downloaded by
transformers; needs internet). Every graph is checked against the PyTorch model before
quantization, and the quantized graphs against the fp32 ones; the differences go in the
manifest.

optimum's exporter is not used for the decoder: it exports gemma3 with `input_ids` as the
input, while the layout here takes `inputs_embeds` (one decoder for text-only and vision
models, image features merged by the engine), and it cannot export the vision or embedding
graphs at all. torch.onnx.export with our own wrappers (graphs.py) does all three.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from edged.exitcodes import EdgedError, ExitCode
from edged.models import graphs, parity
from edged.models.fused import GREEDY
from edged.models.fused import NAME as FUSED
from edged.models.manifest import Manifest, TextShape, Tokens, Vision
from edged.models.quantize import WEIGHTS, lm_head_nodes, to_fp16
from edged.models.recipe import ALGORITHMS, DEFAULT_RECIPE, Recipe
from edged.models.torch_model import Loaded, eager, split
from edged.timeutil import now_iso

Progress = Callable[[str], None]
TOKEN_NAMES = {
    "start_of_turn": "<start_of_turn>", "end_of_turn": "<end_of_turn>", "start_of_image": "<start_of_image>",
    "end_of_image": "<end_of_image>", "image_soft_token": "<image_soft_token>",
}


class ExportError(EdgedError):
    """The source cannot be exported as asked (a bad source, options that do not fit it)."""

    code = ExitCode.INPUT


@dataclass
class ExportOptions:
    weights: str = "auto"  # gguf for a .gguf source, else int4 with the recipe below
    # int4/int8: the recipe (recipe.py); the defaults are the one chosen by measurement.
    algorithm: str = DEFAULT_RECIPE.algorithm
    block_size: int = DEFAULT_RECIPE.block
    symmetric: bool = DEFAULT_RECIPE.symmetric
    int8_layers: tuple[str, ...] = DEFAULT_RECIPE.int8
    lm_head_bits: int = DEFAULT_RECIPE.head_bits  # the output layer and the embedding table
    accuracy_level: int = 4  # int8 activations: 8-bit weights take a slow path on CPU without it
    name: Optional[str] = None
    chat: Optional[bool] = None  # None: guessed from the source (chat template, "-it" name)
    context_length: Optional[int] = None
    verify: bool = True
    parity_texts: Optional[list[str]] = None  # real prompts for the checks (default: random ids)
    parity_steps: int = 12

    def recipe(self, head: frozenset[str]) -> Recipe:
        return Recipe(bits=4 if self.weights == "int4" else 8, algorithm=self.algorithm, block=self.block_size,
                      symmetric=self.symmetric, int8=tuple(self.int8_layers), head_bits=self.lm_head_bits,
                      head=head)


def _guess_chat(folder: Path, name: str) -> bool:
    for f in ("tokenizer_config.json", "chat_template.json", "chat_template.jinja"):
        p = folder / f
        if p.is_file() and "start_of_turn" in p.read_text(errors="replace"):
            return True
    return name.endswith("-it")


def load_source(source: str, progress: Progress) -> Loaded:
    from transformers import AutoConfig, AutoModelForCausalLM

    if source.startswith("random:"):
        from edged.models.random_model import build_random

        return build_random(Path(source[len("random:"):]), progress)
    path = Path(source)
    if path.suffix == ".gguf" and path.is_file():
        from edged.models.gguf import load_gguf

        return load_gguf(path, progress)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExportError(f"{path}: not a Hugging Face model folder (no config.json)")
        folder, kind = path, "hf-folder"
    else:
        from huggingface_hub import snapshot_download

        progress(f"downloading {source} from the Hugging Face hub")
        try:
            folder, kind = Path(snapshot_download(source)), "hf-hub"
        except Exception as exc:  # offline boxes get one clear message
            raise ExportError(f"{source}: not a folder or .gguf file here, and the hub refused it: {exc}") from None
    if not (folder / "tokenizer.json").is_file():
        raise ExportError(f"{folder}: tokenizer.json missing")
    config = AutoConfig.from_pretrained(folder)
    progress(f"loading {folder} ({config.model_type}) in float32")
    if config.model_type == "gemma3":
        from transformers import Gemma3ForConditionalGeneration

        model = Gemma3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    text, head = split(eager(model))
    name = folder.name if kind == "hf-folder" else source.split("/")[-1]
    return Loaded(model, text, head, folder / "tokenizer.json", {"kind": kind, "path": str(source)},
                  _guess_chat(folder, name.lower()), name)


def special_tokens(tokenizer_json: Path, text_config: Any) -> Tokens:
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    by_content = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
    vocab = data.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        for content in TOKEN_NAMES.values():
            by_content.setdefault(content, vocab.get(content))
    eos = text_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if by_content.get("<end_of_turn>") is not None and by_content["<end_of_turn>"] not in eos:
        eos.append(by_content["<end_of_turn>"])
    named: dict[str, Any] = {k: by_content.get(v) for k, v in TOKEN_NAMES.items()}
    return Tokens(bos=text_config.bos_token_id, eos=[int(e) for e in eos if e is not None],
                  pad=text_config.pad_token_id if text_config.pad_token_id is not None else 0, **named)


def text_shape(cfg: Any, context: Optional[int]) -> TextShape:
    return TextShape(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers,
                     num_attention_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads,
                     head_dim=cfg.head_dim, sliding_window=cfg.sliding_window, layer_types=list(cfg.layer_types),
                     context_length=context or cfg.max_position_embeddings)


def _quantize(tmp: Path, out: Path, opts: ExportOptions, progress: Progress, loaded: Loaded) -> dict[str, Any]:
    if opts.weights == "gguf":
        if loaded.source.get("kind") != "gguf":
            raise ExportError("--weights gguf keeps a GGUF file's own blocks: it needs a .gguf source")
        from edged.models.gguf_carry import carry

        return carry(Path(loaded.source["path"]), tmp, out, opts.accuracy_level, progress)
    info: dict[str, Any] = {"weights": opts.weights}
    dec_src, emb_src = tmp / "decoder_model_merged.onnx", tmp / "embed_tokens.onnx"
    dec_out, emb_out = out / "decoder_model_merged.onnx", out / "embed_tokens.onnx"
    if opts.weights in ("int4", "int8"):
        from edged.models.blockwrite import write_graphs
        from edged.models.recipe import RecipeSource

        recipe = opts.recipe(frozenset(lm_head_nodes(dec_src)))
        progress(f"quantizing to {opts.weights} ({recipe.algorithm}, blocks of {recipe.block})")
        source = RecipeSource(recipe)
        types = write_graphs(source, tmp, out, opts.accuracy_level, progress)
        info.update(recipe.describe(), accuracy_level=opts.accuracy_level, types=dict(sorted(types.items())),
                    notes=source.notes)
    elif opts.weights == "fp16":
        progress("converting to fp16")
        to_fp16(dec_src, dec_out)
        to_fp16(emb_src, emb_out)
    else:
        fused = [(tmp / FUSED, out / FUSED)] if (tmp / FUSED).is_file() else []
        for src, dst in ((dec_src, dec_out), (emb_src, emb_out), *fused):
            shutil.copy(src, dst)
            data = src.parent / (src.name + ".data")
            if data.exists():
                shutil.copy(data, dst.parent / data.name)
    return info


def export_model(source: str, out: Path, opts: Optional[ExportOptions] = None,
                 progress: Optional[Progress] = None) -> Manifest:
    opts = opts or ExportOptions()
    progress = progress or (lambda msg: None)
    if opts.weights not in (*WEIGHTS, "auto"):
        raise ExportError(f"--weights {opts.weights!r}: choose one of auto, {', '.join(WEIGHTS)}")
    if opts.algorithm not in ALGORITHMS:
        raise ExportError(f"--algorithm {opts.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if opts.block_size not in (16, 32, 64, 128, 256):
        raise ExportError(f"--block-size {opts.block_size}: choose 16, 32, 64, 128 or 256")
    loaded = load_source(source, progress)
    if opts.weights == "auto":
        # A GGUF keeps its own blocks; other sources get the recipe chosen by measurement.
        opts = dataclasses.replace(opts, weights="gguf" if loaded.source.get("kind") == "gguf" else "int4")
    try:
        return _export_loaded(loaded, out, opts, progress)
    finally:
        for p in loaded.cleanup:
            shutil.rmtree(p, ignore_errors=True)


def vision_shape(loaded: Loaded) -> Optional[Vision]:
    """The image geometry of a vision model (None for text-only), with its processor's normalisation."""
    vcfg = getattr(loaded.model.config, "vision_config", None)
    if vcfg is None or not hasattr(loaded.model.model, "vision_tower"):
        return None
    mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    proc = Path(loaded.source.get("path", "")) / "preprocessor_config.json"
    if proc.is_file():
        data = json.loads(proc.read_text())
        mean, std = data.get("image_mean", mean), data.get("image_std", std)
    return Vision(image_size=vcfg.image_size, tokens_per_image=loaded.model.config.mm_tokens_per_image,
                  mean=list(mean), std=list(std), patch_size=vcfg.patch_size)


def _parity_prompts(loaded: Loaded, opts: ExportOptions) -> Optional[list[list[int]]]:
    if not opts.parity_texts:
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(loaded.tokenizer_json))
    tok.encode_special_tokens = True
    bos = loaded.text_model.config.bos_token_id
    return [[bos] + tok.encode(t, add_special_tokens=False).ids for t in opts.parity_texts]


def _export_loaded(loaded: Loaded, out: Path, opts: ExportOptions, progress: Progress) -> Manifest:
    cfg = loaded.text_model.config
    vision = vision_shape(loaded)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edged-export-", dir=out.parent) as tmp_s:
        tmp = Path(tmp_s)
        progress("exporting embed_tokens.onnx")
        graphs.export_embed(loaded.text_model, tmp / "embed_tokens.onnx")
        progress("exporting decoder_model_merged.onnx")
        graphs.export_decoder(loaded.text_model, loaded.lm_head, tmp / "decoder_model_merged.onnx",
                              vision=vision is not None)
        from edged.models import fused

        # A vision model's fused graph is the masked one: image tokens attend to each other both ways.
        progress(f"building {fused.NAME}" + (" (masked: image prompts)" if vision is not None else ""))
        fused.build_decoder(loaded.text_model, loaded.lm_head, tmp / fused.NAME,
                            opts.context_length or cfg.max_position_embeddings, masked=vision is not None)
        fused.build_greedy(out / fused.GREEDY, cfg.vocab_size)
        tokens = special_tokens(loaded.tokenizer_json, cfg)
        if vision is not None:
            progress("exporting vision_encoder.onnx (fp32)")
            graphs.export_vision(loaded.model.model, vision.image_size, tmp / "vision_encoder.onnx")
        report: dict[str, Any] = {}
        prompts = _parity_prompts(loaded, opts)
        if opts.verify:
            progress("checking the fp32 graphs against PyTorch")
            report["fp32_vs_pytorch"] = parity.onnx_vs_torch(loaded.model, tmp, cfg, opts.parity_steps, prompts)
            if (tmp / FUSED).is_file():
                progress(f"checking {FUSED} against the traced decoder")
                report["fused_vs_traced"] = parity.fused_vs_traced(tmp, cfg, opts.parity_steps, prompts)
            if vision is not None:
                report["vision_fp32_vs_pytorch"] = parity.vision_vs_torch(
                    loaded.model, tmp, cfg, tokens, vision.image_size, opts.parity_steps)
                fused_image = report["vision_fp32_vs_pytorch"].pop("fused_vs_pytorch", None)
                if fused_image is not None:  # the masked fused decoder on the same image prompt
                    report["fused_image_vs_pytorch"] = fused_image
        qinfo = _quantize(tmp, out, opts, progress, loaded)
        if vision is not None:
            shutil.copy(tmp / "vision_encoder.onnx", out / "vision_encoder.onnx")
            for data in tmp.glob("vision_encoder.onnx.data"):
                shutil.copy(data, out / data.name)
            qinfo["vision"] = "fp32"
        if opts.verify and opts.weights != "fp32":
            progress(f"comparing the {opts.weights} graphs with fp32")
            report[f"{opts.weights}_vs_fp32"] = parity.quantized_vs_fp32(tmp, out, cfg, opts.parity_steps, prompts)
    shutil.copy(loaded.tokenizer_json, out / "tokenizer.json")
    manifest = Manifest(
        name=opts.name or loaded.name,
        text=text_shape(cfg, opts.context_length),
        tokens=tokens,
        weights=opts.weights,
        instruction_tuned=loaded.chat if opts.chat is None else opts.chat,
        graphs={"embed": "embed_tokens.onnx", "decoder": "decoder_model_merged.onnx",
                "vision": "vision_encoder.onnx" if vision is not None else None,
                "decoder_fused": FUSED if (out / FUSED).is_file() else None,
                "greedy": GREEDY if (out / FUSED).is_file() else None},
        vision=vision,
        source=loaded.source,
        quantization=qinfo,
        parity=report,
        created_at=now_iso(),
    )
    manifest.record_files(out)
    manifest.save(out)
    progress(f"wrote {out} ({sum(f['bytes'] for f in manifest.files.values()) / 2**20:.0f} MiB)")
    return manifest

