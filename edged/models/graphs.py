"""Exporting Gemma 3 to the three-graph ONNX layout (embed_tokens, decoder, vision encoder).

The decoder wrapper builds its own attention masks from `attention_mask` and positions
instead of calling Hugging Face's mask helpers: those branch in Python (prefill or not,
sliding cache cropping), and a traced graph would freeze whichever branch ran at export
time. Our masks are plain tensor ops, so one graph serves prefill and decode, any batch,
any past length. The KV cache is kept whole for every layer; sliding-window layers see only
the last `sliding_window` positions through their mask, which is exactly what Hugging Face
computes with its cropped cache.

Only the last position's logits leave the decoder: at prefill, full logits would be
seq × 262,144 floats per row for no use.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

OPSET = 18
IR_VERSION = 10  # onnxruntime-gpu 1.31 reads IR <= 13; onnx 1.23 would write 14


class _PastCache:
    """The minimum of transformers' Cache that Gemma3Attention calls: concatenate and keep."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.past = past
        self.present: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * len(past)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, cache_kwargs: Any = None):
        pk, pv = self.past[layer_idx]
        k = torch.cat([pk, key], dim=2)
        v = torch.cat([pv, value], dim=2)
        self.present[layer_idx] = (k, v)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.past[layer_idx][0].shape[2]


def build_masks(attention_mask: torch.Tensor, q_len: int, sliding_window: int, dtype: torch.dtype,
                bidirectional: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
    """Additive masks [batch, 1, q, kv] for full and sliding-window layers.

    attention_mask: [batch, kv] (1 = real token, 0 = padding), the last q of which are the
    queries. `bidirectional` [batch, q, kv] (optional) allows extra pairs (image tokens
    attending to each other at prefill). Each query may always see itself, so no row is
    fully masked: padded rows stay finite instead of turning into NaNs that would leak
    into the cache.
    """
    kv_len = attention_mask.shape[1]
    kv_idx = torch.cumsum(torch.ones_like(attention_mask[0]), 0) - 1  # [kv]
    q_idx = kv_idx[kv_len - q_len:]  # [q]
    causal = kv_idx[None, :] <= q_idx[:, None]  # [q, kv]
    in_window = kv_idx[None, :] > (q_idx[:, None] - sliding_window)
    itself = kv_idx[None, :] == q_idx[:, None]
    keys = attention_mask[:, None, None, :].bool()  # [b, 1, 1, kv]
    full = causal[None, None] & keys
    sliding = full & in_window[None, None]
    if bidirectional is not None:
        extra = bidirectional[:, None].bool() & keys
        full = full | extra
        sliding = sliding | extra
    full = full | itself[None, None]
    sliding = sliding | itself[None, None]
    neg = torch.finfo(dtype).min
    zero = torch.zeros((), dtype=dtype)
    return {
        "full_attention": torch.where(full, zero, torch.tensor(neg, dtype=dtype)),
        "sliding_attention": torch.where(sliding, zero, torch.tensor(neg, dtype=dtype)),
    }


def gqa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                  softcap: Optional[float] = None, **_kwargs: Any) -> tuple[torch.Tensor, None]:
    """Gemma's eager attention without copying K/V once per query head.

    Hugging Face's eager path expands each KV head to its query heads (`repeat_kv`), which
    in a graph is an Expand that copies the whole cache every step, once per layer: at
    batch 8 that copy was a large share of a decode step. Folding the query heads of a
    group into the query axis instead gives the same products with no copy.
    """
    b, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scaling = dim ** -0.5 if scaling is None else scaling
    qg = query.reshape(b, kv_heads, groups * q_len, dim)
    scores = torch.matmul(qg, key.transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        kv_len = key.shape[2]
        scores = scores.reshape(b, kv_heads, groups, q_len, kv_len) + attention_mask[:, :, None, :, :kv_len]
        scores = scores.reshape(b, kv_heads, groups * q_len, kv_len)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(probs, value).reshape(b, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def _use_gqa(config: Any) -> None:
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("edged_gqa", gqa_attention)
    config._attn_implementation = "edged_gqa"


def image_pairs(token_type_ids: torch.Tensor, past_len: int) -> torch.Tensor:
    """[batch, q, kv]: True where query and key are tokens of the same image.

    Hugging Face lets an image's tokens attend to each other both ways at prefill; the
    groups are runs of consecutive image tokens (token_type_ids == 1). Keys from the past
    are text (images only ever arrive at prefill).
    """
    is_image = token_type_ids == 1
    previous = torch.cat([torch.zeros_like(is_image[:, :1]), is_image[:, :-1]], dim=1)
    starts = (is_image & ~previous).to(torch.int64)
    group = torch.where(is_image, torch.cumsum(starts, dim=1) - 1, torch.full_like(starts, -1))
    past_group = torch.full_like(group[:, :1], -1).expand(group.shape[0], past_len)
    kv_group = torch.cat([past_group, group], dim=1)
    return (group[:, :, None] >= 0) & (group[:, :, None] == kv_group[:, None, :])


class DecoderGraph(nn.Module):
    """inputs_embeds, attention_mask, position_ids, past_key_values.* -> logits (last), present.*"""

    def __init__(self, text_model: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model
        self.lm_head = lm_head
        self.config = text_model.config
        self.num_layers = self.config.num_hidden_layers

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past_flat: torch.Tensor):
        return self.decode(inputs_embeds, attention_mask, position_ids, past_flat, None)

    def decode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
               past_flat: tuple, token_type_ids: Optional[torch.Tensor]):
        m = self.text_model
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(self.num_layers)]
        q_len = inputs_embeds.shape[1]
        past_len = past[0][0].shape[2]
        pairs = image_pairs(token_type_ids, past_len) if token_type_ids is not None else None
        masks = build_masks(attention_mask, q_len, self.config.sliding_window, inputs_embeds.dtype, pairs)
        cache = _PastCache(past)
        cache_position = torch.arange(q_len, device=inputs_embeds.device) + past_len
        pos_global = m.rotary_emb(inputs_embeds, position_ids)
        pos_local = m.rotary_emb_local(inputs_embeds, position_ids)
        h = inputs_embeds
        for layer in m.layers[: self.num_layers]:
            h = layer(h, position_embeddings_global=pos_global, position_embeddings_local=pos_local,
                      attention_mask=masks[layer.attention_type], position_ids=position_ids,
                      past_key_values=cache, cache_position=cache_position)[0]
        h = m.norm(h[:, -1:, :])
        logits = self.lm_head(h)
        present = [t for pair in cache.present if pair is not None for t in pair]
        return (logits, *present)


