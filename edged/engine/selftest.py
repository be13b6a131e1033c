"""`edged model verify`, the engine's half: one short generation from a model folder."""

from __future__ import annotations

import time
from pathlib import Path

from edged.engine.api import Request
from edged.engine.onnx import OnnxEngine
from edged.engine.session import SessionSettings


def generate_once(folder: Path, prompt: str, tokens: int) -> tuple[bool, list[str]]:
    engine = OnnxEngine(folder, SessionSettings())
    t0 = time.perf_counter()
    (gen,) = engine.generate([Request(prompt, max_new_tokens=tokens)])
    secs = time.perf_counter() - t0
    lines = [f"ok   generation on {engine.provider}: {gen.prompt_tokens} prompt + {gen.output_tokens} new tokens "
             f"in {secs:.2f}s ({gen.finish_reason})", f"     {prompt!r} -> {gen.text!r}"]
    return gen.output_tokens > 0 or gen.finish_reason == "stop", lines
