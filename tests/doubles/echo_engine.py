"""A test double of the engine (tests only): deterministic output, optional delay and faults.

Loaded by the daemon through `model.engine: "echo_engine:create"` with tests/doubles on
PYTHONPATH. Options (model.options): name, delay_s (per batch), heartbeat (the delay ticks), fail_on (raise when a
prompt contains this text), batch_fail (raise for any batch larger than 1), mode ("digest":
a hash of the prompt; "echo": the prompt itself), context_length, instruction_tuned,
empty_on / loop_on (a prompt containing this text gets an empty / looping output), crash_on
(the process aborts, as in a native crash, when a prompt contains this text), kill_on (the
process dies by SIGKILL, which leaves no trace of its cause), and calls_file (a line
"start <pid> <n>" before and "end <pid> <n>" after each call, so that a test or a benchmark
can tell when a batch is in the model).
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from typing import Any, Sequence

from edged.engine.api import EngineError, Generation, ModelInfo, Request


class EchoEngine:
    provider = "cpu"
    last_timing = None  # the double does not split prefill from decode

    def __init__(self, options: dict[str, Any]) -> None:
        self.name = str(options.get("name", "echo-test"))
        self.delay_s = float(options.get("delay_s", 0.0))
        self.fail_on = options.get("fail_on")
        self.batch_fail = bool(options.get("batch_fail", False))
        self.mode = str(options.get("mode", "digest"))
        self.context_length = int(options.get("context_length", 4096))
        self.instruction_tuned = bool(options.get("instruction_tuned", True))
        self.empty_on = options.get("empty_on")
        self.loop_on = options.get("loop_on")
        self.crash_on = options.get("crash_on")
        self.kill_on = options.get("kill_on")
        self.calls_file = options.get("calls_file")
        # heartbeat: true: the delay calls the worker's tick as it runs (as a real engine's steps
        # do); false: the delay is an engine call that hangs, silent.
        self.beats = bool(options.get("heartbeat", False))
        self.heartbeat: Any = lambda: None
        self.sees_images = bool(options.get("sees_images", True))  # false: a text-only model
        self.calls: list[int] = []
        self.prompts: list[str] = []

    def info(self) -> ModelInfo:
        # One token per whitespace-separated word, plus one: cheap, deterministic, and
        # non-additive over concatenation like a real tokenizer.
        return ModelInfo(self.name, self.context_length, self.instruction_tuned,
                         lambda text: len(text.split()) + 1)

    def _mark(self, what: str, n: int) -> None:
        if self.calls_file:
            with open(self.calls_file, "a") as fh:
                fh.write(f"{what} {os.getpid()} {n}\n")

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        self.calls.append(len(requests))
        self.prompts.extend(r.text for r in requests)
        self._mark("start", len(requests))
        if self.delay_s and self.beats:
            end = time.monotonic() + self.delay_s
            while (left := end - time.monotonic()) > 0:
                time.sleep(min(left, 0.05))
                self.heartbeat()
        elif self.delay_s:
            time.sleep(self.delay_s)
        if self.crash_on and any(self.crash_on in r.text for r in requests):
            os.abort()
        if self.kill_on and any(self.kill_on in r.text for r in requests):
            os.kill(os.getpid(), signal.SIGKILL)
        out = self._outputs(requests)
        self._mark("end", len(requests))
        return out

    def _outputs(self, requests: Sequence[Request]) -> list[Generation]:
        if self.batch_fail and len(requests) > 1:
            raise EngineError("batch refused by the test double")
        out = []
        for req in requests:
            if self.fail_on and self.fail_on in req.text:
                raise EngineError(f"test double told to fail on {self.fail_on!r}")
            digest = hashlib.sha256(req.text.encode()).hexdigest()[:12]
            sizes = ",".join(f"{im.size[0]}x{im.size[1]}" for im in req.images)
            text = f"echo {digest} images=[{sizes}]" if req.images else f"echo {digest}"
            if self.mode == "echo":
                text = req.text
            reason = "stop"
            if self.empty_on and self.empty_on in req.text:
                text = " \n"
            if self.loop_on and self.loop_on in req.text:
                text, reason = "la " * 64, "repetition"
            out.append(Generation(text=text, prompt_tokens=len(req.text.split()),
                                  output_tokens=max(1, len(text.split())), finish_reason=reason))
        return out

    def close(self) -> None:
        pass


def create(settings: Any) -> EchoEngine:
    return EchoEngine(dict(settings.options))