class VisionDecoderGraph(DecoderGraph):
    """The decoder of a vision model: token_type_ids (1 = image token) as a fourth input."""

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                token_type_ids: torch.Tensor, *past_flat: torch.Tensor):
        return self.decode(inputs_embeds, attention_mask, position_ids, past_flat, token_type_ids)


class VisionGraph(nn.Module):
    """pixel_values [n, 3, size, size] -> image_features [n, tokens, hidden] (SigLIP + projector)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values)


class EmbedGraph(nn.Module):
    """input_ids -> inputs_embeds (Gemma's embedding already scales by sqrt(hidden))."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    present = [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]
    return past, present


def _quiet_export(*args: Any, **kwargs: Any) -> None:
    """torch.onnx.export without the tracer's warnings about constants we put there on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(*args, **kwargs)


def _finish(path: Path) -> None:
    """Pin the IR version the runtime reads, and keep large graphs' weights beside them."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    model.ir_version = IR_VERSION
    big = model.ByteSize() > 1_800_000_000 if hasattr(model, "ByteSize") else False
    for stale in path.parent.glob(path.name + ".data"):
        stale.unlink()
    onnx.save(model, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
              location=path.name + ".data")


def export_embed(text_model: nn.Module, out: Path) -> Path:
    graph = EmbedGraph(text_model.embed_tokens).eval()
    ids = torch.tensor([[2, 10, 11], [2, 12, 13]], dtype=torch.long)
    with torch.no_grad():
        _quiet_export(graph, (ids,), str(out), input_names=["input_ids"], output_names=["inputs_embeds"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "inputs_embeds": {0: "batch", 1: "seq"}},
                          opset_version=OPSET, dynamo=False)
    _finish(out)
    return out


def export_vision(model: nn.Module, image_size: int, out: Path) -> Path:
    graph = VisionGraph(model).eval()
    pixels = torch.randn(2, 3, image_size, image_size)
    with torch.no_grad():
        _quiet_export(graph, (pixels,), str(out), input_names=["pixel_values"], output_names=["image_features"],
                          dynamic_axes={"pixel_values": {0: "images"}, "image_features": {0: "images"}},
                          opset_version=OPSET, dynamo=False)
    _finish(out)
    return out


def export_decoder(text_model: nn.Module, lm_head: nn.Module, out: Path, dtype: torch.dtype = torch.float32,
                   vision: bool = False) -> Path:
    cfg = text_model.config
    previous = cfg._attn_implementation
    _use_gqa(cfg)
    try:
        return _export_decoder(text_model, lm_head, out, dtype, vision)
    finally:
        cfg._attn_implementation = previous


def _export_decoder(text_model: nn.Module, lm_head: nn.Module, out: Path, dtype: torch.dtype, vision: bool) -> Path:
    cfg = text_model.config
    graph = (VisionDecoderGraph if vision else DecoderGraph)(text_model, lm_head).eval()
    batch, seq, past_len = 2, 3, 4
    kvh, hd = cfg.num_key_value_heads, cfg.head_dim
    embeds = torch.randn(batch, seq, cfg.hidden_size, dtype=dtype)
    mask = torch.ones(batch, past_len + seq, dtype=torch.long)
    mask[1, :2] = 0
    pos = torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous()
    past = [torch.randn(batch, kvh, past_len, hd, dtype=dtype) for _ in range(2 * cfg.num_hidden_layers)]
    past_names, present_names = kv_names(cfg.num_hidden_layers)
    axes: dict[str, dict[int, str]] = {
        "inputs_embeds": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch"},
    }
    axes.update({n: {0: "batch", 2: "past"} for n in past_names})
    axes.update({n: {0: "batch", 2: "total"} for n in present_names})
    extra_inputs: list[torch.Tensor] = []
    extra_names: list[str] = []
    if vision:
        types = torch.zeros(batch, seq, dtype=torch.long)
        types[0, 1:] = 1
        extra_inputs, extra_names = [types], ["token_type_ids"]
        axes["token_type_ids"] = {0: "batch", 1: "seq"}
    with torch.no_grad():
        _quiet_export(graph, (embeds, mask, pos, *extra_inputs, *past), str(out),
                          input_names=["inputs_embeds", "attention_mask", "position_ids", *extra_names, *past_names],
                          output_names=["logits", *present_names], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    _finish(out)
    return out
