"""One module per job kind: input validation and decoding, the prompt, post-processing."""

from __future__ import annotations

from types import ModuleType

from edged.tasks import caption, ocr, translate
from edged.tasks.base import Assembled, FollowUp, InputError, Prepared, Task

REGISTRY: dict[str, ModuleType] = {m.name: m for m in (caption, ocr, translate)}
TASK_NAMES = tuple(REGISTRY)


def get(name: str) -> Task:
    return REGISTRY[name]


__all__ = ["Assembled", "FollowUp", "InputError", "Prepared", "REGISTRY", "TASK_NAMES", "Task", "get"]
