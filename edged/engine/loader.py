"""Choosing and loading the engine named in the config."""

from __future__ import annotations

import importlib
from pathlib import Path

from edged.config import ModelSettings
from edged.engine.api import Engine, ModelUnavailable
from edged.models.manifest import MANIFEST, Manifest, ManifestError


def is_plugin(spec: str) -> bool:
    return ":" in spec


def model_name(settings: ModelSettings, model_dir: Path) -> str:
    """The name jobs are keyed by, known without loading the model (the CLI needs it too)."""
    if is_plugin(settings.engine):
        return str(settings.options.get("name", settings.engine))
    try:
        return Manifest.load(model_dir).name
    except ManifestError:
        return model_dir.name


def load_engine(settings: ModelSettings, model_dir: Path) -> Engine:
    """Load the model once for the process; ModelUnavailable says what is missing and how to fix it."""
    if is_plugin(settings.engine):
        module_name, _, attr = settings.engine.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ModelUnavailable(f"model.engine {settings.engine!r}: cannot import: {exc}") from None
        return factory(settings)
    if settings.engine != "onnx":
        raise ModelUnavailable(f"model.engine {settings.engine!r}: unknown engine (use 'onnx' or 'module:callable')")
    if not (model_dir / MANIFEST).is_file():
        fix = ("build the built-in default with `edged model build-default`" if settings.path is None
               else "point model.path at a folder made by `edged model export` or `edged model import`")
        raise ModelUnavailable(f"no model at {model_dir} ({MANIFEST} not found): {fix}")
    try:
        onnx_engine = importlib.import_module("edged.engine.onnx")
    except ImportError as exc:
        if exc.name == "onnxruntime":  # neither extra was chosen at install
            raise ModelUnavailable("onnxruntime is not installed: install edged with its cpu or gpu extra"
                                   " (pip install 'edged[cpu]' or 'edged[gpu]'), or on a Jetson JetPack's own"
                                   " onnxruntime-gpu wheel (README, \"Jetson\")") from None
        raise ModelUnavailable(f"the ONNX Runtime engine cannot be loaded: {exc}") from None
    return onnx_engine.load(settings, model_dir)
