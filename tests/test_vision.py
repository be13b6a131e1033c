"""Images through Gemma 3's vision tower: export parity, preprocessing, batching, the daemon."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, DaemonProcess, png_bytes
from model_cache import built_model
from edged.engine.api import Request
from edged.engine.images import pixel_values
from edged.engine.onnx import OnnxEngine
from edged.engine.session import SessionSettings
from edged.models.manifest import Manifest

RECIPE = REPO / "models" / "tiny-gemma3-vision.json"
TINY_VISION = f"random:{RECIPE}"


@pytest.fixture(scope="module")
def tiny_vision():
    return built_model(TINY_VISION, weights="fp32")


def test_export_parity_with_image_features_and_token_types(tiny_vision) -> None:
    from edged.models.parity import vision_vs_torch
    from edged.models.random_model import build_random

    loaded = build_random(RECIPE, lambda _m: None)  # same seed: the weights that were exported
    m = Manifest.load(tiny_vision)
    rep = vision_vs_torch(loaded.model, tiny_vision, loaded.text_model.config, m.tokens, 64, steps=20)
    assert rep["features_max_abs_diff"] < 1e-4
    assert rep["max_abs_logit_diff"] < 1e-4 and rep["greedy_tokens_equal"], rep
    assert m.parity["vision_fp32_vs_pytorch"]["max_abs_logit_diff"] < 1e-4


def test_bidirectional_image_attention_matters(tiny_vision) -> None:
    """Without token_type_ids, Hugging Face's own logits differ: the parity above tests something."""
    from edged.models.random_model import build_random

    loaded = build_random(RECIPE, lambda _m: None)
    model, m = loaded.model, Manifest.load(tiny_vision)
    t = m.tokens
    ids = torch.tensor([[t.bos, 40, t.start_of_image] + [t.image_soft_token] * 16 + [t.end_of_image, 41]])
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    types = (ids == t.image_soft_token).long()
    with torch.no_grad():
        with_types = model(input_ids=ids, pixel_values=pixels, token_type_ids=types).logits[0, -1]
        without = model(input_ids=ids, pixel_values=pixels).logits[0, -1]
    assert float((with_types - without).abs().max()) > 1e-3


def test_batch_of_three_images_equals_one_by_one(tiny_vision) -> None:
    engine = OnnxEngine(tiny_vision, SessionSettings(provider="cpu"))
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    images[1].paste((255, 255, 0), (10, 10, 40, 40))
    reqs = [Request(text, images=(im,), max_new_tokens=20, options={})
            for text, im in zip(["describe", "what is in the picture?", "read the text"], images)]
    batched = engine.generate(reqs)
    for req, got in zip(reqs, batched):
        (alone,) = engine.generate([req])
        assert got.text == alone.text and got.output_tokens == alone.output_tokens
    assert all(g.prompt_tokens > 16 for g in batched)  # the image's 16 soft tokens are in the prompt


@pytest.mark.parametrize("size", [(64, 64), (7, 5), (1000, 40), (40, 1000), (900, 700)])
def test_preprocessing_equals_gemma3_image_processor(size) -> None:
    from transformers import Gemma3ImageProcessor

    rng = np.random.default_rng(sum(size))
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")
    proc = Gemma3ImageProcessor(size={"height": 896, "width": 896})
    ref = proc(images=img, return_tensors="np")["pixel_values"][0]
    ours = pixel_values(img, 896, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    assert ours.shape == ref.shape == (3, 896, 896)
    assert float(np.abs(ours - ref).max()) <= 1e-5


def test_daemon_captions_and_reads_images_and_fails_bad_ones(daemon_factory, tiny_vision) -> None:
    d: DaemonProcess = daemon_factory(model={"engine": "onnx", "path": str(tiny_vision), "provider": "cpu",
                                             "batch_size": 4, "max_new_tokens": 8})
    inbox = d.spool / "inbox"
    good = {"caption/a.png": png_bytes((80, 60), "red"), "caption/b.png": png_bytes((30, 90), "blue"),
            "ocr/page.png": png_bytes((200, 300), "white")}
    bad = {"caption/empty.jpg": b"", "ocr/notes.jpg": b"this is text, not an image",
           "ocr/cut.png": png_bytes((64, 64), "green")[:70]}
    for rel, data in {**good, **bad}.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(data)
    d.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM files WHERE state != 'pending'")[0][0] == 6,
                 timeout=60, what="6 files settled")
    assert d.stop() == 0
    rows = dict(d.query("SELECT source_path, status FROM jobs"))
    assert {k: rows[k] for k in good} == {k: "done" for k in good}
    assert {k: rows[k] for k in bad} == {k: "failed" for k in bad}
    for rel in bad:
        err = json.loads((d.spool / "failed" / (rel + ".error.json")).read_text())
        assert err["error"] and err["attempts"] == 1
    assert (d.spool / "done" / "ocr" / "page.png").exists()
