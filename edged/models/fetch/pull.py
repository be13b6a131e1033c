"""A whole pull: plan, download into a folder beside the target, check, install in one rename.

The downloads live in `.<name>.download/` next to the model folder: on the same filesystem, so
that the import hard-links the files instead of copying gigabytes, and kept when a pull fails
(the next run resumes there). The model is built in `.<name>.install/` and renamed to its
folder only when every file checked and the import or export succeeded: a failed pull never
leaves a half model where `model.path` points.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from edged.exitcodes import EdgedError, ExitCode
from edged.logs import get_logger
from edged.models.fetch.download import NoProgress, Progress, fetch_file
from edged.models.fetch.hub import DownloadError, Hub
from edged.models.fetch.plan import Plan, Source, plan_pull
from edged.models.manifest import MANIFEST, Manifest, ManifestError

log = get_logger("models.pull")


class PullError(EdgedError):
    """A pull refused before it fetched anything (the target is taken, the export extra is missing)."""

    code = ExitCode.INPUT


@dataclass(frozen=True)
class PullOptions:
    dtype: str = "q4"
    pattern: Optional[str] = None  # --file: which GGUF of a repository
    sha256: Optional[str] = None


def need_export_extra() -> None:
    """A GGUF becomes an edged model through the export (torch, transformers): say so before
    fetching gigabytes that could not be used."""
    for module in ("torch", "transformers", "gguf"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise PullError(f"a GGUF is turned into an edged model by the export, which needs the export extra"
                            f" ({module} is not installed): pip install 'edged[export]'; or pull a published"
                            f" ONNX release instead (e.g. onnx-community/gemma-3-4b-it-ONNX), which needs no"
                            f" torch", ExitCode.MODEL_UNAVAILABLE) from None


def _refuse_taken(out: Path) -> None:
    if out.is_dir() and not any(out.iterdir()):
        return
    if out.exists():
        try:
            held = f"model {Manifest.load(out).name}"
        except ManifestError:
            held = "files that are not an edged model"
        raise PullError(f"{out} already holds {held}: remove it, or pull into another folder with --out")


def _free_space(folder: Path, plan: Plan, work: Path) -> None:
    total = plan.total_bytes
    if total is None:
        return
    have = sum(p.stat().st_size for p in work.rglob("*") if p.is_file()) if work.is_dir() else 0
    need = total - have
    free = shutil.disk_usage(folder).free
    if need > free:
        export = ", and the export needs room for the model it makes" if plan.gguf else ""
        raise DownloadError(f"{folder}: {free / 2**30:.2f} GiB free, the pull needs {need / 2**30:.2f} GiB more"
                            f" ({total / 2**30:.2f} GiB in all{export})")


def _human(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


class _Lock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh: Any = None

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise PullError(f"another pull into {self.path.parent} is running") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def pull(hub: Hub, source: Source, out: Path, opts: PullOptions, progress: Optional[Progress] = None,
         say: Callable[[str], None] = lambda _m: None) -> Manifest:
    """Fetch `source` and install it as the model folder `out`; returns its manifest."""
    progress = progress or NoProgress()
    out = out.absolute()
    _refuse_taken(out)
    work, staging = out.parent / f".{out.name}.download", out.parent / f".{out.name}.install"
    work.mkdir(parents=True, exist_ok=True)
    with _Lock(work / ".lock"):
        plan = plan_pull(hub, source, opts.dtype, opts.pattern, opts.sha256)
        if plan.gguf:
            need_export_extra()
        _free_space(out.parent, plan, work)
        size = _human(plan.total_bytes) if plan.total_bytes is not None else "size not given"
        say(f"pulling {source.describe()}: {plan.kind}, {len(plan.files)} files, {size}, into {work}")
        sums: dict[str, str] = {}
        for f in plan.files:
            dest = (work / f.path).resolve()
            if not dest.is_relative_to(work.resolve()):  # plan.safe_path refused it already; never trust one check
                raise DownloadError(f"{f.path}: would be written outside {work}, refused")
            sha, checked = fetch_file(hub, f, dest, progress)
            sums[f.path] = sha
            if not checked:
                say(f"warning: no checksum was known for {f.path} (pass --sha256 to check it); its sha256 is {sha}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            manifest = _install(plan, work, staging, out.name, opts, say)
            manifest.source = {**manifest.source, "pulled": {
                "from": source.describe(), "endpoint": source.endpoint if source.repo else None,
                "revision": source.revision if source.repo else None, "sha256": sums}}
            manifest.save(staging)
            _sync_tree(staging)  # the model's files on disk before its name appears
            if out.is_dir():
                out.rmdir()  # empty (checked above): the rename takes its place
            os.replace(staging, out)
            _sync_dir(out.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    log.info("model_pulled", source=source.describe(), kind=plan.kind, path=str(out), name=manifest.name,
             bytes=plan.total_bytes, vision=manifest.vision is not None)
    return manifest


def _install(plan: Plan, work: Path, staging: Path, name: str, opts: PullOptions,
             say: Callable[[str], None]) -> Manifest:
    if plan.kind == "release":
        from edged.models.importer import import_onnx_community

        say(f"importing the release into {staging}")
        m = import_onnx_community(work, staging, opts.dtype, name, link=True)
        m.source = {**m.source, "path": None}  # the download folder is gone once installed
        return m
    from edged.models.export import ExportOptions, export_model

    gguf = plan.gguf
    assert gguf is not None
    path = work / gguf.path
    say(f"exporting {path.name} (the GGUF's own blocks; its language model only: a GGUF's vision"
        f" projector is a separate file that the export does not read)")
    try:
        m = export_model(str(path), staging, dataclasses.replace(ExportOptions(), name=name), say)
    except EdgedError:
        raise
    except Exception as exc:  # transformers' or torch's refusal of a file it cannot read: one clear line
        raise PullError(f"{path.name} downloaded and checked, but the export cannot make a model of it:"
                        f" {type(exc).__name__}: {exc} (the file is kept in {work} for a rerun)") from exc
    if not (staging / MANIFEST).is_file():
        raise DownloadError(f"the export of {path.name} wrote no manifest")
    return m


def _sync_tree(folder: Path) -> None:
    for path in [p for p in folder.rglob("*") if p.is_file()]:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
