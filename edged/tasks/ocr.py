"""OCR: the text of an image, verbatim, in reading order, line breaks kept."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, ModelInfo
from edged.tasks.base import FollowUp, Prepared, require_text, single, tidy_lines
from edged.tasks.images import image_request

name = "ocr"
needs_images = True  # a box whose model cannot see never takes these (mode "shared")
DEFAULT_PROMPT = (
    "Transcribe all text in this image verbatim, in reading order, keeping line breaks. "
    "Output only the text, nothing else."
)


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    return {}


def prepare(params: dict[str, Any], data: bytes, settings: Settings, model: ModelInfo) -> Prepared:
    cfg = settings.tasks.ocr
    request, notes = image_request(data, cfg, DEFAULT_PROMPT, settings)
    # The recognised text becomes a translate job of its own (linked by parent_id).
    follow_up = FollowUp("translate", {"target_language": cfg.translate_to}) if cfg.translate_to else None
    return single(request, finish, notes=notes, follow_up=follow_up)


def finish(generation: Generation) -> str:
    return tidy_lines(require_text(generation, allow_loop=True))
