"""Translation: a text file into the language named by its folder or the config."""

from __future__ import annotations

from typing import Any, Sequence

from edged.config import Settings
from edged.engine.api import Generation, Request
from edged.tasks.base import InputError, check_size, render, require_text
from edged.tasks.languages import LANGUAGES, accepted, normalise
from edged.tasks.text import decode_text

name = "translate"
DEFAULT_PROMPT = "Translate the following text to {language}. Output only the translation.\n\n{text}"


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    # inbox/translate/<lang>/…/name: the first folder names the target language.
    lang = rel_parts[1] if len(rel_parts) > 2 else settings.tasks.translate.target_language
    return {"target_language": normalise(lang) or lang}


def prepare(params: dict[str, Any], data: bytes, settings: Settings) -> Request:
    cfg = settings.tasks.translate
    tag = normalise(str(params.get("target_language", "")))
    if tag is None:
        raise InputError(f"unknown target language {params.get('target_language')!r}; accepted: {accepted()}")
    check_size(data, cfg)
    text, encoding = decode_text(data)
    if not text.strip():
        raise InputError("the file holds no text (only whitespace)")
    return Request(
        text=render(cfg.prompt or DEFAULT_PROMPT, language=LANGUAGES[tag], text=text),
        max_new_tokens=cfg.max_new_tokens or settings.model.max_new_tokens,
        options={"encoding": encoding},
    )


def finish(generation: Generation) -> str:
    return require_text(generation)
