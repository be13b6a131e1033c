"""OCR: the text of an image, verbatim, in reading order, line breaks kept."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, Request
from edged.tasks.base import check_size, render, require_text, tidy_lines
from edged.tasks.images import decode_image

name = "ocr"
DEFAULT_PROMPT = (
    "Transcribe all text in this image verbatim, in reading order, keeping line breaks. "
    "Output only the text, nothing else."
)


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    return {}


def prepare(params: dict[str, Any], data: bytes, settings: Settings) -> Request:
    cfg = settings.tasks.ocr
    check_size(data, cfg)
    image, notes = decode_image(data, cfg.max_pixels)
    return Request(
        text=render(cfg.prompt or DEFAULT_PROMPT),
        images=(image,),
        max_new_tokens=cfg.max_new_tokens or settings.model.max_new_tokens,
        options={"notes": notes} if notes else {},
    )


def finish(generation: Generation) -> str:
    return tidy_lines(require_text(generation))
