"""What every task module provides, and the error that fails a job without retrying it."""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence

from edged.config import Settings, TaskSettings
from edged.engine.api import Generation, Request


class InputError(Exception):
    """The input itself is unusable (or produced unusable output): fail the job, don't retry."""


class Task(Protocol):
    name: str

    def params_for(self, rel_parts: Sequence[str], settings: Settings) -> dict[str, Any]:
        """Job parameters implied by where the file was dropped (e.g. a language folder)."""
        ...

    def prepare(self, params: dict[str, Any], data: bytes, settings: Settings) -> Request:
        """Validate and decode the input; raise InputError for a bad one."""
        ...

    def finish(self, generation: Generation) -> str:
        """Post-process the model's output into what is stored."""
        ...


def render(template: str, **fields: str) -> str:
    """Fill a prompt template; a template naming an unknown field is a clear error."""
    try:
        return template.format(**fields)
    except (KeyError, IndexError) as exc:
        raise InputError(f"prompt template names an unknown field {exc}; known: {sorted(fields)}") from None


def check_size(data: bytes, cfg: TaskSettings) -> None:
    if not data:
        raise InputError("empty file (0 bytes)")
    if len(data) > cfg.max_input_mb * 1024 * 1024:
        raise InputError(f"file is {len(data)} bytes, over the limit of {cfg.max_input_mb} MB")


def require_text(generation: Generation) -> str:
    text = generation.text.strip()
    if not text:
        raise InputError("the model produced no output")
    return text


_SPACES = re.compile(r"[ \t\f\v]+")


def tidy_lines(text: str) -> str:
    """Collapse runs of spaces within lines, keep line breaks, trim the ends."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()]
    return "\n".join(lines).strip()
