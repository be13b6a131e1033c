"""How far exported graphs are from the model they came from: measured, then recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import onnxruntime as ort
import torch

from edged.models import masks
from edged.models.graphs import kv_names


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxGreedy:
    """A minimal single-sequence greedy loop over embed + decoder graphs (no batching)."""

    def __init__(self, folder: Path, cfg: Any) -> None:
        self.embed = _session(folder / "embed_tokens.onnx")
        self.decoder = _session(folder / "decoder_model_merged.onnx")
        self.names, _ = kv_names(cfg.num_hidden_layers)
        self.kv = (cfg.num_key_value_heads, cfg.head_dim)
        self.typed = "token_type_ids" in {i.name for i in self.decoder.get_inputs()}

    def run(self, prompt: list[int], steps: int, features: Optional[np.ndarray] = None,
            image_token: Optional[int] = None) -> tuple[list[np.ndarray], list[int]]:
        """Greedy tokens and last logits; `features` replace the rows of `image_token` at prefill."""
        past = {n: np.zeros((1, *self.kv[:1], 0, self.kv[1]), np.float32) for n in self.names}
        ids = np.array([prompt], dtype=np.int64)
        mask = np.ones((1, len(prompt)), dtype=np.int64)
        pos = np.arange(len(prompt), dtype=np.int64)[None]
        types = (ids == image_token).astype(np.int64) if image_token is not None else np.zeros_like(ids)
        logits, tokens = [], []
        for step in range(steps + 1):
            embeds = self.embed.run(None, {"input_ids": ids})[0]
            if step == 0 and features is not None:
                embeds[0, ids[0] == image_token] = features.reshape(-1, embeds.shape[-1])
            feeds = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, **past}
            if self.typed:
                feeds["token_type_ids"] = types if step == 0 else np.zeros_like(ids)
            out = self.decoder.run(None, feeds)
            last = out[0][0, -1]
            logits.append(last)
            token = int(np.argmax(last))
            tokens.append(token)
            past = dict(zip(self.names, out[1:], strict=True))
            ids = np.array([[token]], dtype=np.int64)
            mask = np.concatenate([mask, np.ones((1, 1), np.int64)], axis=1)
            pos = np.array([[mask.shape[1] - 1]], dtype=np.int64)
        return logits, tokens


class FusedGreedy:
    """The same loop over the fused decoder (fused.py): one sequence, buffers shared in place.
    A masked graph (a vision model's) gets its attention biases from masks.py."""

    def __init__(self, folder: Path, cfg: Any) -> None:
        from edged.models.fused import NAME

        self.embed = _session(folder / "embed_tokens.onnx")
        self.decoder = _session(folder / NAME)
        self.cfg = cfg
        self.masked = masks.GLOBAL in {i.name for i in self.decoder.get_inputs()}

    def run(self, prompt: list[int], steps: int, features: Optional[np.ndarray] = None,
            image_token: Optional[int] = None) -> tuple[list[np.ndarray], list[int]]:
        from edged.models.manifest import WINDOW_SLACK

        c = self.cfg
        total = len(prompt) + steps + 1
        caps = [c.sliding_window + WINDOW_SLACK - 1 if k == "sliding_attention" and not self.masked else total
                for k in c.layer_types]
        kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros((1, c.num_key_value_heads, cap, c.head_dim), np.float32))
              for cap in caps for _ in range(2)]
        decode_bias = masks.DecodeBias(1, total, c.sliding_window)
        ids, length = prompt, 0
        logits, tokens = [], []
        for step in range(steps + 1):
            length += len(ids)
            embeds = self.embed.run(None, {"input_ids": np.array([ids], np.int64)})[0]
            if step == 0 and features is not None:
                embeds[0, np.asarray(ids) == image_token] = features.reshape(-1, embeds.shape[-1])
            b = self.decoder.io_binding()
            b.bind_cpu_input("inputs_embeds", embeds)
            b.bind_cpu_input("seqlens_k", np.array([length - 1], np.int32))
            b.bind_cpu_input("total_sequence_length", np.array(length, np.int32))
            if self.masked:
                if step == 0:
                    runs = masks.image_runs(prompt, image_token if features is not None else None)
                    biases = dict(zip((masks.GLOBAL, masks.SLIDING),
                                      masks.prefill(0, length, c.sliding_window, runs), strict=True))
                else:
                    biases = decode_bias.fill([length], length)
                for name, bias in biases.items():
                    b.bind_cpu_input(name, np.ascontiguousarray(bias))
            b.bind_output("logits")  # first: outputs come back in the order they were bound
            for i in range(len(caps)):
                for j, kind in enumerate(("key", "value")):
                    b.bind_ortvalue_input(f"past_key_values.{i}.{kind}", kv[2 * i + j])
                    b.bind_ortvalue_output(f"present.{i}.{kind}", kv[2 * i + j])
            self.decoder.run_with_iobinding(b)
            last = b.get_outputs()[0].numpy()[0, -1]
            logits.append(last)
            tokens.append(int(np.argmax(last)))
            ids = [tokens[-1]]
        return logits, tokens


def fused_vs_traced(folder: Path, cfg: Any, steps: int = 12,
                    prompts: Optional[list[list[int]]] = None) -> dict[str, Any]:
    """The fused decoder against the traced one of the same folder (the same weights)."""
    return _versus(OnnxGreedy(folder, cfg), FusedGreedy(folder, cfg), cfg, steps, prompts)


