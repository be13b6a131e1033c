"""OCR: the text of an image, verbatim, in reading order, line breaks kept."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, Request
from edged.tasks.base import require_text, tidy_lines
from edged.tasks.images import image_request

name = "ocr"
DEFAULT_PROMPT = (
    "Transcribe all text in this image verbatim, in reading order, keeping line breaks. "
    "Output only the text, nothing else."
)


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    return {}


def prepare(params: dict[str, Any], data: bytes, settings: Settings) -> Request:
    return image_request(data, settings.tasks.ocr, DEFAULT_PROMPT, settings)


def finish(generation: Generation) -> str:
    return tidy_lines(require_text(generation))
