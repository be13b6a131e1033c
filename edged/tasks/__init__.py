"""One module per job kind: input validation and decoding, the prompt, post-processing."""

from __future__ import annotations

from types import ModuleType

from edged.tasks import caption, ocr, translate
from edged.tasks.base import Assembled, FollowUp, InputError, Prepared, Task

REGISTRY: dict[str, ModuleType] = {m.name: m for m in (caption, ocr, translate)}
TASK_NAMES = tuple(REGISTRY)


def get(name: str) -> Task:
    return REGISTRY[name]


def served(sees_images: bool) -> tuple[str, ...]:
    """The tasks a model can run: all of them if it sees images, else those of text alone."""
    return tuple(n for n, m in REGISTRY.items() if sees_images or not m.needs_images)


__all__ = ["Assembled", "FollowUp", "InputError", "Prepared", "REGISTRY", "TASK_NAMES", "Task", "get", "served"]
