"""A vision model's fused decoder: masked attention (image tokens both ways), against the traced export.

The traced decoder and Hugging Face are the references (test_vision.py holds the traced one to
Hugging Face). The masked graph is held to them on image prompts past the sliding window, fed
whole or in chunks, alone or continuously batched with text rows.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from edged.engine.api import Request
from edged.engine.onnx import DecodeSettings, OnnxEngine
from edged.engine.session import SessionSettings
from edged.engine.slots import SlotGenerator
from edged.models import masks
from edged.models.manifest import Manifest
from edged.models.parity import FusedGreedy, OnnxGreedy
from model_cache import built_model

REPO = Path(__file__).resolve().parent.parent
TINY_VLM = f"random:{REPO / 'models' / 'tiny-gemma3-vision.json'}"
CPU1 = SessionSettings(provider="cpu", threads=1)


@pytest.fixture(scope="module")
def vlm() -> Path:
    return built_model(TINY_VLM, weights="fp32")


def _pictures() -> list[Image.Image]:
    out = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white")]
    out[1].paste((255, 255, 0), (10, 10, 40, 40))
    out[3].paste((0, 0, 0), (0, 30, 64, 34))
    return out


def _image_prompt(vlm: Path, images: int) -> tuple[list[int], np.ndarray, int]:
    """A prompt with `images` pictures between text, and their features from the vision graph."""
    engine = OnnxEngine(vlm, CPU1, decode=DecodeSettings(decoder="traced"))
    req = Request("look at these and say what you see, please", images=tuple(_pictures()[:images]))
    views = engine.views(req)
    feats = engine.image_features([views])
    assert feats is not None and feats[0] is not None
    return engine.prompt_ids(req, views), feats[0], engine.manifest.tokens.image_soft_token


def test_a_vision_model_gets_the_masked_fused_decoder(vlm: Path) -> None:
    m = Manifest.load(vlm)
    assert m.fused and not m.windowed
    g = onnx.load(str(vlm / m.graph("decoder_fused")), load_external_data=False).graph
    assert {masks.GLOBAL, masks.SLIDING} <= {i.name for i in g.input}
    gqa = [n for n in g.node if n.op_type == "GroupQueryAttention"]
    assert len(gqa) == m.text.num_layers
    for node in gqa:
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        assert attrs["causal"] == 0 and not attrs.get("sliding_window_cache")
    assert "masked" in m.to_json()["kv_cache"]["layout"]
    assert m.kv_window_bytes == 0 and m.kv_bytes_per_token == 2 * m.text.num_layers * m.text.num_kv_heads * \
        m.text.head_dim * 4  # every layer keeps the whole context
    engine = OnnxEngine(vlm, CPU1, decode=DecodeSettings(slots=2))
    assert isinstance(engine.generator, SlotGenerator) and engine.generator.masked and engine.continuous


def test_the_export_holds_the_masked_graph_to_pytorch_on_an_image_prompt(vlm: Path) -> None:
    from edged.models.explain import words

    m = Manifest.load(vlm)
    rep = m.parity["fused_image_vs_pytorch"]
    assert rep["max_abs_logit_diff"] < 1e-4 and rep["greedy_tokens_equal"], rep
    said = "\n".join(words(m))  # what `edged model info` prints of it (one prompt: a single agreement)
    assert "fused decoder (masked) on an image prompt" in said and "Every continuation is identical" in said
    shown = subprocess.run([sys.executable, "-m", "edged", "model", "info", str(vlm)], capture_output=True,
                           text=True, cwd=REPO)
    assert shown.returncode == 0, shown.stderr  # a vision model's info once crashed on its one-prompt figure
    assert "masked for image prompts" in shown.stdout


@pytest.mark.parametrize("images", [1, 2])
def test_masked_logits_match_the_traced_decoder_past_the_window(vlm: Path, images: int) -> None:
    prompt, feats, soft = _image_prompt(vlm, images)
    m = Manifest.load(vlm)
    steps = 3 * m.text.sliding_window  # the answer itself runs past the window
    assert len(prompt) > 16 * images > m.text.sliding_window
    ref_logits, ref_tokens = OnnxGreedy(vlm, _cfg(m)).run(prompt, steps, feats, soft)
    logits, tokens = FusedGreedy(vlm, _cfg(m)).run(prompt, steps, feats, soft)
    assert max(float(np.abs(a - b).max()) for a, b in zip(logits, ref_logits, strict=True)) <= 1e-3
    assert tokens == ref_tokens


def test_without_the_image_pairs_the_logits_differ(vlm: Path, monkeypatch) -> None:
    """The biases carry the both-ways attention: drop the pairs and the answer moves (the test above
    tests something)."""
    prompt, feats, soft = _image_prompt(vlm, 1)
    m = Manifest.load(vlm)
    ref, _ = OnnxGreedy(vlm, _cfg(m)).run(prompt, 2, feats, soft)
    monkeypatch.setattr(masks, "image_runs", lambda *_a: [])
    causal, _ = FusedGreedy(vlm, _cfg(m)).run(prompt, 2, feats, soft)
    assert float(np.abs(causal[0] - ref[0]).max()) > 1e-3


def test_image_rows_chunked_and_continuously_batched_equal_the_traced_engine_and_themselves_alone(vlm: Path) -> None:
    pics = _pictures()
    reqs = [Request(f"describe picture {i} in a few words " * (i + 1), images=(pic,) if i != 2 else (),
                    max_new_tokens=10 + 3 * i) for i, pic in enumerate(pics)]
    reqs.append(Request("two pictures side by side", images=(pics[0], pics[1]), max_new_tokens=20))
    wide = Image.new("RGB", (768, 256), "white")  # three images in one prompt: the whole and two crops
    wide.paste((200, 0, 0), (400, 40, 700, 200))
    reqs.append(Request("a wide picture, cut in crops", images=(wide,), pan_and_scan=2, max_new_tokens=9))
    # Chunks of 5 cut every prompt many times and meet every image part-way: never inside one.
    fused = OnnxEngine(vlm, CPU1, decode=DecodeSettings(slots=3, prefill_chunk=5))
    traced = OnnxEngine(vlm, CPU1, decode=DecodeSettings(decoder="traced"))
    together = fused.generate(reqs)
    reference = traced.generate(reqs)
    for req, got, ref in zip(reqs, together, reference, strict=True):
        assert (got.text, got.output_tokens) == (ref.text, ref.output_tokens)
        (alone,) = fused.generate([req])
        assert (alone.text, alone.output_tokens) == (got.text, got.output_tokens)
    assert len({g.text for g in together[:2]}) == 2  # the pictures change the answers
    assert together[-1].prompt_tokens > 3 * 16


def test_the_stream_takes_image_requests(vlm: Path) -> None:
    engine = OnnxEngine(vlm, CPU1, decode=DecodeSettings(slots=2, prefill_chunk=7))
    pics = _pictures()
    reqs = [Request("what is this", images=(pics[i % 4],), max_new_tokens=6 + i) for i in range(5)]
    expected = [g.text for g in engine.generate(reqs)]
    tickets = {engine.submit(reqs[0]): 0, engine.submit(reqs[1]): 1}
    got: dict[int, str] = {}
    pending = list(range(2, 5))
    while len(got) < len(reqs):
        for ticket, gen in engine.step():
            got[tickets.pop(ticket)] = gen.text
        while pending and engine.free_slots():  # jobs join the running rows as slots free
            i = pending.pop(0)
            tickets[engine.submit(reqs[i])] = i
    assert [got[i] for i in range(5)] == expected


def _cfg(m: Manifest):
    """The text config fields the parity loops read, from the manifest."""
    from types import SimpleNamespace

    t = m.text
    return SimpleNamespace(num_hidden_layers=t.num_layers, num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim,
                           sliding_window=t.sliding_window, layer_types=t.layer_types)
