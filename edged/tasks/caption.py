"""Captioning: one image in, a one-sentence description out."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, ModelInfo
from edged.tasks.base import Prepared, require_text, single
from edged.tasks.images import image_request

name = "caption"
needs_images = True  # a box whose model cannot see never takes these (mode "shared")
DEFAULT_PROMPT = "Describe this image in one sentence."


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    return {}


def prepare(params: dict[str, Any], data: bytes, settings: Settings, model: ModelInfo) -> Prepared:
    request, notes = image_request(data, settings.tasks.caption, DEFAULT_PROMPT, settings)
    return single(request, finish, notes=notes)


def finish(generation: Generation) -> str:
    return " ".join(require_text(generation).split())
