"""What every task module provides, and the error that fails a job without retrying it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

from edged.config import Settings
from edged.engine.api import Generation, ModelInfo, Request


class InputError(Exception):
    """The input itself is unusable (or produced unusable output): fail the job, don't retry."""


@dataclass(frozen=True)
class FollowUp:
    """A job that a job spawns when it is done, with its result as the new job's input."""

    task: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Assembled:
    """The job's result, and what assembling it found out (for the job's log line)."""

    output: str
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """A job made ready for the model: one or more prompts, and how their outputs become one result.

    A long text is several prompts (chunks); they run in the same engine batches as other
    jobs' prompts, and `assemble` puts the outputs back together in order.
    """

    requests: list[Request]
    assemble: Callable[[list[Generation]], Assembled]
    notes: dict[str, Any] = field(default_factory=dict)  # facts for the job's log line (encoding, chunks…)
    follow_up: Optional[FollowUp] = None


class Task(Protocol):
    name: str
    needs_images: bool

    def params_for(self, rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
        """Job parameters implied by where the file was dropped (e.g. a language folder)."""
        ...

    def prepare(self, params: dict[str, Any], data: bytes, settings: Settings, model: ModelInfo) -> Prepared:
        """Validate and decode the input; raise InputError for a bad one."""
        ...


def render(template: str, **fields: str) -> str:
    """Fill a prompt template; a template naming an unknown field is a clear error."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise InputError(f"prompt template names an unknown field {exc}; known: {sorted(fields)}") from None


def require_bytes(data: bytes) -> None:
    """An empty file is no input. (Its size limit, max_input_mb, is the worker's: it never reads more.)"""
    if not data:
        raise InputError("empty file (0 bytes)")


def require_text(generation: Generation, allow_loop: bool = False) -> str:
    """The output, stripped; an empty output or a repetition loop fails the job instead of being stored.

    `allow_loop`: for OCR, where a page can really repeat (rows of a form, dot leaders); the
    guard has already stopped the generation, and the text up to there is kept.
    """
    if generation.finish_reason == "repetition" and not allow_loop:
        raise InputError("the model's output fell into a repetition loop; nothing was stored")
    text = generation.text.strip()
    if not text:
        raise InputError("the model produced no output")
    return text


def single(request: Request, finish: Callable[[Generation], str], follow_up: Optional[FollowUp] = None,
           **notes: Any) -> Prepared:
    return Prepared([request], lambda gens: Assembled(finish(gens[0])), notes={k: v for k, v in notes.items() if v},
                    follow_up=follow_up)


_SPACES = re.compile(r"[ \t\f\v]+")


def tidy_lines(text: str) -> str:
    """Collapse runs of spaces within lines, keep line breaks, trim the ends."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()
