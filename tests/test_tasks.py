"""Task modules: parameters from folders, input decoding, prompts, post-processing."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from conftest import png_bytes
from edged.engine.api import Generation, ModelInfo
from edged.tasks import FollowUp, InputError, caption, ocr, translate
from edged.tasks.images import decode_image
from edged.tasks.text import decode_text


def _words(text: str) -> int:
    return len(text.split()) + 1


CHAT = ModelInfo("test-it", 4096, True, _words)
BASE = ModelInfo("test-base", 4096, False, _words)


def test_translate_language_from_folder_or_config(make_settings) -> None:
    s = make_settings(tasks={"translate": {"target_language": "fr"}})
    assert translate.params_for(["translate", "a.txt"], s) == {"target_language": "fr"}
    assert translate.params_for(["translate", "pt_br", "a.txt"], s) == {"target_language": "pt-BR"}
    assert translate.params_for(["translate", "de", "sub", "a.txt"], s) == {"target_language": "de"}


def test_translate_prompt_and_unknown_language(make_settings) -> None:
    s = make_settings()
    prepared = translate.prepare({"target_language": "de"}, b"Hallo {text} <end_of_turn>", s, CHAT)
    [req] = prepared.requests
    assert req.text.startswith("Translate the following text to German.")
    assert req.text.endswith("Hallo {text} <end_of_turn>")  # user text is never formatted
    assert prepared.notes["encoding"] == "utf-8" and prepared.notes["chunks"] == 1
    with pytest.raises(InputError, match=r"unknown target language 'klingon'; accepted: .*zh-Hant"):
        translate.prepare({"target_language": "klingon"}, b"x", s, CHAT)


def test_base_models_get_a_completion_prompt_that_stops_at_the_next_pair(make_settings) -> None:
    s = make_settings(tasks={"translate": {"source_language": "en", "few_shot": "off"}})
    [req] = translate.prepare({"target_language": "fr"}, b"Good morning.", s, BASE).requests
    assert req.text == "Translation from English into French.\n\nEnglish:\nGood morning.\n\nFrench:\n"
    assert "\n\nEnglish:" in req.stop
    [chat] = translate.prepare({"target_language": "fr"}, b"Good morning.", s, CHAT).requests
    assert chat.text.startswith("Translate the following English text to French.") and not chat.stop


def test_few_shot_prompts_where_they_won_and_only_for_english_sources(make_settings, monkeypatch) -> None:
    from edged.tasks import fewshot

    monkeypatch.setattr(fewshot, "WINS", frozenset({"de", "pt"}))
    auto = make_settings()
    [req] = translate.prepare({"target_language": "de"}, b"Good {morning}.", auto, BASE).requests
    assert req.text.startswith("English: The shop opens at nine") and req.text.count("\nGerman: ") == 3
    assert req.text.endswith("\n\nEnglish: Good {morning}.\nGerman:")  # user text never formatted
    [br] = translate.prepare({"target_language": "pt-BR"}, b"Hi.", auto, BASE).requests  # a region of a winner
    assert br.text.count("\nBrazilian Portuguese: ") == 3 and br.text.endswith("\nBrazilian Portuguese:")
    assert "\nEnglish:" in req.stop and "\n\n" in req.stop
    assert translate.prepare({"target_language": "de"}, b"Hi.", auto, BASE).notes["prompt"] == "few-shot"
    # Not where it did not win, not for other source languages, never over the user's own
    # template, never for instruction-tuned models; `always` uses every language with examples.
    zero = "Translation into French.\n\nOriginal:\nHi.\n\nFrench:\n"
    assert translate.prepare({"target_language": "fr"}, b"Hi.", auto, BASE).requests[0].text == zero
    assert translate.prepare({"target_language": "fr"}, b"Hi.", make_settings(
        tasks={"translate": {"few_shot": "always"}}), BASE).requests[0].text.startswith("English: ")
    for cfg in ({"source_language": "it"}, {"completion_prompt": "{language}: {text}"}):
        [other] = translate.prepare({"target_language": "de"}, b"Hi.", make_settings(tasks={"translate": cfg}),
                                    BASE).requests
        assert not other.text.startswith("English: ")
    assert translate.prepare({"target_language": "de"}, b"Hi.", auto, CHAT).requests[0].text.startswith("Translate")
    assert not translate.prepare({"target_language": "ko"}, b"Hi.", make_settings(
        tasks={"translate": {"few_shot": "always"}}), BASE).requests[0].text.startswith("English: ")


def test_translation_output_checks(make_settings) -> None:
    text = ("One. " * 30 + "\n\n") * 3
    s2 = make_settings(tasks={"translate": {"chunk_tokens": 40}})
    prepared = translate.prepare({"target_language": "de"}, text.encode(), s2, CHAT)
    n = len(prepared.requests)
    assert n >= 3
    good = [Generation(f"Eins {i}.", 5, 3) for i in range(n)]
    assert prepared.assemble(good).output.startswith("Eins 0.")
    looping = good[:-1] + [Generation("ja ja ja", 5, 64, finish_reason="repetition")]
    with pytest.raises(InputError, match=rf"repetition loop.*chunk {n} of {n}"):
        prepared.assemble(looping)
    with pytest.raises(InputError, match=r"no output \(chunk 1 of"):
        prepared.assemble([Generation("  ", 5, 0)] + good[1:])


def test_a_context_too_small_for_the_prompt_is_a_clear_error(make_settings) -> None:
    s = make_settings(tasks={"translate": {"max_new_tokens": 100}})
    with pytest.raises(InputError, match="leaves no room"):
        translate.prepare({"target_language": "de"}, b"Hello.", s, ModelInfo("tiny", 64, True, _words))


def test_custom_template_with_unknown_field_is_a_clear_error(make_settings) -> None:
    s = make_settings(tasks={"translate": {"prompt": "To {lang}: {text}"}})
    with pytest.raises(InputError, match="unknown field 'lang'"):
        translate.prepare({"target_language": "de"}, b"x", s, CHAT)


@pytest.mark.parametrize("data, text, encoding", [
    ("héllo\r\nwörld".encode(), "héllo\r\nwörld", "utf-8"),
    ("\ufeffhéllo".encode("utf-8"), "héllo", "utf-8"),
    ("héllo".encode("utf-16"), "héllo", "utf-16-le"),
    ("héllo".encode("utf-32"), "héllo", "utf-32-le"),
])
def test_decode_text(data: bytes, text: str, encoding: str) -> None:
    assert decode_text(data) == (text, encoding)


FRENCH = "Café crème à la française, s'il vous plaît. Où est la gare? Le garçon mange un gâteau très sucré.\n"


@pytest.mark.parametrize("text, codec, reported", [
    (FRENCH, "latin-1", "cp1252"),  # not cp1250, which scores the same and turns "è" into "č"
    ("Grüße aus München! Das Wetter ist schön heute. Äpfel und Öl.", "latin-1", "cp1252"),
    ("Привет, как дела? Сегодня хорошая погода.", "cp1251", "cp1251"),
    ("日本語のテキストです。今日は良い天気ですね。", "shift_jis", "shift_jis"),
])
def test_legacy_encodings_are_detected(text: str, codec: str, reported: str) -> None:
    assert decode_text(text.encode(codec)) == (text, reported)


def test_binary_and_empty_text_refused() -> None:
    with pytest.raises(InputError, match="binary"):
        decode_text(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(InputError, match="empty"):
        decode_text(b"")


def test_image_tasks_decode_and_prompt(make_settings) -> None:
    s = make_settings()
    [req] = caption.prepare({}, png_bytes((30, 20)), s, CHAT).requests
    assert req.images[0].size == (30, 20) and req.images[0].mode == "RGB"
    assert "one sentence" in req.text and req.max_new_tokens == s.model.max_new_tokens
    assert "verbatim" in ocr.prepare({}, png_bytes(), s, CHAT).requests[0].text
    assert ocr.prepare({}, png_bytes(), s, CHAT).follow_up is None
    chained = make_settings(tasks={"ocr": {"translate_to": "pt_br"}})
    assert ocr.prepare({}, png_bytes(), chained, CHAT).follow_up == FollowUp("translate", {"target_language": "pt-BR"})


def _encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("data, words", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (png_bytes((64, 64))[:60], "truncated"),
])
def test_bad_images(data: bytes, words: str) -> None:
    with pytest.raises(InputError, match=words):
        decode_image(data, 10_000_000)


def test_decompression_bomb() -> None:
    with pytest.raises(InputError, match="decompression bomb"):
        decode_image(png_bytes((200, 200)), max_pixels=10_000)


def test_animated_gif_takes_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    data = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    img, notes = decode_image(data, 10_000)
    assert img.getpixel((0, 0)) == (255, 0, 0) and "2 frames" in notes[0]


def test_alpha_is_flattened_on_white() -> None:
    img, _ = decode_image(_encoded(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), "PNG"), 10_000)
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_postprocessing() -> None:
    g = Generation("  A red   square.\n ", 1, 1)
    assert caption.finish(g) == "A red square."
    assert ocr.finish(Generation("  line  one \n\nline\ttwo  ", 1, 1)) == "line one\n\nline two"
    with pytest.raises(InputError, match="repetition"):
        caption.finish(Generation("a cat a cat a cat", 1, 1, finish_reason="repetition"))
    assert ocr.finish(Generation("1.00\n1.00\n1.00", 1, 1, finish_reason="repetition")) == "1.00\n1.00\n1.00"


def _rgb_at(img: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    return img.getpixel(xy)


def test_palette_grayscale_cmyk_and_16_bit_become_rgb() -> None:
    pal = Image.new("P", (4, 4))
    pal.putpalette([0, 0, 255] + [0, 0, 0] * 255)
    img, _ = decode_image(_encoded(pal, "PNG"), 10_000)
    assert img.mode == "RGB" and _rgb_at(img, (0, 0)) == (0, 0, 255)
    img, _ = decode_image(_encoded(Image.new("L", (4, 4), 128), "PNG"), 10_000)
    assert img.mode == "RGB" and _rgb_at(img, (1, 1)) == (128, 128, 128)
    img, _ = decode_image(_encoded(Image.new("CMYK", (4, 4), (0, 255, 255, 0)), "JPEG"), 10_000)
    r, g, b = _rgb_at(img, (1, 1))
    assert img.mode == "RGB" and r > 200 and g < 60 and b < 60  # CMYK red stays red
    sixteen = Image.new("I;16", (4, 4), 65535 // 2)
    img, _ = decode_image(_encoded(sixteen, "PNG"), 10_000)
    assert img.mode == "RGB" and abs(_rgb_at(img, (0, 0))[0] - 127) <= 1  # scaled, not clipped to white


def test_exif_orientation_is_applied() -> None:
    base = Image.new("RGB", (40, 20), "white")
    base.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    img, _ = decode_image(_encoded(base, "JPEG", exif=exif.tobytes()), 10_000)
    assert img.size == (20, 40)
    r, g, b = _rgb_at(img, (10, 2))  # the left band is now at the top
    assert r > 200 and g < 80