def torch_greedy(model: torch.nn.Module, prompt: list[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
    from transformers.cache_utils import DynamicCache

    cfg = getattr(model.config, "text_config", model.config)
    cache = DynamicCache(config=cfg)
    ids = torch.tensor([prompt])
    logits, tokens = [], []
    with torch.no_grad():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        for _ in range(steps + 1):
            last = out.logits[0, -1].float().numpy()
            logits.append(last)
            token = int(last.argmax())
            tokens.append(token)
            out = model(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
    return logits, tokens


def sample_prompts(cfg: Any, bos: Optional[int] = None) -> list[list[int]]:
    """Deterministic prompts from ordinary ids (no control tokens), one longer than a window."""
    rng = np.random.default_rng(1234)
    low, high = min(300, cfg.vocab_size // 2), min(cfg.vocab_size, 200_000)
    bos = cfg.bos_token_id if bos is None else bos
    lengths = [6, min(cfg.sliding_window + 5, 40)]
    return [[bos] + rng.integers(low, high, size=n).tolist() for n in lengths]


def _compare(a: list[np.ndarray], b: list[np.ndarray], ta: list[int], tb: list[int]) -> dict[str, Any]:
    agree = next((i for i, (x, y) in enumerate(zip(ta, tb, strict=False)) if x != y), len(ta))
    return {
        "max_abs_logit_diff": float(max(np.abs(x - y).max() for x, y in zip(a, b, strict=False))),
        "prefill_max_abs_logit_diff": float(np.abs(a[0] - b[0]).max()),
        "greedy_tokens_equal": ta == tb,
        "greedy_agreement": agree,
    }


def onnx_vs_torch(model: torch.nn.Module, folder: Path, cfg: Any, steps: int = 12,
                  prompts: Optional[list[list[int]]] = None) -> dict[str, Any]:
    runner = OnnxGreedy(folder, cfg)
    results = []
    for prompt in prompts or sample_prompts(cfg):
        ol, ot = runner.run(prompt, steps)
        tl, tt = torch_greedy(model, prompt, steps)
        results.append(_compare(ol, tl, ot, tt))
    return _merge(results, steps)


def quantized_vs_fp32(fp32: Path, quant: Path, cfg: Any, steps: int = 12,
                      prompts: Optional[list[list[int]]] = None) -> dict[str, Any]:
    return _versus(OnnxGreedy(fp32, cfg), OnnxGreedy(quant, cfg), cfg, steps, prompts)


def _versus(reference: Any, other: Any, cfg: Any, steps: int, prompts: Optional[list[list[int]]]) -> dict[str, Any]:
    """Greedy runs of `other` against `reference` (both with .run(prompt, steps)) on the same prompts."""
    results = []
    for prompt in prompts or sample_prompts(cfg):
        la, ta = reference.run(prompt, steps)
        lb, tb = other.run(prompt, steps)
        results.append(_compare(lb, la, tb, ta))
    return _merge(results, steps)


def _merge(results: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    return {
        "prompts": len(results),
        "steps": steps + 1,
        "max_abs_logit_diff": max(r["max_abs_logit_diff"] for r in results),
        "prefill_max_abs_logit_diff": max(r["prefill_max_abs_logit_diff"] for r in results),
        "greedy_tokens_equal": all(r["greedy_tokens_equal"] for r in results),
        "greedy_agreement": [r["greedy_agreement"] for r in results],
    }


def vision_vs_torch(model: torch.nn.Module, folder: Path, cfg: Any, tokens: Any, image_size: int,
                    steps: int = 12) -> dict[str, Any]:
    """Image features, and logits over a prompt with an image, against Hugging Face."""
    from transformers.cache_utils import DynamicCache

    vision = _session(folder / "vision_encoder.onnx")
    n_img = model.config.mm_tokens_per_image
    gen = torch.Generator().manual_seed(7)
    pixels = torch.rand(1, 3, image_size, image_size, generator=gen) * 2 - 1
    prompt = [tokens.bos, 300 % cfg.vocab_size, tokens.start_of_image] + [tokens.image_soft_token] * n_img + \
             [tokens.end_of_image, 301 % cfg.vocab_size, 302 % cfg.vocab_size]
    types = torch.tensor([[1 if t == tokens.image_soft_token else 0 for t in prompt]])
    with torch.no_grad():
        ref_features = model.model.get_image_features(pixels).numpy()
        out = model(input_ids=torch.tensor([prompt]), pixel_values=pixels, token_type_ids=types,
                    past_key_values=DynamicCache(config=cfg), use_cache=True)
        ref_logits, ref_tokens = [], []
        for _ in range(steps + 1):
            last = out.logits[0, -1].float().numpy()
            ref_logits.append(last)
            ref_tokens.append(int(last.argmax()))
            out = model(input_ids=torch.tensor([[ref_tokens[-1]]]), token_type_ids=torch.zeros(1, 1, dtype=torch.long),
                        past_key_values=out.past_key_values, use_cache=True)
    features = vision.run(None, {"pixel_values": pixels.numpy()})[0]
    logits, toks = OnnxGreedy(folder, cfg).run(prompt, steps, features[0], tokens.image_soft_token)
    result = _compare(logits, ref_logits, toks, ref_tokens)
    result["features_max_abs_diff"] = float(np.abs(features - ref_features).max())
    from edged.models.fused import NAME

    if (folder / NAME).is_file():  # the masked fused decoder, on the same image prompt
        fl, ft = FusedGreedy(folder, cfg).run(prompt, steps, features[0], tokens.image_soft_token)
        result["fused_vs_pytorch"] = _compare(fl, ref_logits, ft, ref_tokens)
    return result
