"""SIGHUP: which config keys a running daemon can take on, and which wait for a restart.

The schema says: a field made with `config.live(...)` is read afresh per job or per run and
changes at once; every other key (where things are, what is loaded and how, what listens)
waits for a restart, including any key added later without a thought about reloads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from edged.config import Settings


def live_keys(model: type[BaseModel] = Settings, prefix: str = "") -> frozenset[str]:
    """Dotted names of every field marked live, through nested sections."""
    out: set[str] = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out |= live_keys(annotation, f"{prefix}{name}.")
        elif isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("live"):
            out.add(prefix + name)
    return frozenset(out)


LIVE = live_keys()


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def changed_keys(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (old, new) for every value that differs."""
    a, b = _flatten(old.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def needs_restart(key: str) -> bool:
    """A changed key the running daemon keeps its old value of (a dict value like model.options
    flattens to sub-keys: those follow their field)."""
    return not any(key == k or key.startswith(k + ".") for k in LIVE)


def live_settings(old: Settings, new: Settings) -> Settings:
    """`old`, with every live key taken from `new`."""
    merged = old.model_copy(deep=True)
    for key in LIVE:
        *path, name = key.split(".")
        src, dst = new, merged
        for part in path:
            src, dst = getattr(src, part), getattr(dst, part)
        setattr(dst, name, getattr(src, name))
    return merged
