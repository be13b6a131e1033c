"""`edged model …`: export, build-default, import, verify, info."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

from edged.exitcodes import CliError, ExitCode
from edged.models.manifest import Manifest


def progress_printer() -> Any:
    """Progress lines on stderr with elapsed time; quiet when stderr is not a terminal."""
    start = time.monotonic()
    tty = sys.stderr.isatty()

    def show(msg: str) -> None:
        if tty:
            print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    return show


def _need_export_extra() -> None:
    try:
        importlib.import_module("torch")
        importlib.import_module("transformers")
    except ImportError:
        raise CliError("model export needs the export extra: pip install 'edged[export]'", ExitCode.ERROR) from None


def export(source: str, out: Path, options: dict[str, Any]) -> ExitCode:
    """`options`: ExportOptions fields as the command line gave them (None: the default)."""
    _need_export_extra()
    from edged.models.export import ExportOptions, export_model

    opts = ExportOptions(**{k: v for k, v in options.items() if v is not None})
    manifest = export_model(source, out, opts, progress_printer())
    print_info(manifest, out)
    return ExitCode.OK


def build_default(out: Path, force: bool) -> ExitCode:
    _need_export_extra()
    from edged.models.default import build_default as build

    manifest = build(out, progress_printer(), force=force)
    print_info(manifest, out)
    return ExitCode.OK


def import_release(src: Path, out: Path, dtype: str, name: Optional[str]) -> ExitCode:
    from edged.models.importer import import_onnx_community

    manifest = import_onnx_community(src, out, dtype, name)
    print_info(manifest, out)
    return ExitCode.OK


def verify_model(folder: Path, prompt: str = "The capital of France is", tokens: int = 16) -> tuple[bool, list[str]]:
    """The model's checks (files, checksums, graphs), then the engine's (one short generation)."""
    from edged.models.verify import check_model

    ok, lines = check_model(folder)
    if not ok:
        return False, lines
    from edged.engine.selftest import generate_once

    alive, more = generate_once(folder, prompt, tokens)
    return alive, lines + more


def verify(folder: Path, prompt: str, tokens: int) -> ExitCode:
    ok, lines = verify_model(folder, prompt, tokens)
    for line in lines:
        print(line)
    return ExitCode.OK if ok else ExitCode.CHECK_FAILED


def info(folder: Path, as_json: bool = False) -> ExitCode:
    manifest = Manifest.load(folder)
    if as_json:
        from edged.models.explain import words

        print(json.dumps({"folder": str(folder), **manifest.to_json(), "explained": words(manifest)}, indent=2))
        return ExitCode.OK
    print_info(manifest, folder)
    return ExitCode.OK


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def print_info(m: Manifest, folder: Path) -> None:
    t = m.text
    local = sum(1 for x in t.layer_types if x == "sliding_attention")
    kind = "instruction-tuned, chat format" if m.instruction_tuned else "base, completion prompts"
    print(f"model          {m.name} ({kind})")
    print(f"folder         {folder}")
    print(f"weights        {m.weights} {m.quantization if m.quantization else ''}".rstrip())
    print(f"shape          {t.num_layers} layers ({local} sliding-window of {t.sliding_window}, "
          f"{t.num_layers - local} global), hidden {t.hidden_size}, {t.num_attention_heads} heads / "
          f"{t.num_kv_heads} KV heads of {t.head_dim}, vocab {t.vocab_size}")
    window = f" + {_mib(m.kv_window_bytes)} for the sliding layers' windows" if m.kv_window_bytes else ""
    print(f"context        {t.context_length} tokens; KV cache {m.kv_bytes_per_token:,} bytes/token{window}, "
          f"{_mib(m.kv_bytes())} per sequence at full context "
          f"({'fused decoder' if m.fused else 'traced decoder: every layer keeps the whole context'})")
    print(f"vision         {'yes' if m.vision else 'no'}")
    files = ", ".join(f"{name} ({_mib(meta['bytes'])})" for name, meta in m.files.items())
    print(f"files          {files}")
    for key, rep in m.parity.items():
        print(f"parity         {key}: max |Δlogit| {rep.get('max_abs_logit_diff', float('nan')):.3g}, "
              f"greedy equal {rep.get('greedy_tokens_equal')}, agreement {rep.get('greedy_agreement')}")
    from edged.models.explain import words

    for line in words(m):
        print()
        print(textwrap.fill(line, width=96, initial_indent="  ", subsequent_indent="  "))
