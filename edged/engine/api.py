"""The worker's view of a model: requests in, generations out. No files, no SQL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Protocol, Sequence, runtime_checkable

from edged.exitcodes import EdgedError, ExitCode

FinishReason = Literal["stop", "length", "repetition"]


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding (temperature 0 is greedy)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: Optional[int] = None


@dataclass(frozen=True)
class Request:
    """One prompt. `text` is user content: it is tokenized as text, never as control tokens."""

    text: str
    images: tuple[Any, ...] = ()  # RGB PIL images, placed before the text
    max_new_tokens: Optional[int] = None  # None: the engine's default
    stop: tuple[str, ...] = ()  # strings that end the answer once it has begun (checked on decoded text)
    pan_and_scan: int = 0  # at most this many extra crops of a tall or wide image (0: none)
    sampling: Optional[Sampling] = None  # None: the engine's defaults


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: FinishReason = "stop"


@dataclass
class BatchTiming:
    """Where the last engine call's time went (prefill and decode), for the batch's log line."""

    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    steps: int = 0


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


def sees_images(engine: Any) -> bool:
    """Whether the engine takes requests with images (a plug-in that does not say is assumed to)."""
    return bool(getattr(engine, "sees_images", True))


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
    last_timing: Optional[BatchTiming]  # of the last generate() call; None when the engine does not say

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """Run a batch; one Generation per Request, in order."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingEngine(Engine, Protocol):
    """An engine that batches continuously across calls: requests join the running rows."""

    continuous: bool

    def submit(self, request: Request) -> int:
        """Queue one request (it takes the next free slot); its ticket. RequestError: it can never run."""
        ...

    def step(self) -> list[tuple[int, Generation]]:
        """One scheduling step; the (ticket, generation) of every request that ended in it."""
        ...

    def free_slots(self) -> int: ...

    def in_flight(self) -> int:
        """Requests submitted and not ended."""
        ...

    def abandon(self) -> None:
        """Drop every submitted request."""
        ...

    def take_timing(self) -> BatchTiming:
        """Prefill/decode time since the last call."""
        ...

