"""A GGUF's weights carried into the exported graphs as they are, never re-quantized.

The export traces the model transformers built from the GGUF (every weight dequantized to
float32) into fp32 graphs. Each weight initializer of those graphs is then found in the GGUF
by its exact value (the dequantized bytes hash the same) and replaced by the GGUF's own
blocks in a kernel form (gguf_blocks.py, written by blockwrite.py). A weight whose type has no
exact form becomes 8-bit blocks of its values, one not found stays float; the manifest says
which and why.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from edged.models.blockwrite import Found, rtn8, write_graphs
from edged.models.gguf_blocks import FLOATS, float_weight, to_form


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


class GgufSource:
    """GGUF 2-D tensors by the hash of their float32 values (as transformers dequantized them)."""

    def __init__(self, path: Path) -> None:
        from gguf import GGUFReader
        from gguf.quants import dequantize

        self.notes: list[str] = []
        self.tensors: dict[str, Any] = {}
        for t in GGUFReader(str(path)).tensors:
            if len(t.shape) != 2:
                continue
            n, k = int(t.shape[1]), int(t.shape[0])
            values = dequantize(t.data, t.tensor_type).reshape(n, k)
            self.tensors[_key(values)] = (t.name, t.tensor_type.name, t.data, n, k)

    def _found(self, node: str, values: np.ndarray) -> Optional[Found]:
        entry = self.tensors.get(_key(values))
        if entry is None:
            self.notes.append(f"{node}: not found in the GGUF; left float32")
            return None
        tname, kind, data, n, k = entry
        if kind in FLOATS:
            return Found(tname, kind, None, float_weight(kind, data, n, k))
        form = to_form(kind, data, n, k)
        if form is None:
            # No exact form (Q2_K, Q3_K, IQ*): the best there is, 8-bit blocks of its values.
            self.notes.append(f"{tname}: {kind} has no exact kernel form; re-quantized to 8-bit blocks of 32")
            return Found(tname, f"{kind} (as 8-bit)", rtn8(values))
        return Found(tname, kind, form)

    def matmul(self, node: str, weight: np.ndarray) -> Optional[Found]:
        return self._found(node, weight)

    def gather(self, node: str, table: np.ndarray) -> Optional[Found]:
        return self._found(node, table)


def carry(gguf_path: Path, src: Path, out: Path, accuracy_level: int = 4,
          progress: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Write out/{decoder_model_merged,embed_tokens}.onnx from the fp32 graphs in `src` with the
    GGUF's own weights; returns what the manifest records about it."""
    progress("indexing the GGUF's tensors")
    source = GgufSource(gguf_path)
    types = write_graphs(source, src, out, accuracy_level, progress)
    return {"weights": "gguf", "source_types": dict(sorted(types.items())),
            "kernels": "MatMulNBits (8-bit for Q8_0/Q5_0/Q6_K/Q5_K, 4-bit for Q4_0/Q4_K, exact), "
                       "GatherBlockQuantized for the embedding; K-quant mins as a block-sum MatMul",
            "accuracy_level": accuracy_level, "fallbacks": source.notes}
