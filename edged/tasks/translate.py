"""Translation: a text file, of any length, into the language named by its folder or the config.

A long text is split into chunks that fit the model's token budget (paragraphs first, then
sentences); the chunks go through the model as prompts of one job, in the same batches, and
the outputs are put back in order with the original paragraph breaks and line endings.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from edged.config import Settings, TranslateSettings
from edged.engine.api import Generation, ModelInfo, Request
from edged.languages import LANGUAGES, accepted, normalise
from edged.tasks import fewshot
from edged.tasks.base import Assembled, InputError, Prepared, render, require_bytes, require_text
from edged.tasks.chunking import reassemble, split_text
from edged.tasks.text import decode_text

name = "translate"
needs_images = False
# Instruction-tuned models get this inside the chat frame.
DEFAULT_PROMPT = "Translate the following {source}text to {language}. Output only the translation.\n\n{text}"
# Base models (the default 270M) continue a document instead of following instructions: show
# them the start of a bilingual text and let them write the other half. This wording was the
# best of eight tried on the 270M (English -> French, greedy); see the closing note of #5.
DEFAULT_COMPLETION_PROMPT = "Translation {source_from}into {language}.\n\n{source_label}:\n{text}\n\n{language}:\n"
PROMPT_SLACK = 8  # tokens: the chat frame and joins the tokenizer may add around the text
MIN_BUDGET = 16


def params_for(rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
    # inbox/translate/<lang>/…/name: the first folder names the target language.
    lang = rel_parts[1] if len(rel_parts) > 2 else settings.tasks.translate.target_language
    return {"target_language": normalise(lang) or lang}


def _fields(cfg: TranslateSettings, tag: str) -> dict[str, str]:
    source = LANGUAGES[cfg.source_language] if cfg.source_language else None
    return {"language": LANGUAGES[tag], "source": f"{source} " if source else "",
            "source_from": f"from {source} " if source else "", "source_label": source or "Original"}


def _few_shot(cfg: TranslateSettings, model: ModelInfo, tag: str) -> Optional[str]:
    """The few-shot template for this job, or None where it does not apply or did not win."""
    if model.instruction_tuned or cfg.completion_prompt or cfg.few_shot == "off":
        return None
    if cfg.source_language not in (None, "en") or fewshot.base(tag) == "en":
        return None  # the examples are English sentences
    if cfg.few_shot == "auto" and fewshot.base(tag) not in fewshot.WINS:
        return None
    return fewshot.template(tag, LANGUAGES[tag])


def _template(cfg: TranslateSettings, model: ModelInfo) -> str:
    if model.instruction_tuned:
        return cfg.prompt or DEFAULT_PROMPT
    return cfg.completion_prompt or DEFAULT_COMPLETION_PROMPT


def _budget(cfg: TranslateSettings, model: ModelInfo, overhead: int) -> tuple[int, int]:
    """(chunk budget, max new tokens per chunk), both within the model's context.

    Without a configured cap, a chunk may produce twice its own length: translations into
    many scripts take more tokens than English.
    """
    room = model.context_length - overhead
    if cfg.max_new_tokens:
        # A chunk must be able to come out whole: at most half the output cap.
        budget = min(cfg.chunk_tokens, room - cfg.max_new_tokens, cfg.max_new_tokens // 2)
        max_new = cfg.max_new_tokens
    else:
        budget = min(cfg.chunk_tokens, (room - 32) // 3)
        max_new = 2 * budget + 32
    if budget < MIN_BUDGET:
        # Name the key that bites: load_config refuses a max_new_tokens below 2 * MIN_BUDGET,
        # so what is left here is the context against the prompt and the cap.
        if cfg.max_new_tokens and cfg.max_new_tokens // 2 < MIN_BUDGET:
            raise InputError(f"tasks.translate.max_new_tokens ({cfg.max_new_tokens}) is below {2 * MIN_BUDGET}:"
                             f" chunks get at most half of it and need {MIN_BUDGET} tokens; raise it or set null")
        cap = f" and tasks.translate.max_new_tokens ({cfg.max_new_tokens})" if cfg.max_new_tokens else ""
        raise InputError(f"the model's context ({model.context_length} tokens) leaves no room for text after the"
                         f" prompt ({overhead} tokens){cap}; shorten tasks.translate.prompt / completion_prompt"
                         " or lower tasks.translate.max_new_tokens")
    return budget, max_new


def _stops(fields: dict[str, str], model: ModelInfo, few_shot: bool) -> list[str]:
    """Where a base model's continuation ends: when it starts the next bilingual pair."""
    if model.instruction_tuned:
        return []
    if few_shot:
        return ["\nEnglish:", f"\n{fields['language']}:"]
    return ["\n\n" + line for line in (f"{fields['source_label']}:", f"{fields['language']}:", "Translation ")]


def prepare(params: dict[str, Any], data: bytes, settings: Settings, model: ModelInfo) -> Prepared:
    cfg = settings.tasks.translate
    tag = normalise(str(params.get("target_language", "")))
    if tag is None:
        raise InputError(f"unknown target language {params.get('target_language')!r}; accepted: {accepted()}")
    require_bytes(data)
    text, encoding = decode_text(data)
    if not text.strip():
        raise InputError("the file holds no text (only whitespace)")
    fields = _fields(cfg, tag)
    shots = _few_shot(cfg, model, tag)
    template = shots or _template(cfg, model)
    overhead = model.count_tokens(render(template, **fields, text="")) + PROMPT_SLACK
    budget, max_new = _budget(cfg, model, overhead)
    split = split_text(text, budget, model.count_tokens)
    stop = _stops(fields, model, shots is not None)

    def stops(body: str) -> tuple[str, ...]:
        if not stop:
            return ()
        # A chunk of one paragraph is translated as one paragraph: a base model that starts
        # another one has moved on to inventing text.
        return tuple(stop + ([] if "\n\n" in body else ["\n\n"]))

    requests = [Request(text=render(template, **fields, text=chunk.body), max_new_tokens=max_new,
                        stop=stops(chunk.body)) for chunk in split.chunks]
    hard = sum(c.hard_split for c in split.chunks)

    notes = {"encoding": encoding, "chars": len(text), "chunks": len(split.chunks), "chunk_budget": budget,
             "target_language": tag, "hard_splits": hard or None, "prompt": "few-shot" if shots else None}
    notes = {k: v for k, v in notes.items() if v is not None}

    def assemble(generations: list[Generation]) -> Assembled:
        outputs = []
        for i, gen in enumerate(generations):
            try:
                outputs.append(require_text(gen))
            except InputError as exc:
                where = f" (chunk {i + 1} of {len(generations)})" if len(generations) > 1 else ""
                raise InputError(f"{exc}{where}") from None
        # Said in the job's log line: a chunk that hit max_new_tokens may have lost its end (an
        # instruction-tuned model), or rambled past it (a base model, where the cut is right).
        at_limit = sum(g.finish_reason == "length" for g in generations)
        return Assembled(reassemble(split, outputs), {"chunks_at_max_new_tokens": at_limit} if at_limit else {})

    return Prepared(requests, assemble, notes=notes)
