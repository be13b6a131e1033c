"""`edged doctor`: everything an operator checks first when a box misbehaves, in one command."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Callable

from edged.commands.output import emit_json
from edged.config import Settings
from edged.engine.loader import MANIFEST, is_plugin, model_name
from edged.exitcodes import ExitCode
from edged.spool import filesystem_type, is_network_fs
from edged.wiring import build_layout

OK, WARN, FAIL = "ok", "warn", "FAIL"


def _writable_dir(path: Path) -> tuple[str, str]:
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return FAIL, f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK, effective_ids=True):
        return FAIL, f"{probe} is not writable by uid {os.geteuid()}"
    return (OK, str(path)) if probe == path else (WARN, f"{path} does not exist yet (will be created)")


def _disk(path: Path, floor_mb: int) -> tuple[str, str]:
    """Free space against spool.min_free_mb, the floor below which the daemon pauses intake."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free // (1024 * 1024)
    if free < floor_mb:
        return WARN, f"{free} MB free on {probe}: below spool.min_free_mb ({floor_mb}), intake is paused"
    return OK, f"{free} MB free on {probe} (intake pauses below {floor_mb} MB)"


def _spool_fs(settings: Settings) -> tuple[str, str]:
    fstype = filesystem_type(settings.spool_dir if settings.spool_dir.exists() else settings.spool_dir.parent)
    if is_network_fs(fstype):
        return WARN, f"{fstype}: no inotify on network filesystems, the inbox is polled"
    return OK, f"{fstype or 'unknown'}"


def _database(settings: Settings) -> tuple[str, str]:
    from edged.commands import command_parts
    from edged.exitcodes import EdgedError

    try:
        parts = command_parts(settings, "read")
    except EdgedError as exc:
        return (WARN if exc.code == ExitCode.NOT_FOUND else FAIL), str(exc)
    from edged.store.queries import queue_summary
    from edged.store.schema import SCHEMA_VERSION

    info = queue_summary(parts.queue.engine)
    detail = f"{settings.database_url} (schema v{SCHEMA_VERSION})"
    if info["files_unsettled"]:
        return WARN, (f"{detail}; {info['files_unsettled']} finished files could not be moved out of the inbox"
                      " (their reason: SELECT path, settle_error FROM files WHERE settle_error IS NOT NULL"
                      " AND state = 'pending')")
    return OK, detail


def _spool_safety(settings: Settings) -> tuple[str, str]:
    """Links where the daemon goes, group-writable daemon folders, inbox folders it may not clean."""
    from edged.spool import UnsafePath

    layout = build_layout(settings)
    problems, warnings = [], []
    for area in ("inbox", "done", "failed", "out"):
        for parts in [[area], *[[area, t] for t in layout.tasks]]:
            try:
                with layout.fs.folder(parts) as fd:
                    mode = os.fstat(fd).st_mode
            except FileNotFoundError:
                continue
            except (UnsafePath, OSError) as exc:
                problems.append(str(exc))
                continue
            producers_write = area == "inbox" and len(parts) == 2
            if mode & 0o002 or (mode & 0o020 and not producers_write):
                warnings.append(f"{'/'.join(parts)} is writable by {'others' if mode & 0o002 else 'the group'}"
                                f" ({oct(mode & 0o7777)}): only the daemon should write there")
    for task in layout.tasks:
        top = layout.inbox / task
        for dirpath, dirnames, _files in os.walk(top):
            for d in dirnames:
                path = os.path.join(dirpath, d)
                if not os.path.islink(path) and not os.access(path, os.W_OK | os.X_OK, effective_ids=True):
                    warnings.append(f"{path}: the daemon may not remove files from it (made by a producer with"
                                    " umask 022?): its files are copied, not moved")
    if problems:
        return FAIL, "; ".join(problems)
    if warnings:
        return WARN, "; ".join(warnings[:5]) + (f" (+{len(warnings) - 5} more)" if len(warnings) > 5 else "")
    return OK, "no links, no group-writable daemon folders, every inbox folder movable"


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


def preload() -> None:
    """Import what the checks use before a root caller takes the database owner's identity."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        pass  # the check reports it


def doctor(settings: Settings, as_json: bool = False) -> ExitCode:
    layout = build_layout(settings)
    checks: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("config", lambda: (OK, str(settings.source))),
        ("state_dir", lambda: _writable_dir(settings.state_dir)),
        *[(f"inbox/{t}", lambda t=t: _writable_dir(layout.inbox / t)) for t in layout.tasks],
        *[(f"{a}/", lambda a=a: _writable_dir(layout.area(a))) for a in ("done", "failed", "out")],
        ("spool_fs", lambda: _spool_fs(settings)),
        ("spool_safety", lambda: _spool_safety(settings)),
        ("disk_state", lambda: _disk(settings.state_dir, settings.spool.min_free_mb)),
        ("disk_spool", lambda: _disk(settings.spool_dir, settings.spool.min_free_mb)),
        ("database", lambda: _database(settings)),
        ("onnxruntime", lambda: _providers(settings)),
        ("model", lambda: _model(settings)),
    ]
    report = []
    for name, check in checks:
        try:
            level, detail = check()
        except Exception as exc:
            level, detail = FAIL, f"{type(exc).__name__}: {exc}"
        report.append({"check": name, "result": level, "detail": detail})
    failed = any(r["result"] == FAIL for r in report)
    if as_json:
        emit_json({"ok": not failed, "checks": report})
    else:
        for r in report:
            print(f"{r['result']:<5} {r['check']:<15} {r['detail']}")
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK
