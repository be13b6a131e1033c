"""The fused decoder: Gemma 3's text stack written directly as ONNX Runtime's own kernels.

The traced decoder (graphs.py) is exact but slow: ~1,900 kernels a step, a third of them shape
plumbing; the cache grows by Concat (a full copy every token); sliding layers keep and attend
over the whole past. This graph is built the way onnxruntime-genai's Gemma builder builds
it, one node per operation that matters:

- `GroupQueryAttention` with past and present sharing one preallocated buffer (written in
  place, per row at `seqlens_k`), rotary inside the op (local and global cos/sin tables taken
  from the model's own rotary modules, so scaled RoPE is exact), per-head q/k RMS norms before
  it (the CPU kernel does not take `q_norm_weight`);
- sliding layers with `local_window_size` and `sliding_window_cache`: their buffers hold the
  window (plus slack), not the context, so a 32K prompt costs window-sized memory there;
- `SimplifiedLayerNormalization` / `SkipSimplifiedLayerNormalization` for the norms and the
  residual adds, `FastGelu` (tanh) for the MLP;
- a vision model's graph is *masked*: image tokens attend to each other both ways, a pair the
  causal kernel cannot allow, so every layer runs it with `causal=0` and an additive bias input
  per layer kind (masks.py builds them), and every layer keeps the whole context (the windowed
  cache needs the causal kernel). Text models keep the windowed graph;
- the logits of the last position only; the greedy choice is a graph of its own (GREEDY, an
  ArgMax the engine runs where logits live on a device, so only token ids cross to the host; on
  the CPU numpy's argmax is ten times faster than the kernel, and a graph output is always
  computed, bound or not).

q, k and v stay three MatMuls: a GGUF gives them different block types (blockwrite.py carries
each as it is), so packing them would mean re-quantizing. Weight initializers and MatMul node
names are those of the traced graph, so blockwrite.py rewrites both graphs alike and both point
at the same bytes in `weights.data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edged.models.graphs import IR_VERSION, OPSET
from edged.models.masks import GLOBAL, SLIDING

NAME = "decoder_fused.onnx"
GREEDY = "greedy.onnx"
MS = "com.microsoft"


def rope_tables(rotary: torch.nn.Module, positions: int, head_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [positions, head_dim/2] as the model's rotary module computes them (scaling included)."""
    pos = torch.arange(positions, dtype=torch.long)[None]
    probe = torch.zeros(1, 1, head_dim, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(probe, pos)
    half = head_dim // 2
    return cos[0, :, :half].float().numpy().copy(), sin[0, :, :half].float().numpy().copy()


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self._n = 0

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1, name: str = "",
             domain: str = "", **attrs: Any) -> list[str]:
        self._n += 1
        name = name or f"/{op}_{self._n}"
        outs = outputs if isinstance(outputs, list) else [f"{name}/out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, domain=domain, **attrs))
        return outs

    def matmul(self, x: str, weight: torch.Tensor, name: str) -> str:
        w = self.init(f"{name}.weight", weight.detach().float().numpy().T)
        return self.node("MatMul", [x, w], name=name)[0]

    def norm(self, x: str, weight: torch.Tensor, eps: float, name: str) -> str:
        g = self.init(f"{name}.gamma", 1.0 + weight.detach().float().numpy())
        return self.node("SimplifiedLayerNormalization", [x, g], name=name, axis=-1, epsilon=eps,
                         stash_type=1)[0]

    def skip_norm(self, x: str, skip: str, weight: torch.Tensor, eps: float, name: str) -> tuple[str, str]:
        """(norm(x + skip), x + skip)."""
        g = self.init(f"{name}.gamma", 1.0 + weight.detach().float().numpy())
        out, total = f"{name}/out", f"{name}/sum"
        self.node("SkipSimplifiedLayerNormalization", [x, skip, g], [out, "", "", total], name=name,
                  domain=MS, epsilon=eps)
        return out, total


def _head_norm(b: _Builder, x: str, weight: torch.Tensor, eps: float, head_dim: int, name: str) -> str:
    """RMS norm over each head of a [B, S, heads*head_dim] projection."""
    split = b.init(f"{name}.split", np.array([0, 0, -1, head_dim], dtype=np.int64))
    merge = b.init(f"{name}.merge", np.array([0, 0, -1], dtype=np.int64))
    heads = b.node("Reshape", [x, split], name=f"{name}/split")[0]
    normed = b.norm(heads, weight, eps, name)
    return b.node("Reshape", [normed, merge], name=f"{name}/merge")[0]


def build_decoder(text_model: torch.nn.Module, lm_head: torch.nn.Module, out: Path, positions: int,
                  masked: bool = False) -> Path:
    """Write the fused decoder of `text_model` to `out` (fp32, weights inline; blockwrite.py quantizes).
    `masked`: attention by the bias inputs (a vision model's graph), not by the causal kernel."""
    cfg = text_model.config
    hd, heads, kvh = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    eps = float(cfg.rms_norm_eps)
    b = _Builder()
    cos_g, sin_g = rope_tables(text_model.rotary_emb, positions, hd)
    cos_l, sin_l = rope_tables(text_model.rotary_emb_local, positions, hd)
    tables = {"full_attention": (b.init("rope.global.cos", cos_g), b.init("rope.global.sin", sin_g)),
              "sliding_attention": (b.init("rope.local.cos", cos_l), b.init("rope.local.sin", sin_l))}
    scale = float(cfg.query_pre_attn_scalar) ** -0.5
    softcap = float(getattr(cfg, "attn_logit_softcapping", None) or 0.0)

    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", cfg.hidden_size]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    if masked:
        inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, "seq", "total"])
                   for name in (GLOBAL, SLIDING)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, cfg.vocab_size])]
    layers = text_model.layers[: cfg.num_hidden_layers]
    residual, x = "inputs_embeds", b.norm("inputs_embeds", layers[0].input_layernorm.weight, eps,
                                          "/layers.0/input_layernorm")
    for i, layer in enumerate(layers):
        p, att = f"/layers.{i}", layer.self_attn
        sliding = layer.attention_type == "sliding_attention"
        q = _head_norm(b, b.matmul(x, att.q_proj.weight, f"{p}/self_attn/q_proj/MatMul"), att.q_norm.weight, eps,
                       hd, f"{p}/self_attn/q_norm")
        k = _head_norm(b, b.matmul(x, att.k_proj.weight, f"{p}/self_attn/k_proj/MatMul"), att.k_norm.weight, eps,
                       hd, f"{p}/self_attn/k_norm")
        v = b.matmul(x, att.v_proj.weight, f"{p}/self_attn/v_proj/MatMul")
        past = [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        present = [f"present.{i}.key", f"present.{i}.value"]
        cache = "window" if sliding and not masked else "context"
        for name in past:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kvh, cache, hd]))
        for name in present:
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", kvh, cache, hd]))
        cos, sin = tables[layer.attention_type]
        attrs: dict[str, Any] = {"num_heads": heads, "kv_num_heads": kvh, "scale": scale, "do_rotary": 1,
                                 "rotary_interleaved": 0, "softcap": softcap}
        extra: list[str] = []
        if masked:
            attrs.update(causal=0)
            extra = ["", SLIDING if sliding else GLOBAL]  # position_ids (unused), attention_bias
        elif sliding:
            attrs.update(local_window_size=int(cfg.sliding_window), sliding_window_cache=1)
        attn = f"{p}/self_attn/GroupQueryAttention/out"
        b.node("GroupQueryAttention", [q, k, v, *past, "seqlens_k", "total_sequence_length", cos, sin, *extra],
               [attn, *present], name=f"{p}/self_attn/GroupQueryAttention", domain=MS, **attrs)
        o = b.norm(b.matmul(attn, att.o_proj.weight, f"{p}/self_attn/o_proj/MatMul"),
                   layer.post_attention_layernorm.weight, eps, f"{p}/post_attention_layernorm")
        x, residual = b.skip_norm(o, residual, layer.pre_feedforward_layernorm.weight, eps,
                                  f"{p}/pre_feedforward_layernorm")
        mlp = layer.mlp
        gate = b.node("FastGelu", [b.matmul(x, mlp.gate_proj.weight, f"{p}/mlp/gate_proj/MatMul")],
                      name=f"{p}/mlp/act", domain=MS)[0]
        up = b.matmul(x, mlp.up_proj.weight, f"{p}/mlp/up_proj/MatMul")
        hidden = b.node("Mul", [gate, up], name=f"{p}/mlp/Mul")[0]
        f = b.norm(b.matmul(hidden, mlp.down_proj.weight, f"{p}/mlp/down_proj/MatMul"),
                   layer.post_feedforward_layernorm.weight, eps, f"{p}/post_feedforward_layernorm")
        if i + 1 < len(layers):
            x, residual = b.skip_norm(f, residual, layers[i + 1].input_layernorm.weight, eps,
                                      f"/layers.{i + 1}/input_layernorm")
    # Only the last position goes on: its norm, its logits.
    last = [b.init("last.start", np.array([-1], dtype=np.int64)), b.init("last.end", np.array([2**62], dtype=np.int64)),
            b.init("last.axis", np.array([1], dtype=np.int64))]
    f_last = b.node("Slice", [f, *last], name="/last/f")[0]
    r_last = b.node("Slice", [residual, *last], name="/last/residual")[0]
    h, _ = b.skip_norm(f_last, r_last, text_model.norm.weight, eps, "/norm")
    cap = getattr(cfg, "final_logit_softcapping", None)
    # The head writes the graph output itself: an Identity would copy 262k floats a row a step.
    w = b.init("/lm_head/MatMul.weight", lm_head.weight.detach().float().numpy().T)
    b.node("MatMul", [h, w], ["logits.raw" if cap else "logits"], name="/lm_head/MatMul")
    if cap:
        c = b.init("final.softcap", np.array(cap, dtype=np.float32))
        b.node("Mul", [b.node("Tanh", [b.node("Div", ["logits.raw", c])[0]])[0], c], ["logits"], name="/softcap")
    graph = helper.make_graph(b.nodes, "gemma3_fused_decoder", inputs, outputs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
    model.ir_version = IR_VERSION
    big = model.ByteSize() > 1_800_000_000
    onnx.save(model, str(out), save_as_external_data=big, all_tensors_to_one_file=True, location=out.name + ".data")
    return out


def build_greedy(out: Path, vocab: int) -> Path:
    """logits [batch, 1, vocab] -> next_token [batch, 1]: the greedy choice, for device providers."""
    node = helper.make_node("ArgMax", ["logits"], ["next_token"], name="/next_token", axis=-1, keepdims=0)
    graph = helper.make_graph([node], "greedy", [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                                                ["batch", 1, vocab])],
                              [helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.save(model, str(out))
    return out
