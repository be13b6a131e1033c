"""`edged doctor`: everything an operator checks first when a box misbehaves, in one command."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from edged.commands.access import Access, as_user, checks, daemon_user
from edged.commands.output import emit_json
from edged.config import Settings
from edged.engine.loader import MANIFEST, is_plugin, model_name
from edged.exitcodes import ExitCode
from edged.models.manifest import Manifest, ManifestError
from edged.spool import filesystem_type, is_network_fs
from edged.wiring import build_layout

OK, WARN, FAIL = "ok", "warn", "FAIL"


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
    try:
        return _database_state(settings)
    except Exception as exc:  # not SQLite's, damaged, or unreadable in a way nothing names
        if not settings.database_url.startswith("sqlite"):
            return FAIL, f"{type(exc).__name__}: {str(exc).splitlines()[0]}; fix: see the server's log"
        return FAIL, (f"{type(exc).__name__}: {str(exc).splitlines()[0]}; fix: stop the daemon, keep the file aside"
                      f" (mv {settings.database_url.removeprefix('sqlite:///')} …) and restore a backup, or let the"
                      " daemon start a new one")


def _database_state(settings: Settings) -> tuple[str, str]:
    from edged.commands import command_parts
    from edged.exitcodes import EdgedError

    try:
        parts = command_parts(settings, "read")
    except EdgedError as exc:
        if exc.code == ExitCode.NOT_FOUND:
            return WARN, str(exc)
        fix = {ExitCode.NO_ACCESS: "chown the database and its -wal/-shm to the daemon's user (see db_file above)",
               ExitCode.DATABASE: "run the edged that made it (a newer one), or restore an older backup of the"
                                  " database"}.get(exc.code, "see the message")
        return FAIL, f"{exc}; fix: {fix}"
    from edged.store.postgres import shown
    from edged.store.queries import queue_summary
    from edged.store.schema import SCHEMA_VERSION

    info = queue_summary(parts.queue.engine)
    detail = f"{shown(settings.database_url)} (schema v{SCHEMA_VERSION})"
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
        return FAIL, ("; ".join(problems) + "; fix: replace each link or special file named with a plain folder"
                      " (the daemon does not use it until then), or run edged install-service")
    if warnings:
        return WARN, "; ".join(warnings[:5]) + (f" (+{len(warnings) - 5} more)" if len(warnings) > 5 else "")
    return OK, "no links, no group-writable daemon folders, every inbox folder movable"


def _providers(settings: Settings) -> tuple[str, str]:
    """Offered is not working: a CUDA session must come up and run (here on the model's embedding)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return FAIL, ("onnxruntime is not installed; fix: pip install 'edged[cpu]' (or 'edged[gpu]'; on a Jetson"
                      " JetPack's onnxruntime-gpu)")
    from edged.engine import cuda

    offered = ", ".join(ort.get_available_providers())
    if settings.model.provider == "cpu":
        return OK, f"onnxruntime {ort.__version__} ({offered}); model.provider is cpu"
    found = cuda.probe()
    if not found.usable:
        level = FAIL if settings.model.provider == "cuda" else OK
        fix = ("; fix: install what is missing, or set model.provider: auto/cpu" if level == FAIL else "")
        return level, (f"onnxruntime {ort.__version__} ({offered}); CUDA does not work here: {found.reason};"
                       f" the CPU is used{fix}")
    graph = _embedding_graph(settings)
    if graph is None:
        return WARN, f"onnxruntime {ort.__version__}: CUDA offered ({found.reason}), not tried (no model to run)"
    try:
        with cuda.quiet_fds():
            sess = ort.InferenceSession(str(graph), providers=["CUDAExecutionProvider"])
            name = sess.get_inputs()[0].name
            sess.run(None, {name: np.array([[2]], dtype=np.int64)})
    except Exception as exc:
        return FAIL, (f"CUDA offered ({found.reason}) but a session on it failed: {str(exc).splitlines()[0]};"
                      " fix: check the driver (nvidia-smi) and that CUDA and cuDNN match this onnxruntime"
                      " (pip install 'edged[gpu]'), or set model.provider: cpu")
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return FAIL, ("CUDA offered but the session came up on the CPU; fix: install the CUDA and cuDNN libraries"
                      " this onnxruntime was built for (pip install 'edged[gpu]')")
    # Outside the unit's sandbox: its device rules and groups are not this process's.
    return OK, (f"CUDA works: a session on CUDAExecutionProvider ran {graph.name} ({found.reason}); as the"
                " service it runs under the unit's device rules (the model_loaded line says what it got)")


