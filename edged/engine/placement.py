"""Which execution provider runs each node of a session: ONNX Runtime's own placement report.

A GPU session can silently run part of a graph on the host: a node whose op the CUDA
provider has no kernel for (MatMulInteger, DynamicQuantizeLinear, …) falls back to the CPU,
with copies across the bus at every step. ONNX Runtime says so only in its verbose session
log ("Node(s) placed on [CPUExecutionProvider]. Number of nodes: …" and one line per node),
which it writes to the process's stderr. `capture` collects that log while a session is
created; `parse` reads the placements out of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

_HEADER = re.compile(r"(Node\(s\)|All nodes) placed on \[(\w+)\]\. Number of nodes: (\d+)")
_NODE = re.compile(r"^(?:.*VerifyEachNodeIsAssignedToAnEp\])?\s{2,}([\w.]+) \((.*)\)\s*$")
_ORT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \[[VIWEF]:onnxruntime:")
# Ops that carry a model's weights or its attention: on the host they cost the GPU its point.
# ORT keeps small shape arithmetic (Shape, Gather of a shape, Range, …) on the CPU on purpose.
HEAVY = frozenset({
    "MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeLinear", "Gemm", "GatherBlockQuantized",
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "Softmax", "Conv", "RotaryEmbedding",
    "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization",
})


@dataclass
class Placement:
    counts: dict[str, int] = field(default_factory=dict)  # provider -> nodes
    nodes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # provider -> [(op, name)]

    def off(self, provider: str) -> list[tuple[str, str]]:
        """Nodes placed on any other provider than `provider`."""
        return [n for p, nodes in self.nodes.items() if p != provider for n in nodes]

    def heavy_off(self, provider: str) -> list[tuple[str, str]]:
        return [n for n in self.off(provider) if n[0] in HEAVY]

    def summary(self, provider: str) -> dict[str, int]:
        return dict(Counter(op for op, _ in self.off(provider)).most_common())


def parse(log: str) -> Placement:
    placement = Placement()
    current = None
    for line in log.splitlines():
        header = _HEADER.search(line)
        if header:
            current = header.group(2)
            placement.counts[current] = int(header.group(3))
            placement.nodes[current] = []
            continue
        node = _NODE.match(line) if current else None
        if node and current:
            placement.nodes[current].append((node.group(1), node.group(2)))
        elif current and _ORT_LINE.match(line) and "VerifyEachNodeIsAssignedToAnEp" not in line:
            current = None
    return placement


@contextlib.contextmanager
def capture() -> Iterator[list[str]]:
    """Collect what is written to fd 2 meanwhile (ORT's C++ log); lines that are not ORT's go on
    to the real stderr afterwards, so no log line of ours is lost. The list is filled on exit."""
    sys.stderr.flush()
    saved = os.dup(2)
    got: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield got
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            got.append(text)
            rest = "".join(line for line in text.splitlines(keepends=True) if not _ORT_LINE.match(line)
                           and not _NODE.match(line))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()
