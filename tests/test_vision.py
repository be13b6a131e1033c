"""Images through Gemma 3's vision tower: export parity, preprocessing, batching, the daemon."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, DaemonProcess, png_bytes
from edged.engine.api import Request
from edged.engine.images import pixel_values
from edged.engine.onnx import OnnxEngine
from edged.engine.session import SessionSettings
from edged.models.manifest import Manifest
from model_cache import built_model

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
    with torch.no_grad():
        feats = loaded.model.model.get_image_features(torch.rand(1, 3, 64, 64))
    assert float(feats.std()) > 0.1  # real features, not the zeros of an untouched projector
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
    reqs = [Request(text, images=(im,), max_new_tokens=20)
            for text, im in zip(["describe", "what is in the picture?", "read the text"], images, strict=False)]
    batched = engine.generate(reqs)
    same_prompt = [Request("describe", images=(im,), max_new_tokens=20) for im in images]
    assert len({g.text for g in engine.generate(same_prompt)}) > 1  # the picture changes the answer
    for req, got in zip(reqs, batched, strict=False):
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
                                             "batch_size": 4, "max_new_tokens": 8},
                                      tasks={"caption": {"max_pixels": 1_000_000}, "ocr": {"max_pixels": 1_000_000}})
    inbox = d.spool / "inbox"

    def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    frames = [Image.new("RGB", (40, 40), c) for c in ("red", "blue", "green")]
    good = {"caption/a.png": png_bytes((80, 60), "red"), "caption/b.png": png_bytes((30, 90), "blue"),
            "ocr/page.png": png_bytes((300, 900), "white"),
            "caption/anim.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])}
    bad = {"caption/empty.jpg": b"", "ocr/notes.jpg": b"this is text, not an image",
           "ocr/cut.png": png_bytes((64, 64), "green")[:70],
           "caption/cut.jpg": encoded(Image.new("RGB", (64, 64), "green"), "JPEG")[:200],
           "ocr/bomb.png": png_bytes((1200, 1200), "black"),
           "caption/odd.psd": b"8BPS" + bytes(200)}
    for rel, data in {**good, **bad}.items():
        (inbox / rel).parent.mkdir(parents=True, exist_ok=True)
        (inbox / rel).write_bytes(data)
    d.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM files WHERE state != 'pending'")[0][0] == 10,
                 timeout=60, what="10 files settled")
    assert d.stop() == 0
    rows = dict(d.query("SELECT source_path, status FROM jobs"))
    errors = dict(d.query("SELECT source_path, error FROM jobs WHERE status = 'failed'"))
    assert "decompression bomb" in errors["ocr/bomb.png"] and "truncated" in errors["caption/cut.jpg"]
    anim = next(e for e in d.events() if e.get("event") == "job_done" and e["file"] == "caption/anim.gif")
    assert "3 frames" in anim["notes"][0]
    page = next(e for e in d.events() if e.get("event") == "job_done" and e["file"] == "ocr/page.png")
    assert page["prompt_tokens"] > 3 * 16  # pan-and-scan crops for the tall OCR page
    assert {k: rows[k] for k in good} == dict.fromkeys(good, "done")
    assert {k: rows[k] for k in bad} == dict.fromkeys(bad, "failed")
    for rel in bad:
        err = json.loads((d.spool / "failed" / (rel + ".error.json")).read_text())
        assert err["error"] and err["attempts"] == 1
    assert (d.spool / "done" / "ocr" / "page.png").exists()
    assert (d.spool / "out" / "caption" / "a.png.caption.txt").read_text().strip()


def test_import_of_a_release_with_a_vision_encoder(tiny_vision, tmp_path) -> None:
    import shutil

    from edged.models.importer import import_onnx_community

    release = tmp_path / "tiny-vision-it-ONNX"
    (release / "onnx").mkdir(parents=True)
    for stem in ("embed_tokens", "decoder_model_merged", "vision_encoder"):
        shutil.copy(tiny_vision / f"{stem}.onnx", release / "onnx" / f"{stem}_q4.onnx")
    shutil.copy(tiny_vision / "tokenizer.json", release / "tokenizer.json")
    recipe = json.loads(RECIPE.read_text())
    (release / "config.json").write_text(json.dumps({"text_config": recipe["text_config"],
                                                     "vision_config": recipe["vision_config"],
                                                     **recipe["multimodal"]}))
    m = import_onnx_community(release, tmp_path / "out", "q4", position_base=0)
    assert m.graphs["vision"] == "vision_encoder_q4.onnx" and m.vision.tokens_per_image == 16
    assert m.vision.image_size == 64 and m.tokens.image_soft_token == 264
    engine = OnnxEngine(tmp_path / "out", SessionSettings(provider="cpu"))
    ours = OnnxEngine(tiny_vision, SessionSettings(provider="cpu"))
    req = Request("describe", images=(Image.new("RGB", (64, 64), "red"),), max_new_tokens=10)
    assert engine.generate([req])[0].text == ours.generate([req])[0].text


@pytest.mark.parametrize("size", [(1400, 500), (500, 1900), (600, 560), (3000, 300)])
def test_pan_and_scan_equals_gemma3_image_processor(size) -> None:
    from transformers import Gemma3ImageProcessor

    from edged.engine.images import batch_pixels, pan_and_scan

    rng = np.random.default_rng(size[0])
    img = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB")
    proc = Gemma3ImageProcessor(size={"height": 896, "width": 896}, do_pan_and_scan=True,
                                pan_and_scan_min_crop_size=256, pan_and_scan_max_num_crops=4,
                                pan_and_scan_min_ratio_to_activate=1.2)
    ref = proc(images=img, return_tensors="np")
    crops = pan_and_scan(img, max_crops=4)
    assert len(crops) == int(ref["num_crops"][0])
    ours = batch_pixels([img, *crops], 896, [0.5] * 3, [0.5] * 3)
    assert ours.shape == ref["pixel_values"].shape
    assert float(np.abs(ours - ref["pixel_values"]).max()) <= 1e-5


def test_pan_and_scan_prompt_and_features(tiny_vision) -> None:
    engine = OnnxEngine(tiny_vision, SessionSettings(provider="cpu"))
    page = Image.new("RGB", (300, 900), "white")
    plain = Request("read", images=(page,), max_new_tokens=4)
    scanned = Request("read", images=(page,), max_new_tokens=4, pan_and_scan=4)
    views = engine.views(scanned)
    assert len(views[0]) == 1 + 3  # the page and three crops of 300x300
    ids = engine.prompt_ids(scanned, views)
    m = engine.manifest
    assert ids.count(m.tokens.start_of_image) == 4 and ids.count(m.tokens.image_soft_token) == 4 * 16
    assert "Here is the original image" in engine.tokenizer.decode(ids)
    (a,), (b,) = engine.generate([plain]), engine.generate([scanned])
    assert b.prompt_tokens > a.prompt_tokens + 3 * 16


def test_ocr_then_translate_chain_with_the_tiny_vision_model(tiny_vision, daemon_factory) -> None:
    d: DaemonProcess = daemon_factory(model={"engine": "onnx", "path": str(tiny_vision), "provider": "cpu",
                                             "batch_size": 4, "max_new_tokens": 8},
                                      tasks={"ocr": {"translate_to": "de", "max_pixels": 1_000_000},
                                             "translate": {"max_new_tokens": 32}})
    inbox = d.spool / "inbox" / "ocr"
    inbox.mkdir(parents=True, exist_ok=True)
    for name, color in (("one.png", "white"), ("two.png", "gray")):
        (inbox / name).write_bytes(png_bytes((120, 90), color))
    d.start()
    d.wait_until(lambda: d.query("SELECT COUNT(*) FROM jobs WHERE status IN ('done', 'failed')")[0][0] == 4,
                 timeout=90, what="two OCR jobs and their two translate jobs")
    assert d.stop() == 0
    rows = d.query("SELECT c.task, c.status, c.params, p.source_path, p.task, r.output, pr.output"
                   " FROM jobs c JOIN jobs p ON p.id = c.parent_id JOIN results pr ON pr.job_id = p.id"
                   " LEFT JOIN results r ON r.job_id = c.id ORDER BY p.source_path")
    assert [(r[0], r[1], json.loads(r[2]), r[3], r[4]) for r in rows] == [
        ("translate", "done", {"target_language": "de"}, "ocr/one.png", "ocr"),
        ("translate", "done", {"target_language": "de"}, "ocr/two.png", "ocr")]
    assert all(r[5].strip() and r[6].strip() for r in rows)  # meaningless text, but text
    spawned = [e for e in d.events() if e.get("event") == "job_done" and e.get("parent_id")]
    assert len(spawned) == 2 and all(e["task"] == "translate" for e in spawned)
    assert (d.spool / "out" / "ocr" / "one.png.translate.txt").read_text() == rows[0][5]
