"""The worker's view of a model: requests in, generations out. No files, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol, Sequence, runtime_checkable


@dataclass(frozen=True)
class Request:
    """One prompt. `text` is user content: it is tokenized as text, never as control tokens."""

    text: str
    images: tuple[Any, ...] = ()  # RGB PIL images, placed before the text
    max_new_tokens: Optional[int] = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str = "stop"  # stop | length | repetition


class EngineError(Exception):
    """The engine could not run a request (not the input's fault: it may succeed on retry)."""


class RequestError(EngineError):
    """This request can never succeed (a prompt longer than the context): fail it, don't retry."""


class ModelUnavailable(Exception):
    """The model is missing or cannot be loaded; the daemon cannot start without it."""


@runtime_checkable
class Engine(Protocol):
    name: str  # the model's name, recorded with every job and result
    provider: str  # where it runs: "cpu", "cuda", …

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Run a batch; one Generation per Request, in order."""
        ...

    def close(self) -> None: ...