def _embedding_graph(settings: Settings) -> Optional[Path]:
    try:
        manifest = Manifest.load(settings.model_dir)
        graph = settings.model_dir / manifest.graph("embed")
    except Exception:
        return None
    return graph if graph.is_file() else None


def _model(settings: Settings) -> tuple[str, str]:
    """The manifest loaded as the engine loads it, and every file it lists there, of its size."""
    if is_plugin(settings.model.engine):
        return OK, f"plug-in engine {settings.model.engine} ({model_name(settings.model, settings.model_dir)})"
    fix = ("edged model build-default -c CONFIG (on a box with the export extra), or edged model pull"
           if settings.model.path is None else "point model.path at a folder made by edged model export/import/pull")
    folder = settings.model_dir
    if not (folder / MANIFEST).is_file():
        return FAIL, f"no model at {folder} ({MANIFEST} missing); fix: {fix}"
    try:
        manifest = Manifest.load(folder)
        needed = [manifest.graph(g) for g in ("embed", "decoder")]
    except (ManifestError, KeyError) as exc:
        return FAIL, f"{exc}; fix: rebuild or re-import the model ({fix})"
    problems = [f"{name}: missing" for name in needed if not (folder / name).is_file()]
    if not manifest.files:
        problems.append("the manifest lists no files (not made by edged?)")
    for name, info in manifest.files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.stat().st_size != info.get("bytes"):
            problems.append(f"{name}: {path.stat().st_size} bytes, the manifest says {info.get('bytes')}")
    if problems:
        return FAIL, f"{folder}: {'; '.join(problems[:5])}; fix: rebuild or re-import the model ({fix})"
    vision = "text and images" if manifest.vision else "text only: caption and OCR jobs will fail"
    return OK, (f"{manifest.name} at {folder}: {len(manifest.files)} files of the recorded sizes ({vision};"
                " checksums: edged model verify)")


def preload() -> None:
    """Import what the checks use before a root caller takes the database owner's identity."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        pass  # the check reports it


def _with_fix(level: str, detail: str) -> Access:
    detail, _, fix = detail.partition("; fix: ")
    return Access("", level, detail, fix or None)


def doctor(settings: Settings, as_json: bool = False, user: Optional[str] = None) -> ExitCode:
    from edged.commands import as_database_owner

    def database() -> tuple[str, str]:
        with as_database_owner(settings):  # root reads it as its owner: no -shm of root's
            return _database(settings)

    who = daemon_user(settings, user)
    report: list[Access] = [Access("config", OK, str(settings.source))]
    try:
        report += as_user(who, lambda: checks(settings, who))
    except KeyError:
        what = f"the state belongs to uid {who}, which has no account here" if who.isdigit() else f"no user {who}"
        report.append(Access("access", FAIL, f"{what} on this box",
                             f"chown -R edged:edged {settings.state_dir} (edged install-service makes the account),"
                             " or name the daemon's user with --user"))
    others: list[tuple[str, Callable[[], tuple[str, str]]]] = [
        ("spool_fs", lambda: _spool_fs(settings)),
        ("spool_safety", lambda: _spool_safety(settings)),
        ("disk_state", lambda: _disk(settings.state_dir, settings.spool.min_free_mb)),
        ("disk_spool", lambda: _disk(settings.spool_dir, settings.spool.min_free_mb)),
        ("database", database),
        ("onnxruntime", lambda: _providers(settings)),
        ("model", lambda: _model(settings)),
    ]
    for name, check in others:
        try:
            found = _with_fix(*check())
        except Exception as exc:
            found = Access("", FAIL, f"{type(exc).__name__}: {exc}",
                           "see the message; edged doctor --json gives it whole")
        found.check = name
        report.append(found)
    failed = any(r.result == FAIL for r in report)
    if as_json:
        emit_json({"ok": not failed, "user": who, "checks": [vars(r) for r in report]})
    else:
        print(f"(folders and database checked as {who}, the daemon's user)")
        for r in report:
            print(f"{r.result:<5} {r.check:<15} {r.detail}")
            if r.fix and r.result != OK:
                print(f"{'':<5} {'':<15} fix: {r.fix}")
    return ExitCode.CHECK_FAILED if failed else ExitCode.OK
