"""The worker's view of a model: requests in, generations out. No files, no SQL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, runtime_checkable

from edged.exitcodes import EdgedError, ExitCode


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


@dataclass(frozen=True)
class ModelInfo:
    """What a task needs to know to shape its prompts: never files, never sessions."""

    name: str
    context_length: int
    instruction_tuned: bool  # chat prompts; False: a base model, completion-style prompts
    count_tokens: Callable[[str], int]  # tokens of a piece of user text, with the model's tokenizer


def rough_token_count(text: str) -> int:
    """A conservative stand-in for engines without a tokenizer: ~3 UTF-8 bytes per token."""
    return len(text.encode("utf-8")) // 3 + 1


def model_info(engine: Any) -> ModelInfo:
    """The engine's ModelInfo, or cautious defaults for a plug-in engine that has none."""
    info = getattr(engine, "info", None)
    if callable(info):
        return info()
    return ModelInfo(name=getattr(engine, "name", "unknown"), context_length=8192, instruction_tuned=True,
                     count_tokens=rough_token_count)


class EngineError(Exception):
    """The engine could not run a request (not the input's fault: it may succeed on retry)."""


class RequestError(EngineError):
    """This request can never succeed (a prompt longer than the context): fail it, don't retry."""


class ModelUnavailable(EdgedError):
    """The model is missing or cannot be loaded; the daemon cannot start without it."""

    code = ExitCode.MODEL_UNAVAILABLE


@runtime_checkable
class Engine(Protocol):
    name: str  # the model's name, recorded with every job and result
    provider: str  # where it runs: "cpu", "cuda", …

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Run a batch; one Generation per Request, in order."""
        ...

    def close(self) -> None: ...

