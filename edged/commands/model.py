"""`edged model …`: export, build-default, import, pull, list, verify, info."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Optional

from edged.exitcodes import CliError, EdgedError, ExitCode
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


def _layout(m: Manifest) -> str:
    if m.windowed:
        return "fused decoder"
    if m.fused:
        return "fused decoder, masked for image prompts: every layer keeps the whole context"
    return "traced decoder: every layer keeps the whole context"


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
          f"({_layout(m)})")
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


# -- pull and list ------------------------------------------------------------------------

# caption and ocr send images (tasks/images.py): only a model whose manifest has a vision
# encoder can serve them; translate runs on any text model.
IMAGE_TASKS = ("caption", "ocr")
TEXT_TASKS = ("translate",)


def tasks_of(m: Manifest) -> list[str]:
    return sorted((*IMAGE_TASKS, *TEXT_TASKS) if m.vision else TEXT_TASKS)


def pull(name: str, out: Optional[Path], models_dir: Optional[Path], dtype: str = "q4", pattern: Optional[str] = None,
         revision: str = "main", sha256: Optional[str] = None, endpoint: Optional[str] = None) -> ExitCode:
    """`out`: the model folder (default: `<models_dir>/<the source's name>`)."""
    from edged.commands.progress_bar import DownloadBar
    from edged.models.fetch.hub import Hub, endpoint_from_env, token_from_env
    from edged.models.fetch.plan import parse_source
    from edged.models.fetch.pull import PullOptions
    from edged.models.fetch.pull import pull as run_pull

    source = parse_source(name, endpoint_from_env(endpoint), revision)
    if out is None:
        assert models_dir is not None
        out = models_dir / source.default_name
    hub = Hub(source.endpoint, token_from_env())

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    manifest = run_pull(hub, source, out, PullOptions(dtype=dtype, pattern=pattern, sha256=sha256), DownloadBar(),
                        say)
    out = out.absolute()
    print(f"installed {manifest.name} ({manifest.weights}; tasks: {', '.join(tasks_of(manifest))}) in {out}")
    print("to use it, set in the config file:")
    print("  model:")
    print(f"    path: {out}")
    return ExitCode.OK


def _disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def installed_models(models_dir: Path, configured: Path, engine: str) -> list[dict[str, Any]]:
    """The model folders under `models_dir` and the configured one, each described."""
    folders = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models_dir.is_dir() else []
    if configured.absolute() not in {p.absolute() for p in folders}:
        folders.append(configured)
    rows = []
    for folder in folders:
        row: dict[str, Any] = {"name": folder.name, "path": str(folder.absolute()), "bytes": None, "tasks": [],
                               "vision": False, "weights": None, "in_use": engine == "onnx"
                               and folder.absolute() == configured.absolute(), "problem": None}
        try:
            m = Manifest.load(folder)
            row.update(name=m.name, bytes=_disk_bytes(folder), tasks=tasks_of(m), vision=m.vision is not None,
                       weights=m.weights, instruction_tuned=m.instruction_tuned)
        except EdgedError as exc:
            row["problem"] = "missing" if not folder.exists() else str(exc)
        rows.append(row)
    return rows


def _gib(n: Optional[int]) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else _mib(n)


def list_models(models_dir: Path, configured: Path, engine: str, config: Optional[Path],
                as_json: bool = False) -> ExitCode:
    rows = installed_models(models_dir, configured, engine)
    if as_json:
        print(json.dumps({"models_dir": str(models_dir), "model_path": str(configured.absolute()), "engine": engine,
                          "models": rows}, indent=2))
        return ExitCode.OK
    table = [("", "NAME", "SIZE", "TASKS", "PATH")]
    for r in rows:
        tasks = ", ".join(r["tasks"]) if not r["problem"] else ("not installed" if r["problem"] == "missing"
                                                                else f"unusable: {r['problem']}")
        table.append(("*" if r["in_use"] else "", r["name"], _gib(r["bytes"]), tasks, r["path"]))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    where = f" in {config}" if config else ""
    if engine != "onnx":
        print(f"\nmodel.engine{where} is the plug-in {engine}: it loads no model folder")
    else:
        print(f"\n* the model the config uses (model.path{where}, or the built-in default when it is not set)")
    if any(r["in_use"] and r["problem"] == "missing" for r in rows):
        print("  it is not installed: edged model build-default (the built-in 270M) or edged model pull NAME")
    for name, size in _partial_downloads(models_dir):
        print(f"partial download of {name}: {_gib(size)} in {models_dir / f'.{name}.download'} (the next pull of it"
              " resumes there; remove the folder to give the space back)")
    return ExitCode.OK


def _partial_downloads(models_dir: Path) -> list[tuple[str, int]]:
    """What failed or interrupted pulls keep for the next run (it can be gigabytes)."""
    found = []
    for folder in sorted(models_dir.glob(".*.download")) if models_dir.is_dir() else []:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        found.append((folder.name[1:].removesuffix(".download"), size))
    return found
