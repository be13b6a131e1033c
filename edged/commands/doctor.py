"""`edged doctor`: everything an operator checks first when a box misbehaves, in one command."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from edged.config import Settings
from edged.daemon import build_layout
from edged.engine.loader import MANIFEST, is_plugin, model_name
from edged.exitcodes import ExitCode
from edged.spool import filesystem_type, is_network_fs

OK, WARN, FAIL = "ok", "warn", "FAIL"
MIN_FREE_MB = 500


def _writable_dir(path: Path) -> tuple[str, str]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return FAIL, f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return FAIL, f"{probe} is not writable by uid {os.getuid()}"
    return (OK, str(path)) if probe == path else (WARN, f"{path} does not exist yet (will be created)")


def _disk(path: Path) -> tuple[str, str]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free // (1024 * 1024)
    return (OK if free >= MIN_FREE_MB else WARN), f"{free} MB free on {probe}"


def _spool_fs(settings: Settings) -> tuple[str, str]:
    fstype = filesystem_type(settings.spool_dir if settings.spool_dir.exists() else settings.spool_dir.parent)
    if is_network_fs(fstype):
        return WARN, f"{fstype}: no inotify on network filesystems, the inbox is polled"
    return OK, f"{fstype or 'unknown'}"


def _database(settings: Settings) -> tuple[str, str]:
    from edged.store import open_engine
    from edged.store.schema import SCHEMA_VERSION, current_version

    try:
        version = current_version(open_engine(settings.database_url))
    except Exception as exc:  # noqa: BLE001 - the doctor reports, it does not crash
        return FAIL, f"{settings.database_url}: {exc}"
    if version == 0:
        return WARN, f"{settings.database_url}: not created yet (the daemon creates it)"
    if version > SCHEMA_VERSION:
        return FAIL, f"schema v{version} is newer than this edged (v{SCHEMA_VERSION})"
    return OK, f"{settings.database_url} (schema v{version})"


def _providers(_settings: Settings) -> tuple[str, str]:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return FAIL, f"onnxruntime does not import: {exc}"
    offered = ort.get_available_providers()
    note = "" if "CUDAExecutionProvider" in offered else " (no CUDA: the CPU is used)"
    return OK, f"onnxruntime {ort.__version__} offers {', '.join(offered)}{note}"


def _model(settings: Settings) -> tuple[str, str]:
    if is_plugin(settings.model.engine):
        return OK, f"plug-in engine {settings.model.engine} ({model_name(settings.model, settings.model_dir)})"
    manifest = settings.model_dir / MANIFEST
    if manifest.is_file():
        return OK, f"{model_name(settings.model, settings.model_dir)} at {settings.model_dir}"
    return FAIL, f"no model at {settings.model_dir} ({MANIFEST} missing)"


def doctor(settings: Settings, as_json: bool = False) -> ExitCode:
    from edged.cli import emit_json

    layout = build_layout(settings)
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("config", lambda: (OK, str(settings.source))),
        ("state_dir", lambda: _writable_dir(settings.state_dir)),
        *[(f"inbox/{t}", lambda t=t: _writable_dir(layout.inbox / t)) for t in layout.tasks],
        *[(f"{a}/", lambda a=a: _writable_dir(layout.area(a))) for a in ("done", "failed", "out")],
        ("spool_fs", lambda: _spool_fs(settings)),
        ("disk_state", lambda: _disk(settings.state_dir)),
        ("disk_spool", lambda: _disk(settings.spool_dir)),
        ("database", lambda: _database(settings)),
        ("onnxruntime", lambda: _providers(settings)),
        ("model", lambda: _model(settings)),
    ]
    report = []
    for name, check in checks:
        try:
            level, detail = check()
        except Exception as exc:  # noqa: BLE001
            level, detail = FAIL, f"{type(exc).__name__}: {exc}"
        report.append({"check": name, "result": level, "detail": detail})
    failed = any(r["result"] == FAIL for r in report)
    if as_json:
        emit_json({"ok": not failed, "checks": report})
    else:
        for r in report:
            print(f"{r['result']:<5} {r['check']:<15} {r['detail']}")
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK
