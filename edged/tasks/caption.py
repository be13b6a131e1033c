"""Captioning: one image in, a one-sentence description out."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, Request
from edged.tasks.base import require_text
from edged.tasks.images import image_request

name = "caption"
DEFAULT_PROMPT = "Describe this image in one sentence."


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    return {}


def prepare(params: dict[str, Any], data: bytes, settings: Settings) -> Request:
    return image_request(data, settings.tasks.caption, DEFAULT_PROMPT, settings)


def finish(generation: Generation) -> str:
    return " ".join(require_text(generation).split())
