"""The model manifest, `edged-model.json`: what a model folder holds and how to run it.

The only module of edged/models that the daemon reads at run time: it imports nothing
heavier than the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from edged.exitcodes import EdgedError, ExitCode

MANIFEST = "edged-model.json"
FORMAT = "edged-model/1"
# The fused decoder's sliding buffers hold window + WINDOW_SLACK - 1 positions: GroupQueryAttention
# then compacts once every WINDOW_SLACK steps instead of every step. It attends over every resident
# position (measured: 352 us at 570 against 299 us at 520, batch 8), so the slack is kept small:
# 16 balances the extra positions read against the compaction's copies.
WINDOW_SLACK = 16


class ManifestError(EdgedError):
    """A model folder without a readable, valid manifest."""

    code = ExitCode.NOT_FOUND


@dataclass
class TextShape:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    sliding_window: int
    layer_types: list[str]
    context_length: int


@dataclass
class Tokens:
    bos: int = 2
    eos: list[int] = field(default_factory=lambda: [1, 106])
    pad: int = 0
    start_of_turn: int = 105
    end_of_turn: int = 106
    start_of_image: Optional[int] = 255999
    end_of_image: Optional[int] = 256000
    image_soft_token: Optional[int] = 262144


@dataclass
class Vision:
    image_size: int
    tokens_per_image: int
    mean: list[float]
    std: list[float]
    patch_size: int = 14


@dataclass
class Manifest:
    name: str
    text: TextShape
    tokens: Tokens
    weights: str  # int4 | int8 | fp16 | fp32
    instruction_tuned: bool
    graphs: dict[str, Optional[str]]  # embed, decoder, vision -> file name

    def graph(self, role: str) -> str:
        """The file of a graph the model must have (embed, decoder)."""
        name = self.graphs.get(role)
        if not name:
            raise ManifestError(f"model {self.name}: the manifest names no {role} graph")
        return name
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {sha256, bytes}
    vision: Optional[Vision] = None
    source: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    decoder: dict[str, Any] = field(default_factory=lambda: {"logits": "last", "position_ids_base": 0,
                                                             "kv_dtype": "float32"})
    parity: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    format: str = FORMAT

    # -- derived figures --------------------------------------------------------------

    @property
    def fused(self) -> bool:
        """The model has the fused decoder (GroupQueryAttention, window-sized sliding buffers)."""
        return bool(self.graphs.get("decoder_fused"))

    @property
    def windowed(self) -> bool:
        """The fused decoder keeps sliding layers to a window (text models). A vision model's is
        masked (image tokens attend both ways, fused.py): every layer keeps the whole context."""
        return self.fused and self.vision is None

    def _kv_item(self) -> int:
        return 2 * self.text.num_kv_heads * self.text.head_dim * (2 if self.decoder.get("kv_dtype") == "float16" else 4)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache per token of context per sequence: with the fused decoder only the global layers
        grow with the context; the traced one keeps every layer's whole cache."""
        t = self.text
        layers = sum(1 for k in t.layer_types if k != "sliding_attention") if self.windowed else t.num_layers
        return layers * self._kv_item()

    @property
    def kv_window_bytes(self) -> int:
        """KV cache of the sliding layers per sequence with the fused decoder (0 for the traced one)."""
        t = self.text
        sliding = sum(1 for k in t.layer_types if k == "sliding_attention")
        return sliding * self._kv_item() * (t.sliding_window + WINDOW_SLACK - 1) if self.windowed else 0

    def kv_bytes(self, context: Optional[int] = None, batch: int = 1) -> int:
        return (self.kv_bytes_per_token * (context or self.text.context_length) + self.kv_window_bytes) * batch

    # -- files ------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kv_cache"] = {
            "layout": "fused: global layers per token, sliding layers a window" if self.windowed
            else "fused, masked: every layer keeps the whole context (image tokens attend both ways)"
            if self.fused else "traced: every layer keeps the whole context",
            "bytes_per_token": self.kv_bytes_per_token,
            "bytes_window": self.kv_window_bytes,
            "bytes_at_context_length": self.kv_bytes(),
            "note": "per sequence; a batch of N needs N times this",
        }
        return data

    def save(self, folder: Path) -> Path:
        path = folder / MANIFEST
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path} not found") from None
        except ValueError as exc:
            raise ManifestError(f"{path}: not valid JSON: {exc}") from None
        if data.get("format") != FORMAT:
            raise ManifestError(f"{path}: unknown format {data.get('format')!r} (expected {FORMAT})")
        data.pop("kv_cache", None)
        try:
            data["text"] = TextShape(**data["text"])
            data["tokens"] = Tokens(**data["tokens"])
            data["vision"] = Vision(**data["vision"]) if data.get("vision") else None
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"{path}: malformed manifest: {exc}") from None

    def record_files(self, folder: Path) -> None:
        """Checksums of every file the model needs (graphs, their weight files, tokenizer)."""
        self.files = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"):
                self.files[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    def check_files(self, folder: Path) -> list[str]:
        """Problems with the files on disk: missing, wrong size, wrong checksum."""
        problems = []
        for name, info in self.files.items():
            p = folder / name
            if not p.is_file():
                problems.append(f"{name}: missing")
            elif p.stat().st_size != info["bytes"]:
                problems.append(f"{name}: {p.stat().st_size} bytes, expected {info['bytes']}")
            elif sha256_file(p) != info["sha256"]:
                problems.append(f"{name}: sha256 mismatch")
        return problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
